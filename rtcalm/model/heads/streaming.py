"""A head serving a stream, frame by frame, in preallocated state: what the daemon runs per frame.

:func:`open_stream` gives a head's stream; per consumed frame the daemon (rtcalm.daemon.heads) calls
``absorb(hidden, dff)`` (a frame without its own prediction) or ``step(hidden, dff)`` (the answered
frame: the same update, then the readout) with the frame's hidden state (N, D) and its ΔF/F as the
daemon received it (N,) (NaN = missing), float32 numpy arrays as the engine and the session hold them
(nothing is converted to torch per frame). The state is numpy arrays allocated once, here; the per-frame
work is numba kernels (:mod:`.kernels`) writing into them, and the published map is the only per-frame
object.

- :class:`RingStream` (:class:`TimeResolvedHead`): the readout is linear, so each frame's contribution to
  every bin's logits is computed once when the frame arrives, (n_bins, outputs) numbers, and kept in a
  doubled ring buffer of the last ``window_frames`` frames (each written at ``slot`` and
  ``slot + window``, so the window is always the contiguous rows ``[slot + 1, slot + 1 + window)``); the
  logits are the bias plus, per bin, the mean over the window's frames now in the bin of their
  contributions to it. Per frame, one :func:`~.kernels.absorb_frame` call: the head's frame features
  (ΔF/F with non-finite values as 0, and/or the hidden state centred and projected per neuron on
  ``components`` axes) into a preallocated vector, and one (features) x (n_bins * outputs) product
  into the ring's two rows; an answered frame adds one :func:`~.kernels.window_readout` call (the window
  summed per bin, the bias, a classification head's softmax into its probabilities buffer). Until the
  stream has produced ``window_frames`` frames the missing frames count as zero contributions. The
  features, contributions and logits are float64 from the float32 inputs and weights, so the result
  equals ``head(window features)`` computed in float64 to rounding, and the float32 forward fit-head
  scores to float32 rounding (tests/model/test_time_resolved_head.py).
- :class:`EmaStream` (:class:`DecodingHead`, file version 1, rarely used): the float32 EMA pool
  ``pooled_t = (1 - a) pooled_{t-1} + a hidden_t``, ``a = 1 / pool_frames`` (one kernel call), then the
  (outputs, N * D) readout of the pool (one BLAS product through numpy) and the bias and softmax (one
  kernel call).
"""

from __future__ import annotations

import numpy as np

from rtcalm.model.heads.kernels import absorb_frame, add_bias_softmax, ema_absorb, window_readout
from rtcalm.model.heads.modules import DecodingHead, TimeResolvedHead


def decoded(config, logits: np.ndarray, probabilities: np.ndarray, best: int) -> dict:
    """The published values: a regression head's value, or a classification head's class value (``best``:
    the argmax of its probabilities) and its probabilities (``<name>_probabilities``)."""
    if config.kind == "regression":
        return {config.name: float(logits[0])}
    return {config.name: config.classes[best], f"{config.name}_probabilities": probabilities.tolist()}


def _outputs(config) -> tuple[np.ndarray, np.ndarray]:
    """A head's preallocated logits (float64) and probabilities (empty for a regression head, which the
    kernels read as "no softmax")."""
    return np.zeros(config.n_outputs), np.zeros(config.n_outputs if config.kind == "classification" else 0)


class EmaStream:
    def __init__(self, head: DecodingHead):
        c = head.config
        self.head, self.config = head, c
        self.pool = np.zeros((c.n_neurons, c.d_model), np.float32)
        self.pooled = self.pool.reshape(-1)  # a view: vec(pool), what the readout reads
        self.rate = np.float32(1.0 / c.pool_frames)  # float32 as torch's lerp took it
        self.weight = head.readout.weight.detach().numpy().copy()  # (outputs, N * D) float32
        self.bias = head.readout.bias.detach().numpy().copy()
        self.products = np.zeros(c.n_outputs, np.float32)
        self.logits, self.probabilities = _outputs(c)
        self.frames = 0

    def absorb(self, hidden: np.ndarray, dff: np.ndarray | None = None) -> None:
        ema_absorb(hidden, self.rate, self.pool)
        self.frames += 1

    def step(self, hidden: np.ndarray, dff: np.ndarray | None = None) -> dict:
        self.absorb(hidden, dff)
        # a (outputs, N * D) product: BLAS through numpy, a strict-order loop would be several times slower
        np.matmul(self.weight, self.pooled, out=self.products)
        best = add_bias_softmax(self.products, self.bias, self.logits, self.probabilities)
        return decoded(self.config, self.logits, self.probabilities, best)

    def reset(self) -> None:
        self.pool.fill(0.0)
        self.frames = 0


class RingStream:
    def __init__(self, head: TimeResolvedHead):
        c = head.config
        self.head, self.config, self.window = head, c, c.window_frames
        contributions_per_frame = c.n_bins * c.n_outputs
        # The readout (outputs, bins * features), bin-major, as (features, bins * outputs): row j holds
        # feature j's weight for every (bin, output), so a frame's contributions are axpys over rows.
        weight = head.readout.weight.detach().numpy().reshape(c.n_outputs, c.n_bins, c.frame_features)
        self.weights_t = np.ascontiguousarray(weight.transpose(2, 1, 0)).reshape(c.frame_features,
                                                                                contributions_per_frame)
        self.bias = head.readout.bias.detach().numpy().astype(np.float64)
        self.bin_edges = np.concatenate([[0], np.cumsum(np.bincount(c.bin_of_frame()))]).astype(np.int64)
        self.reads_raw = c.uses_raw
        self.reads_hidden = c.uses_backbone
        if c.uses_backbone:
            self.projection_mean = head.projection_mean.numpy().astype(np.float64)
            self.projection_t = np.ascontiguousarray(head.projection.numpy().T, np.float64)  # (k, D)
        else:  # a projection on no axes: the kernel reads no hidden state
            self.projection_mean, self.projection_t = np.zeros(1), np.zeros((0, 1))
        # what the kernel is handed for an input the head does not read (one type for every head kind)
        self.no_dff, self.no_hidden = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
        self.features = np.zeros(c.frame_features)
        self.contributions = np.zeros((2 * self.window, contributions_per_frame))  # (frame slot, bin * outputs)
        self.logits, self.probabilities = _outputs(c)
        self.slot = self.window - 1  # the slot of the newest frame
        self.frames = 0

    def absorb(self, hidden: np.ndarray | None, dff: np.ndarray | None) -> None:
        """Add this frame to the window, without the readout."""
        slot = self.slot + 1
        if slot == self.window:
            slot = 0
        absorb_frame(dff if self.reads_raw else self.no_dff, hidden if self.reads_hidden else self.no_hidden,
                     self.projection_mean, self.projection_t, self.reads_raw, self.features, self.weights_t,
                     self.contributions, slot, self.window)
        self.slot = slot
        self.frames += 1

    def step(self, hidden: np.ndarray | None, dff: np.ndarray | None) -> dict:
        """Take this frame into the window and return the decoded value."""
        self.absorb(hidden, dff)
        best = window_readout(self.contributions, self.slot, self.window, self.bin_edges, self.bias, self.logits,
                              self.probabilities)
        return decoded(self.config, self.logits, self.probabilities, best)

    def reset(self) -> None:
        self.contributions.fill(0.0)
        self.slot = self.window - 1
        self.frames = 0


def open_stream(head: DecodingHead | TimeResolvedHead) -> EmaStream | RingStream:
    """A fresh stream (zeroed state, allocated here once) of ``head``."""
    return RingStream(head) if isinstance(head, TimeResolvedHead) else EmaStream(head)
