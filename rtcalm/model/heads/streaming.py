"""A head serving a stream, frame by frame, in preallocated state: what the daemon runs per frame.

:func:`open_stream` gives a head's stream; per consumed frame the daemon (rtcalm.daemon.heads) calls
``absorb(hidden, dff)`` (a frame without its own prediction) or ``step(hidden, dff)`` (the answered
frame: the same update, then the readout) with the frame's hidden state (N, D) and its ΔF/F as the
daemon received it (N,) (NaN = missing).

- :class:`EmaStream` (:class:`DecodingHead`): the EMA pool ``pooled_t = (1 - a) pooled_{t-1} + a hidden_t``,
  ``a = 1 / pool_frames``, then the readout.
- :class:`RingStream` (:class:`TimeResolvedHead`): the readout is linear, so each frame's contribution to
  every bin's logits is computed once when the frame arrives, (n_bins, outputs) numbers, and kept in a
  doubled ring buffer of the last ``window_frames`` frames (each written at ``slot`` and
  ``slot + window``, so the window is always the contiguous view ``[slot + 1, slot + 1 + window)``); the
  logits are the sum, over the window, of each frame's contribution to the bin it is in now. Per frame:
  the head's frame features written into a preallocated vector (ΔF/F with missing values as 0, and/or one
  (N, D) x (D, k) projection), one (n_bins * outputs, N * width) matrix-vector product into the ring, a
  gather and a sum. Until the stream has produced ``window_frames`` frames the missing frames count as
  zero contributions. The result equals ``head(window features)`` (tests/model/test_time_resolved_head.py).
"""

from __future__ import annotations

import torch

from rtcalm.model.heads.modules import DecodingHead, TimeResolvedHead


def decoded(config, logits: torch.Tensor) -> dict:
    """The published values: a regression head's value, or a classification head's class value and
    its probabilities (``<name>_probabilities``)."""
    if config.kind == "regression":
        return {config.name: float(logits[0])}
    probabilities = torch.softmax(logits, dim=-1)
    return {config.name: config.classes[int(torch.argmax(probabilities))],
            f"{config.name}_probabilities": probabilities.tolist()}


class EmaStream:
    def __init__(self, head: DecodingHead):
        self.head = head
        self.pool = torch.zeros(head.config.n_neurons, head.config.d_model)
        self.rate = 1.0 / head.config.pool_frames
        self.frames = 0

    @torch.inference_mode()
    def absorb(self, hidden: torch.Tensor, dff: torch.Tensor | None = None) -> None:
        self.pool.lerp_(hidden, self.rate)
        self.frames += 1

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, dff: torch.Tensor | None = None) -> dict:
        self.absorb(hidden, dff)
        return decoded(self.head.config, self.head(self.pool))

    def reset(self) -> None:
        self.pool.zero_()
        self.frames = 0


class RingStream:
    def __init__(self, head: TimeResolvedHead):
        c = head.config
        self.head, self.config, self.window = head, c, c.window_frames
        with torch.no_grad():
            weight = head.readout.weight.detach().reshape(c.n_outputs, c.n_bins, c.frame_features)
            # per bin, the readout divided by the bin's size: (n_bins * outputs, N * width)
            self.bin_weights = (weight / head.bin_sizes[None, :, None]).transpose(0, 1).reshape(
                c.n_bins * c.n_outputs, c.frame_features).contiguous()
            self.bias = head.readout.bias.detach().clone()
        self.contributions = torch.zeros(2 * self.window, c.n_bins, c.n_outputs)
        self.features = torch.zeros(c.frame_features)
        n = c.n_neurons
        self.raw_part = self.features[:n] if c.uses_raw else None
        if c.uses_backbone:
            offset = n if c.uses_raw else 0
            self.projected_part = self.features[offset:].view(n, c.components)
            self.centred = torch.zeros(n, c.d_model)
        self.window_index = torch.arange(self.window)
        self.bin_of_frame = head.bin_of_frame
        self.slot = self.window - 1  # the slot of the newest frame
        self.frames = 0

    @torch.inference_mode()
    def absorb(self, hidden: torch.Tensor | None, dff: torch.Tensor | None) -> None:
        """Add this frame to the window, without the readout."""
        if self.raw_part is not None:
            torch.nan_to_num(dff, nan=0.0, posinf=0.0, neginf=0.0, out=self.raw_part)
        if self.config.uses_backbone:
            torch.sub(hidden, self.head.projection_mean, out=self.centred)
            torch.matmul(self.centred, self.head.projection, out=self.projected_part)
        slot = (self.slot + 1) % self.window
        torch.mv(self.bin_weights, self.features, out=self.contributions[slot].view(-1))
        self.contributions[slot + self.window].copy_(self.contributions[slot])
        self.slot = slot
        self.frames += 1

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        window = self.contributions[self.slot + 1:self.slot + 1 + self.window]  # (window, bins, outputs), oldest first
        return window[self.window_index, self.bin_of_frame].sum(dim=0) + self.bias

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor | None, dff: torch.Tensor | None) -> dict:
        """Take this frame into the window and return the decoded value."""
        self.absorb(hidden, dff)
        return decoded(self.config, self.logits())

    def reset(self) -> None:
        self.contributions.zero_()
        self.slot = self.window - 1
        self.frames = 0


def open_stream(head: DecodingHead | TimeResolvedHead) -> EmaStream | RingStream:
    """A fresh stream (zeroed state, allocated here once) of ``head``."""
    return RingStream(head) if isinstance(head, TimeResolvedHead) else EmaStream(head)
