"""The average of time-resolved heads as one time-resolved head.

Each head's logits are linear in the window's frame features: per bin, its weights times the mean of the
bin's frames. The mean of several heads' logits is then linear in them too, and is one head of the same
family (so the daemon streams it at the cost of one head, in one ring buffer):

- its features are the union of theirs (raw, backbone or both; heads that read the backbone must share
  one projection, as heads fitted on the same trials do);
- its bins are the union of their bin edges: each of its bins lies inside exactly one bin of every head,
  and a head's bin mean is the length-weighted sum of the means of the bins inside it, so a head's
  weight for that bin, times (this bin's length / its bin's length), is its weight for this bin;
- its weights are the mean of the heads' weights so rewritten (zero for the features a head does not
  read), its bias the mean of their biases.

So ``average_heads(heads)`` computes ``mean(head(window) for head in heads)`` on every window, to float
rounding (tests/model/test_time_resolved_head.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from rtcalm.model.heads.config import HeadError, TimeResolvedConfig
from rtcalm.model.heads.modules import TimeResolvedHead

_SHARED = ("name", "kind", "n_neurons", "d_model", "window_frames", "classes", "pooling")


def _union_kind(configs: Sequence[TimeResolvedConfig]) -> tuple[str, int]:
    raw = any(c.uses_raw for c in configs)
    components = {c.components for c in configs if c.uses_backbone}
    if len(components) > 1:
        raise HeadError(f"heads on the backbone to average must keep the same components, got {sorted(components)}")
    if not components:
        return "raw", 0
    return ("both" if raw else "backbone"), components.pop()


def _edges(config: TimeResolvedConfig) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(config.sizes_of_bins())])


def average_heads(heads: Sequence[TimeResolvedHead]) -> TimeResolvedHead:
    """One head whose logits are the mean of ``heads``' logits (same task, classes, neurons and window)."""
    if not heads:
        raise HeadError("no heads to average")
    configs = [h.config for h in heads]
    first = configs[0]
    for config in configs[1:]:
        for key in _SHARED:
            if getattr(config, key) != getattr(first, key):
                raise HeadError(f"heads to average differ in {key}: {getattr(first, key)!r} vs {getattr(config, key)!r}")
    features, components = _union_kind(configs)
    readers = [h for h in heads if h.config.uses_backbone]
    for head in readers[1:]:
        if not (torch.equal(head.projection_mean, readers[0].projection_mean)
                and torch.equal(head.projection, readers[0].projection)):
            raise HeadError("heads on the backbone to average must share one projection (fit them on the same trials)")
    edges = np.unique(np.concatenate([_edges(c) for c in configs]))
    sizes = np.diff(edges)
    n_bins = len(sizes)
    config = replace(first, features=features, components=components, n_bins=n_bins, bin_sizes=sizes.tolist())
    averaged = TimeResolvedHead(config)
    n, projected = first.n_neurons, first.n_neurons * components  # the ΔF/F's columns first, the projection's last
    weight = np.zeros((config.n_outputs, n_bins, config.frame_features))
    bias = np.zeros(config.n_outputs)
    for head in heads:
        c = head.config
        own = head.readout.weight.detach().double().numpy().reshape(c.n_outputs, c.n_bins, c.frame_features)
        own_edges = _edges(c)
        bin_of = np.searchsorted(own_edges, edges[:-1], side="right") - 1  # each new bin's bin in this head
        share = sizes / np.diff(own_edges)[bin_of]  # (new bins,) its part of that bin's mean
        rewritten = own[:, bin_of, :] * share[None, :, None]
        if c.uses_raw:
            weight[:, :, :n] += rewritten[:, :, :n]
        if c.uses_backbone:
            weight[:, :, -projected:] += rewritten[:, :, -projected:]
        bias += head.readout.bias.detach().double().numpy()
    with torch.no_grad():
        averaged.readout.weight.copy_(torch.from_numpy((weight / len(heads)).reshape(config.n_outputs, -1)))
        averaged.readout.bias.copy_(torch.from_numpy(bias / len(heads)))
        if readers:
            averaged.projection_mean.copy_(readers[0].projection_mean)
            averaged.projection.copy_(readers[0].projection)
    return averaged.eval()
