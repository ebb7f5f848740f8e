"""Streaming per-neuron statistics: mean, standard deviation, skewness, excess kurtosis, lag-1
autocorrelation and a signal-to-noise estimate, updated one frame at a time for all neurons at once.

Definitions, for one neuron (``x`` its valid values, ``n`` how many, ``m`` their mean):

- ``std``       = sqrt(m2), m2 = sum((x - m)**2) / n                 (numpy ``std``, ddof=0)
- ``skewness``  = m3 / m2**1.5                                      (``scipy.stats.skew``, bias=True)
- ``kurtosis``  = m4 / m2**2 - 3                                    (``scipy.stats.kurtosis``, Fisher, bias=True)
- ``lag1_autocorr`` = sum over lag-1 pairs of (x[t-1] - m) * (x[t] - m) / sum((x - m)**2), the usual
  ACF estimator (``statsmodels.tsa.stattools.acf(x)[1]`` for a trace without gaps). A lag-1 pair
  needs both frames present and in the same epoch.
- ``snr`` = sqrt(max(m2 - noise_var, 0) / noise_var), with noise_var = mean over lag-1 pairs of
  (x[t] - x[t-1])**2 / 2: von Neumann's successive-difference estimate of the white-noise variance
  (it assumes the signal changes little from one frame to the next).

Like scipy, skewness and kurtosis (and here the lag-1 autocorrelation) are NaN when the variance is
zero to working precision, m2 <= (eps * m)**2. A statistic that needs more values than were seen is
NaN. Missing values (NaN) are skipped per neuron: that neuron's moments do not change, and the lag-1
pairs on both sides of the gap are dropped.

How the lag-1 sum is kept without a co-moment per pair: split each neuron's valid values into runs of
consecutive frames. Over one run, sum((x[t-1]-m)(x[t]-m)) = S - (first-m)**2/2 - (last-m)**2/2 - D/2,
where S is the run's sum of squared deviations and D its sum of squared successive differences. So the
per-frame loop keeps only the moments and D, and the (rare) run edges are accumulated separately
(see ``_kernels.py``); the result is exact, not an approximation.

Exponential forgetting (``time_constant_frames=tau``): before each frame every accumulated weight is
multiplied by ``decay = exp(-1/tau)``, so a value seen ``k`` frames ago weighs ``exp(-k/tau)`` and the
statistics are the weighted versions of the definitions above (weighted mean, weighted central moments
divided by the total weight; a lag-1 pair weighs what its later frame weighs). The effective number of
frames is ``1 / (1 - decay)``, about tau. Weights decay every frame, also while a neuron's value is
missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rtcalm.stats import _kernels as k
from rtcalm.stats.errors import StatsError

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32 = np.dtype(np.float32)
_EPS = k.EPS


@dataclass
class NeuronStats:
    """A snapshot of per-neuron statistics: one float64 entry per neuron, NaN where undefined."""

    count: np.ndarray  # valid values seen (total weight with forgetting)
    mean: np.ndarray
    std: np.ndarray
    skewness: np.ndarray
    kurtosis: np.ndarray  # excess (Fisher) kurtosis
    lag1_autocorr: np.ndarray
    snr: np.ndarray

    FIELDS = ("count", "mean", "std", "skewness", "kurtosis", "lag1_autocorr", "snr")

    @property
    def n_neurons(self) -> int:
        return int(self.count.shape[0])

    def neuron(self, index: int) -> dict[str, float | None]:
        """One neuron's statistics as plain floats, ``None`` where undefined (ready for JSON)."""
        return {name: _plain(getattr(self, name)[index]) for name in self.FIELDS}

    @classmethod
    def concatenate(cls, parts: Iterable[NeuronStats]) -> NeuronStats:
        parts = list(parts)
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.FIELDS})


