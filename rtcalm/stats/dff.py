"""Online ΔF/F from raw ROI fluorescence, one frame at a time, for rigs that can only send raw F.

Definition, per neuron ``i`` and frame ``t`` (``F`` raw ROI fluorescence, ``Fneu`` its neuropil):

1. Neuropil subtraction: ``Fc[t] = F[t] - neuropil_coef * Fneu[t]`` (Suite2p's convention, 0.7 by
   default; without a neuropil signal, ``Fc = F``).
2. Smoothing by block means: the frames are cut into consecutive blocks of ``block_frames`` frames and
   each block is replaced by the mean of its valid ``Fc`` values (a block with none is dropped).
3. Baseline: ``F0[t]`` is the ``percentile``-th percentile (numpy's default linear interpolation) of
   the most recent ``window_frames // block_frames`` block means among the blocks that ended before
   frame ``t``. A running low percentile of a smoothed trace tracks slow drift (bleaching, focus)
   without following the transients, which sit above it.
4. ``dff[t] = (Fc[t] - F0[t]) / F0[t]``; NaN while there is no baseline yet, where
   ``F0[t] <= min_baseline`` (a non-positive baseline makes the ratio meaningless), and where ``F[t]``
   or ``Fneu[t]`` is missing (NaN). The stats module skips those NaNs.

Staggered blocks: neuron ``i``'s first block is ``block_frames + i % block_frames`` frames long, the
later ones ``block_frames``. So on any frame only about ``1/block_frames`` of the neurons close a block
and re-sort their window; the per-frame cost stays flat instead of spiking every ``block_frames`` frames.

Lag and memory: see docs/statistics.md (``lag_frames`` and ``memory_bytes`` give the numbers for a
configuration).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rtcalm.stats.errors import StatsError

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_JIT = dict(cache=True, error_model="numpy")


class OnlineDff:
    """Streaming ΔF/F converter for ``n_neurons`` ROIs; see the module docstring for the definition."""

    def __init__(self, n_neurons: int, *, neuropil_coef: float = 0.7, block_frames: int = 30,
                 window_frames: int = 1800, percentile: float = 8.0, min_baseline: float = 0.0):
        self.n_neurons = _positive_int("n_neurons", n_neurons)
        self.block_frames = _positive_int("block_frames", block_frames)
        self.window_frames = _positive_int("window_frames", window_frames)
        if self.window_frames < self.block_frames:
            raise StatsError(f"window_frames ({window_frames}) must be at least block_frames ({block_frames})")
        self.neuropil_coef = _finite("neuropil_coef", neuropil_coef)
        if self.neuropil_coef < 0:
            raise StatsError(f"neuropil_coef must be >= 0, got {neuropil_coef}")
        self.percentile = _finite("percentile", percentile)
        if not 0.0 <= self.percentile <= 100.0:
            raise StatsError(f"percentile must be between 0 and 100, got {percentile}")
        self.min_baseline = _finite("min_baseline", min_baseline)
        self.window_blocks = self.window_frames // self.block_frames

        n, k = self.n_neurons, self.window_blocks
        self._block_sum = np.zeros(n)
        self._block_count = np.zeros(n, dtype=np.int64)
        self._ring = np.zeros((n, k))  # block means in arrival order
        self._ring_next = np.zeros(n, dtype=np.int64)  # slot the next block mean goes to
        self._filled = np.zeros(n, dtype=np.int64)  # block means in the window
        self._sorted = np.zeros((n, k))  # the same block means, ascending (first _filled entries)
        self._baseline = np.full(n, np.nan)
        self._no_neuropil = np.zeros(n, dtype=np.float32)
        self._out = np.empty(n, dtype=np.float32)
        self.frames_seen = 0

    @property
    def baseline(self) -> np.ndarray:
        """The current F0 per neuron (a copy; NaN before a neuron's first block ends)."""
        return self._baseline.copy()

    @property
    def memory_bytes(self) -> int:
        """Bytes of state (dominated by the two (neurons, window_blocks) float64 windows)."""
        arrays = (self._block_sum, self._block_count, self._ring, self._ring_next, self._filled, self._sorted,
                  self._baseline, self._no_neuropil, self._out)
        return int(sum(a.nbytes for a in arrays))

    @property
    def lag_frames(self) -> dict[str, float]:
        """How many frames F0 takes to follow a step in the baseline (block granularity aside)."""
        q = self.percentile / 100.0
        return {"first_baseline_after": 2 * self.block_frames - 1,
                "step_up": (1.0 - q) * self.window_blocks * self.block_frames + self.block_frames,
                "step_down": q * self.window_blocks * self.block_frames + self.block_frames}

    def update(self, f: np.ndarray, fneu: np.ndarray | None = None) -> np.ndarray:
        """Convert one frame. Returns a float32 array owned by this object and overwritten by the
        next call (copy it to keep it). Raises :class:`StatsError`, changing nothing, for bad input."""
        f = self._checked(f, "f")
        fneu = self._no_neuropil if fneu is None else self._checked(fneu, "fneu")
        bad = _dff_frame(f, fneu, self.neuropil_coef, self.frames_seen, self.block_frames, self.percentile,
                         self.min_baseline, self._block_sum, self._block_count, self._ring, self._ring_next,
                         self._filled, self._sorted, self._baseline, self._out)
        if bad:
            raise StatsError(f"frame has {bad} infinite values (use NaN for missing)")
        self.frames_seen += 1
        return self._out

    def update_many(self, f: np.ndarray, fneu: np.ndarray | None = None) -> np.ndarray:
        """Convert frames ``(time, neurons)`` in order; returns a new float32 ``(time, neurons)`` array."""
        f = self._checked_block(f, "f")
        if fneu is not None:
            fneu = self._checked_block(fneu, "fneu")
            if fneu.shape != f.shape:
                raise StatsError(f"fneu has shape {fneu.shape} but f has shape {f.shape}")
        for frames in (f, fneu):  # check everything first, so a rejected batch changes nothing
            if frames is not None and np.isinf(frames).any():
                raise StatsError("frames have infinite values (use NaN for missing)")
        out = np.empty(f.shape, dtype=np.float32)
        for t in range(f.shape[0]):
            out[t] = self.update(f[t], None if fneu is None else fneu[t])
        return out

    def _checked(self, frame, name: str) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype not in _FLOAT_DTYPES:
            kind = f"dtype {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise StatsError(f"{name} must be a float32 or float64 numpy array, got {kind}")
        if frame.shape != (self.n_neurons,):
            raise StatsError(f"{name} must have shape ({self.n_neurons},), got shape {frame.shape}")
        return frame

    def _checked_block(self, frames, name: str) -> np.ndarray:
        if not isinstance(frames, np.ndarray) or frames.dtype not in _FLOAT_DTYPES:
            kind = f"dtype {frames.dtype}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise StatsError(f"{name} must be a float32 or float64 numpy array, got {kind}")
        if frames.ndim != 2 or frames.shape[1] != self.n_neurons:
            raise StatsError(f"{name} must have shape (time, {self.n_neurons}), got shape {frames.shape}")
        return frames


@njit(**_JIT)
def _dff_frame(f, fneu, coef, frame_index, block, percentile, min_baseline, block_sum, block_count, ring,
               ring_next, filled, sorted_window, baseline, out):
    """One frame for all neurons. Returns the number of +-inf inputs; when not 0 nothing was changed."""
    n = f.shape[0]
    bad = 0
    for i in range(n):
        if np.abs(f[i]) == np.inf or np.abs(fneu[i]) == np.inf:
            bad += 1
    if bad:
        return bad

    # Output from the baseline of blocks that ended before this frame; then add to the open block.
    for i in range(n):
        corrected = np.float64(f[i]) - coef * np.float64(fneu[i])
        f0 = baseline[i]
        out[i] = (corrected - f0) / f0 if f0 > min_baseline else np.nan  # NaN f0 or value -> NaN
        if corrected == corrected:
            block_sum[i] += corrected
            block_count[i] += 1

    # Neurons whose block ends with this frame: those with i % block == (frame_index + 1) % block, once
    # their longer first block (block + i % block frames) is complete. Written inline on purpose:
    # calling a helper with array arguments costs numba reference counting (~80 ns per neuron here,
    # more than the work itself).
    capacity = ring.shape[1]
    phase = (frame_index + 1) % block
    if frame_index + 1 >= block + phase:
        for i in range(phase, n, block):
            if block_count[i] > 0:
                value = block_sum[i] / block_count[i]
                size = filled[i]
                slot = ring_next[i]
                if size == capacity:
                    # Replace the oldest block mean: find it (binary search), then slide the entries
                    # between its place and the new value's place.
                    oldest = ring[i, slot]
                    low, high = 0, size
                    while low < high:
                        middle = (low + high) // 2
                        if sorted_window[i, middle] < oldest:
                            low = middle + 1
                        else:
                            high = middle
                    insert_at = low
                    while insert_at + 1 < size and sorted_window[i, insert_at + 1] < value:
                        sorted_window[i, insert_at] = sorted_window[i, insert_at + 1]
                        insert_at += 1
                else:
                    insert_at = size
                    size += 1
                    filled[i] = size
                while insert_at > 0 and sorted_window[i, insert_at - 1] > value:
                    sorted_window[i, insert_at] = sorted_window[i, insert_at - 1]
                    insert_at -= 1
                sorted_window[i, insert_at] = value
                ring[i, slot] = value
                ring_next[i] = slot + 1 if slot + 1 < capacity else 0
                # numpy's default ("linear") percentile of the sorted window
                position = percentile / 100.0 * (size - 1)
                below = int(math.floor(position))
                above = min(below + 1, size - 1)
                baseline[i] = (sorted_window[i, below]
                               + (sorted_window[i, above] - sorted_window[i, below]) * (position - below))
            block_sum[i] = 0.0
            block_count[i] = 0
    return 0


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise StatsError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise StatsError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise StatsError(f"{name} must be finite, got {value}")
    return value
