"""The decoding heads as forward-only torch modules: tensors and the map from features to logits.

Nothing here keeps state across frames (:mod:`.streaming`), fits (:mod:`.fitting`), trains
(:mod:`.training`) or touches files (:mod:`.files`).

- :class:`DecodingHead` (the EMA head): ``logits = W · vec(pooled) + b`` on an (N, D) pooled hidden state.
- :class:`TimeResolvedHead`: per frame, :meth:`~TimeResolvedHead.frame_features` turns the frame's ΔF/F
  as the daemon received it ((N,)) and its hidden state ((N, D)) into the head's features
  (config.features: the ΔF/F with missing values as 0, and/or the hidden state projected per neuron on
  ``components`` principal axes);
  :meth:`~TimeResolvedHead.forward` averages a window of them in time bins and reads the bins out
  linearly (bin-major, as :func:`rtcalm.model.heads.linear.time_binned`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rtcalm.model.heads.config import HeadConfig, TimeResolvedConfig


class DecodingHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.readout = nn.Linear(config.n_neurons * config.d_model, config.n_outputs)

    def forward(self, pooled_hidden: torch.Tensor) -> torch.Tensor:
        """pooled_hidden (..., N, D) -> logits (..., outputs)."""
        return self.readout(pooled_hidden.flatten(-2))


class TimeResolvedHead(nn.Module):
    def __init__(self, config: TimeResolvedConfig):
        super().__init__()
        self.config = config
        if config.uses_backbone:
            self.register_buffer("projection_mean", torch.zeros(config.d_model))
            self.register_buffer("projection", torch.zeros(config.d_model, config.components))
        self.readout = nn.Linear(config.n_features, config.n_outputs)
        bins = config.bin_of_frame()
        self.register_buffer("bin_of_frame", torch.from_numpy(bins), persistent=False)
        self.register_buffer("bin_sizes", torch.from_numpy(np.bincount(bins)).float(), persistent=False)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., N, D) -> (..., N, k)."""
        return (hidden - self.projection_mean) @ self.projection

    def frame_features(self, dff: torch.Tensor | None, hidden: torch.Tensor | None) -> torch.Tensor:
        """One or many frames' features: dff (..., N) the ΔF/F as received (NaN = missing, read as 0),
        hidden (..., N, D) -> (..., N * width): the ΔF/F first, then the projected hidden state
        neuron-major. Either input may be None when the head does not read it."""
        parts = []
        if self.config.uses_raw:
            parts.append(torch.nan_to_num(dff, nan=0.0, posinf=0.0, neginf=0.0))
        if self.config.uses_backbone:
            parts.append(self.project(hidden).flatten(-2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, window_features: torch.Tensor) -> torch.Tensor:
        """window_features (..., window_frames, N * width), oldest first -> logits (..., outputs)."""
        index = self.bin_of_frame.to(window_features.device)
        sums = window_features.new_zeros(*window_features.shape[:-2], self.config.n_bins, window_features.shape[-1])
        sums.index_add_(sums.dim() - 2, index, window_features)
        return self.readout((sums / self.bin_sizes[:, None]).flatten(-2))

    def window_logits(self, dff: torch.Tensor | None, hidden: torch.Tensor | None) -> torch.Tensor:
        """Logits from a window of frames: dff (..., window, N), hidden (..., window, N, D)."""
        return self(self.frame_features(dff, hidden))