def _plain(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def decay_for(time_constant_frames: float | None) -> float:
    """The per-frame weight factor for a forgetting time constant (1.0, no forgetting, for None)."""
    if time_constant_frames is None:
        return 1.0
    try:
        tau = float(time_constant_frames)
    except (TypeError, ValueError):
        raise StatsError(f"time_constant_frames must be a number, got {time_constant_frames!r}") from None
    if not math.isfinite(tau) or tau <= 0:
        raise StatsError(f"time_constant_frames must be a positive, finite number of frames, got {tau}")
    return math.exp(-1.0 / tau)


class StreamingStats:
    """Running statistics of ``n_neurons`` neurons, updated one frame (or a batch of frames) at a time.

    The per-frame fast path is :meth:`update`: one numba call that updates every neuron in place in a
    preallocated state array; it allocates nothing and has no Python loop over neurons.

    Frames passed to successive :meth:`update` / :meth:`update_many` calls are taken to be consecutive
    in time. Call :meth:`mark_epoch_boundary` between pieces that are not (the trials of a
    trial-structured recording) so no lag-1 pair spans the gap; the moments are unaffected.
    """

    def __init__(self, n_neurons: int, *, time_constant_frames: float | None = None):
        if isinstance(n_neurons, bool) or not isinstance(n_neurons, int | np.integer) or n_neurons < 1:
            raise StatsError(f"n_neurons must be a positive integer, got {n_neurons!r}")
        self.decay = decay_for(time_constant_frames)
        self.time_constant_frames = None if time_constant_frames is None else float(time_constant_frames)
        self.n_neurons = int(n_neurons)
        self._frame_shape = (self.n_neurons,)
        self._state = np.empty((k.N_ROWS, self.n_neurons), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget everything, keeping the neuron count and the forgetting setting."""
        self._state[:] = 0.0
        self._state[k.ROW_PREV] = np.nan
        self._state[k.ROW_HEAD] = np.nan
        self.frames_seen = 0
        # Set when an epoch boundary was marked before the first frame: the first frame then does not
        # continue whatever came before it (matters for merge(contiguous=True)).
        self._starts_with_boundary = False

    # --- updates ---------------------------------------------------------------------------------
    def update(self, frame: np.ndarray) -> None:
        """Add one frame: a 1-D float32 (float64 is accepted too) array, one value per neuron, NaN =
        missing. Raises :class:`StatsError`, changing nothing, for a wrong type, dtype or shape or +-inf."""
        if type(frame) is not np.ndarray or frame.dtype != _FLOAT32 or frame.shape != self._frame_shape:
            self._check_frame(frame)  # lets float64 frames through, raises for everything else
        if k.update_one(self._state, frame, self.frames_seen, self.decay):
            raise StatsError(f"frame has {k.count_infinite(frame)} infinite values (use NaN for missing)")
        if self.frames_seen == 0:
            self._state[k.ROW_HEAD] = frame
        self.frames_seen += 1

    def update_many(self, frames: np.ndarray) -> None:
        """Add ``frames`` of shape (time, neurons), in order, as one contiguous piece. Every frame is
        checked before any is added."""
        if not isinstance(frames, np.ndarray) or frames.dtype not in _FLOAT_DTYPES:
            raise StatsError(f"frames must be a float32 or float64 numpy array, got {_describe(frames)}")
        if frames.ndim != 2 or frames.shape[1] != self.n_neurons:
            raise StatsError(f"frames must have shape (time, {self.n_neurons}), got shape {frames.shape}")
        if frames.shape[0] == 0:
            return
        bad = k.update_many(self._state, frames, self.frames_seen, self.decay)
        if bad:
            raise StatsError(f"frames have {bad} infinite values (use NaN for missing)")
        if self.frames_seen == 0:
            self._state[k.ROW_HEAD] = frames[0]
        self.frames_seen += frames.shape[0]

    def update_epochs(self, epochs: Iterable[np.ndarray]) -> None:
        """Add several contiguous pieces (e.g. ``Recording.epochs()``), each after an epoch boundary."""
        for epoch in epochs:
            self.mark_epoch_boundary()
            self.update_many(epoch)

    def mark_epoch_boundary(self) -> None:
        """The next frame does not follow the last one in time: no lag-1 pair across this point."""
        if self.frames_seen == 0:
            self._starts_with_boundary = True
        else:
            k.end_runs(self._state, self.frames_seen - 1, self.decay)

    def _check_frame(self, frame) -> None:
        if not isinstance(frame, np.ndarray) or frame.dtype not in _FLOAT_DTYPES:
            raise StatsError(f"a frame must be a float32 numpy array, got {_describe(frame)}")
        if frame.shape != self._frame_shape:
            raise StatsError(f"a frame must have shape ({self.n_neurons},), got shape {frame.shape}")

    # --- merging ---------------------------------------------------------------------------------
    def merge(self, other: StreamingStats, *, contiguous: bool = False) -> None:
        """Fold ``other`` into this accumulator as if its frames had come after this one's.

        Exact: merging the accumulators of two pieces gives the statistics of one pass over both (to
        rounding). With ``contiguous=True`` the first frame of ``other`` directly follows the last frame
        here, so the lag-1 pair across the join counts (as in one pass over a recording split into
        chunks), unless ``other`` began with :meth:`mark_epoch_boundary`; with ``contiguous=False``
        (default) there is an epoch boundary between them. With forgetting, the weights here decay
        over ``other``'s frames.
        """
        if not isinstance(other, StreamingStats):
            raise StatsError(f"can only merge another StreamingStats, got {type(other).__name__}")
        if other is self:
            raise StatsError("cannot merge an accumulator into itself; merge a copy()")
        if other.n_neurons != self.n_neurons:
            raise StatsError(f"cannot merge statistics of {other.n_neurons} neurons into {self.n_neurons}")
        if other.decay != self.decay:
            raise StatsError("cannot merge accumulators with different forgetting time constants "
                             f"({self.time_constant_frames} and {other.time_constant_frames})")
        if other.frames_seen == 0:
            if other._starts_with_boundary:
                self.mark_epoch_boundary()
            return
        if self.frames_seen == 0:
            starts_with_boundary = self._starts_with_boundary
            self._state[:] = other._state
            self.frames_seen = other.frames_seen
            self._starts_with_boundary = starts_with_boundary or other._starts_with_boundary
            return
        join = contiguous and not other._starts_with_boundary
        self._state[:] = _merged_state(self._state, self.frames_seen, other._state, other.frames_seen,
                                       self.decay, join)
        self.frames_seen += other.frames_seen

    def copy(self) -> StreamingStats:
        twin = StreamingStats(self.n_neurons, time_constant_frames=self.time_constant_frames)
        twin._state[:] = self._state
        twin.frames_seen = self.frames_seen
        twin._starts_with_boundary = self._starts_with_boundary
        return twin

    # --- results ---------------------------------------------------------------------------------
    def scale_into(self, mean_out: np.ndarray, std_out: np.ndarray, inv_std_out: np.ndarray, *,
                   min_count: float) -> None:
        """The per-frame normalisation scale, into caller-owned float32 arrays, allocating nothing: the
        running mean (always), std (ddof=0) and 1/std, both NaN where fewer than ``min_count`` values
        (total weight, with forgetting) were seen or the variance is 0. float32 throughout, so that the
        normalised frames do not depend on the machine."""
        for name, out in (("mean_out", mean_out), ("std_out", std_out), ("inv_std_out", inv_std_out)):
            if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == self._frame_shape):
                raise StatsError(f"{name} must be a float32 array of shape ({self.n_neurons},), got {_describe(out)}")
        k.scale_into(self._state, float(min_count), mean_out, std_out, inv_std_out)

    def shape_mask_into(self, skewness_max: float, kurtosis_max: float, mask: np.ndarray) -> int:
        """Per neuron, skewness <= ``skewness_max`` and kurtosis <= ``kurtosis_max`` (both defined), into
        the caller's bool or uint8 (1 / 0) array, allocating nothing: the same statistics and test as
        :meth:`snapshot` then :func:`rtcalm.stats.selection.is_predictable`. Returns how many pass."""
        if not (isinstance(mask, np.ndarray) and mask.dtype in (np.bool_, np.uint8) and mask.shape == self._frame_shape):
            raise StatsError(f"mask must be a bool or uint8 array of shape ({self.n_neurons},), got {_describe(mask)}")
        return k.shape_mask_into(self._state, float(skewness_max), float(kurtosis_max), mask)

    def snapshot(self) -> NeuronStats:
        """The current statistics (new arrays; meant for reporting, not for every frame)."""
        s = _edges_brought_to(self._state, self.frames_seen - 1, self.decay)
        count = s[k.ROW_COUNT].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(count > 0, s[k.ROW_MEAN], np.nan)
            m2 = s[k.ROW_M2] / count
            flat = ~(m2 > (_EPS * mean) ** 2)  # scipy's zero-variance rule; also true for NaN
            skewness = np.where(flat, np.nan, (s[k.ROW_M3] / count) / m2**1.5)
            kurtosis = np.where(flat, np.nan, (s[k.ROW_M4] / count) / m2**2 - 3.0)

            # Lag-1 sum from run edges (module docstring). A pair weighs what its later frame weighs,
            # so the "earlier value" sum is divided by one decay.
            start_sq = s[k.ROW_START_M2] + s[k.ROW_START_WEIGHT] * (s[k.ROW_START_MEAN] - mean) ** 2
            prev = s[k.ROW_PREV]
            open_end_sq = np.where(np.isnan(prev), 0.0, (prev - mean) ** 2)
            end_sq = s[k.ROW_END_M2] + s[k.ROW_END_WEIGHT] * (s[k.ROW_END_MEAN] - mean) ** 2 + open_end_sq
            total_sq = s[k.ROW_M2]
            sq_diff = s[k.ROW_SQ_DIFF]
            lag1_sum = 0.5 * ((total_sq - end_sq) / self.decay + total_sq - start_sq - sq_diff)
            pair_weight = count - s[k.ROW_START_WEIGHT]
            has_pairs = pair_weight > 1e-12 * np.maximum(count, 1.0)
            lag1 = np.where(has_pairs & ~flat, lag1_sum / total_sq, np.nan)

            noise_var = sq_diff / (2.0 * pair_weight)
            snr = np.sqrt(np.maximum(m2 - noise_var, 0.0) / noise_var)
            snr = np.where(has_pairs & (noise_var > 0), snr, np.nan)
        return NeuronStats(count=count, mean=mean, std=np.sqrt(m2), skewness=skewness, kurtosis=kurtosis,
                           lag1_autocorr=lag1, snr=snr)


def _edges_brought_to(state: np.ndarray, frame_index: int, decay: float) -> np.ndarray:
    """A copy of ``state`` whose run-edge rows include all forgetting up to the end of ``frame_index``."""
    out = state.copy()
    if decay != 1.0:
        factor = decay ** (frame_index - out[k.ROW_EDGE_STAMP])
        for row in (k.ROW_START_WEIGHT, k.ROW_START_M2, k.ROW_END_WEIGHT, k.ROW_END_M2):
            out[row] *= factor
    out[k.ROW_EDGE_STAMP] = frame_index
    return out


def _merged_state(a: np.ndarray, frames_a: int, b: np.ndarray, frames_b: int, decay: float,
                  join: bool) -> np.ndarray:
    """State after the frames of ``a`` then those of ``b``. ``join``: b's first frame directly follows
    a's last one, so a run open at the end of ``a`` continues into ``b``."""
    a = _edges_brought_to(a, frames_a - 1, decay)
    b = _edges_brought_to(b, frames_b - 1, decay)
    last_a, first_b = a[k.ROW_PREV], b[k.ROW_HEAD]
    runs_join = ~np.isnan(last_a) & ~np.isnan(first_b) if join else np.zeros(last_a.shape, dtype=bool)

    # Where the runs join, b's first value is no run start after all, and the pair across the join
    # counts (weight of b's first frame at b's end: decay ** (frames_b - 1)).
    join_weight = np.where(runs_join, decay ** (frames_b - 1), 0.0)
    _welford_remove(b, k.ROW_START_WEIGHT, k.ROW_START_MEAN, k.ROW_START_M2, np.where(runs_join, first_b, 0.0),
                    join_weight)
    b[k.ROW_SQ_DIFF] += np.where(runs_join, join_weight * (first_b - last_a) ** 2, 0.0)
    # Elsewhere a run still open at a's end closes there (weight 1 at a's end).
    closes = ~np.isnan(last_a) & ~runs_join
    _welford_merge_into(a, k.ROW_END_WEIGHT, k.ROW_END_MEAN, k.ROW_END_M2,
                        np.where(closes, 1.0, 0.0), np.where(closes, last_a, 0.0), np.zeros_like(last_a))

    # Everything in a is frames_b frames older by the end of b.
    age = decay**frames_b
    for row in (k.ROW_COUNT, k.ROW_M2, k.ROW_M3, k.ROW_M4, k.ROW_SQ_DIFF,
                k.ROW_START_WEIGHT, k.ROW_START_M2, k.ROW_END_WEIGHT, k.ROW_END_M2):
        a[row] *= age

    out = np.empty_like(a)
    _merge_moments(a, b, out)
    out[k.ROW_SQ_DIFF] = a[k.ROW_SQ_DIFF] + b[k.ROW_SQ_DIFF]
    for rows in ((k.ROW_START_WEIGHT, k.ROW_START_MEAN, k.ROW_START_M2),
                 (k.ROW_END_WEIGHT, k.ROW_END_MEAN, k.ROW_END_M2)):
        out[list(rows)] = a[list(rows)]
        _welford_merge_into(out, *rows, b[rows[0]], b[rows[1]], b[rows[2]])
    out[k.ROW_PREV] = b[k.ROW_PREV]
    out[k.ROW_HEAD] = a[k.ROW_HEAD]
    out[k.ROW_EDGE_STAMP] = frames_a + frames_b - 1
    return out


def _merge_moments(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Pébay (2008) eq. 3.1: count, mean and M2..M4 of the union of two sets."""
    n_a, n_b = a[k.ROW_COUNT], b[k.ROW_COUNT]
    m2_a, m3_a = a[k.ROW_M2], a[k.ROW_M3]
    m2_b, m3_b = b[k.ROW_M2], b[k.ROW_M3]
    n = n_a + n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = b[k.ROW_MEAN] - a[k.ROW_MEAN]
        delta_n = np.where(n > 0, delta / n, 0.0)
    out[k.ROW_COUNT] = n
    out[k.ROW_MEAN] = a[k.ROW_MEAN] + delta_n * n_b
    out[k.ROW_M2] = m2_a + m2_b + delta * delta_n * n_a * n_b
    out[k.ROW_M3] = (a[k.ROW_M3] + b[k.ROW_M3] + delta * delta_n**2 * n_a * n_b * (n_a - n_b)
                     + 3.0 * delta_n * (n_a * m2_b - n_b * m2_a))
    out[k.ROW_M4] = (a[k.ROW_M4] + b[k.ROW_M4]
                     + delta * delta_n**3 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b)
                     + 6.0 * delta_n**2 * (n_a * n_a * m2_b + n_b * n_b * m2_a)
                     + 4.0 * delta_n * (n_a * m3_b - n_b * m3_a))


def _welford_merge_into(s: np.ndarray, row_w: int, row_mean: int, row_m2: int, w_b, mean_b, m2_b) -> None:
    """Merge weighted (weight, mean, M2) accumulators ``(w_b, mean_b, m2_b)`` into rows of ``s``."""
    w_a, mean_a = s[row_w].copy(), s[row_mean].copy()
    w = w_a + w_b
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_b = np.where(w > 0, w_b / w, 0.0)
    delta = mean_b - mean_a
    s[row_w] = w
    s[row_mean] = mean_a + delta * frac_b
    s[row_m2] = s[row_m2] + m2_b + delta * delta * w_a * frac_b


def _welford_remove(s: np.ndarray, row_w: int, row_mean: int, row_m2: int, value, weight) -> None:
    """Undo adding ``value`` with ``weight`` to rows of ``s`` (where ``weight`` is 0 nothing changes)."""
    w, mean = s[row_w], s[row_mean]
    remaining = w - weight
    empty = remaining <= 1e-12 * np.maximum(w, 1e-300)  # rounding leftovers of the last value
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_before = np.where(weight == 0, mean, (w * mean - weight * value) / remaining)
        mean_before = np.where(empty, 0.0, mean_before)
    m2_before = s[row_m2] - weight * (value - mean_before) * (value - mean)
    s[row_w] = np.where(empty, 0.0, remaining)
    s[row_mean] = mean_before
    s[row_m2] = np.where(empty, 0.0, m2_before)


def stats_of_epochs(epochs: Iterable[np.ndarray], n_neurons: int, *,
                    time_constant_frames: float | None = None) -> NeuronStats:
    """Statistics over all frames of several contiguous pieces (no lag-1 pair across pieces)."""
    acc = StreamingStats(n_neurons, time_constant_frames=time_constant_frames)
    acc.update_epochs(epochs)
    return acc.snapshot()


def stats_of_recording(recording, *, time_constant_frames: float | None = None) -> NeuronStats:
    """Statistics of a :class:`rtcalm.data.Recording` over all its frames, epoch by epoch."""
    return stats_of_epochs(recording.epochs(), recording.n_neurons, time_constant_frames=time_constant_frames)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__
