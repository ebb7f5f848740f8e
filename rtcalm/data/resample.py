"""Frame-rate conversion, so a model trained at one rate (CalM's default model: 30 Hz) serves
recordings made at another (the grating files: 16 Hz).

- Offline, :func:`resample_recording` uses polyphase filtering (``scipy.signal.resample_poly``), which
  low-pass filters before decimating; trial-structured recordings are resampled epoch by epoch, never
  across an epoch boundary.
- Live, :class:`StreamingResampler` converts a stream frame by frame with linear interpolation between
  the two newest input frames. It is causal: an output frame at time τ is emitted once an input frame
  at time >= τ has arrived, so it adds at most one input frame period of latency and keeps one frame
  of state.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from rtcalm.data.recording import Recording


def rational_ratio(source_hz: float, target_hz: float, max_denominator: int = 100) -> tuple[int, int]:
    """(up, down) with up/down ≈ target/source."""
    ratio = Fraction(target_hz / source_hz).limit_denominator(max_denominator)
    return ratio.numerator, ratio.denominator


def resample_recording(recording: Recording, target_hz: float) -> Recording:
    """A copy of ``recording`` at ``target_hz`` (ΔF/F and continuous labels resampled along time)."""
    from scipy.signal import resample_poly

    if not target_hz > 0:
        raise ValueError(f"target rate must be positive, got {target_hz}")
    if abs(recording.rate_hz - target_hz) < 1e-9:
        return recording
    up, down = rational_ratio(recording.rate_hz, target_hz)
    time_axis = 1 if recording.is_trial_structured else 0

    def convert(values: np.ndarray) -> np.ndarray:
        # padtype="line" avoids the ringing that zero-padding causes at (epoch) edges
        return resample_poly(values.astype(np.float64), up, down, axis=time_axis, padtype="line").astype(np.float32)

    dff = convert(recording.dff)
    labels = {name: convert(values) for name, values in recording.continuous_labels.items()}
    trial_time = None
    if recording.is_trial_structured:
        trial_time = recording.trial_time_s[0] + np.arange(dff.shape[1]) / target_hz
    meta = recording.meta
    meta = type(meta)(**{**meta.__dict__, "extra": {**meta.extra, "resampled_from_hz": f"{recording.rate_hz:g}"}})
    return Recording(dff=dff, rate_hz=target_hz, neuron_ids=recording.neuron_ids, meta=meta,
                     continuous_labels=labels, trials=recording.trials, trial_time_s=trial_time,
                     neuron_info=recording.neuron_info)


class StreamingResampler:
    """Convert a live stream from ``source_hz`` to ``target_hz`` by linear interpolation.

    ``push(frame)`` takes one input frame (N,) and returns the output frames (k, N) that became
    available (k is 0, 1 or more; on average target/source). Output frame j is at time j / target_hz;
    input frame i at i / source_hz. NaN (missing) values propagate to the output frames they touch.
    The output buffer is preallocated; the returned array is a view valid until the next ``push``.
    """

    def __init__(self, n_neurons: int, source_hz: float, target_hz: float):
        if not (source_hz > 0 and target_hz > 0):
            raise ValueError("rates must be positive")
        self.source_hz, self.target_hz = float(source_hz), float(target_hz)
        self.n_neurons = n_neurons
        self._previous = np.full(n_neurons, np.nan, dtype=np.float32)
        self._inputs_seen = 0
        self._outputs_emitted = 0
        max_out = int(np.ceil(target_hz / source_hz)) + 1
        self._out = np.empty((max_out, n_neurons), dtype=np.float32)

    def push(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape != (self.n_neurons,):
            raise ValueError(f"frame must have shape ({self.n_neurons},), got {frame.shape}")
        i = self._inputs_seen
        now = i / self.source_hz
        k = 0
        while self._outputs_emitted / self.target_hz <= now + 1e-12:
            tau = self._outputs_emitted / self.target_hz
            if i == 0:
                self._out[k] = frame
            else:
                weight = (tau - (i - 1) / self.source_hz) * self.source_hz  # in [0, 1]
                np.multiply(self._previous, 1.0 - weight, out=self._out[k])
                self._out[k] += weight * frame
            self._outputs_emitted += 1
            k += 1
        self._previous[:] = frame
        self._inputs_seen = i + 1
        return self._out[:k]
