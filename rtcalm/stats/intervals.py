"""Forecast intervals calibrated online: a band around every neuron's forecast at every horizon whose
long-run coverage holds under drift, driven one frame at a time exactly as the daemon drives it.

::

    intervals = OnlineIntervals(n_neurons, horizon=30, levels=(0.8, 0.95))
    # per frame t, after the model has forecast frames t+1 .. t+H:
    intervals.update(truth_z, forecast_z)          # truth_z (N,) frame t, forecast_z (N, H), z units
    intervals.bounds_into(forecast_z, 0.95, lower, upper)     # (N, H) each, z units, NaN = no band
    intervals.half_widths_into(0.95, half_width)              # (N, H): multiply by std for ΔF/F
    intervals.message_fields_into(std, scale_out, multiplier_out)  # (N, H) ΔF/F and (levels, H) float32

Method (docs/intervals.md has the reasoning and the numbers):

- score: the absolute error ``|y - f|`` of a forecast, in the z units it was made in;
- per-neuron, per-horizon error scale ``s[k, n]``: a running mean of those absolute errors with
  forgetting (time constant ``SCALE_TIME_CONSTANT_FRAMES``, bias-corrected so the first errors count
  fully); no band until ``MIN_ERRORS`` errors were seen for that neuron and horizon;
- one width multiplier ``q[j, k]`` per level and horizon (starting at the Gaussian value), shared by
  all neurons, so the band is ``f ± q[j, k] * s[k, n]``; it is learned by quantile tracking, the proportional part of conformal PID
  control (Angelopoulos, Candès & Tibshirani 2023), itself the quantile-scale form of adaptive conformal
  inference (Gibbs & Candès 2021): when the truth of frame t arrives, for each horizon,
  ``q += step[j] * (missed fraction of the neurons' bands for frame t - (1 - level))``, with
  ``step[j] = learning_rate * q_start[j]``. The steps telescope, so over any T frames the mean miss
  rate is within ``(q_end - q_start) / (step * T)`` of ``1 - level`` whatever the data do (while q
  stays above 0, where it is clamped).
- a forecast is scored against the band that was issued for it (``q`` and ``s`` as they were when it
  was made, kept in a ring next to the forecast), so the coverage the tracker controls is the coverage a
  client saw.

State is allocated once in the constructor; :meth:`update`, :meth:`bounds_into`,
:meth:`half_widths_into` and :meth:`message_fields_into` are single numba calls that allocate nothing and
loop over neurons in compiled code. No torch.

Rounding: every half-width is computed as ``float32(q[j, k]) * (s[k, n] * std[n])`` (with ``std`` 1 in z
units, where ``s * 1`` is exact), so the band a client draws from the prediction message's two factors
(:meth:`message_fields_into`) is bit for bit the one :meth:`half_widths_into` gives and, in z units, the
one :meth:`bounds_into` gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from numba import njit

from rtcalm.stats.errors import StatsError
from rtcalm.stats.moments import decay_for

# --- configuration ---------------------------------------------------------------------------------
DEFAULT_LEVELS = (0.8, 0.95)
# Forgetting of the per-neuron error scale, in scored errors (one per frame): 20 s at 30 Hz. Measured
# on the validation and training mice (tools/intervals_tuning.py, docs/intervals.md): longer is better
# at long horizons (an h=30 error scale needs several independent stretches of error), shorter at h=1
# and under drift. Of 100, 300, 600 and 1000, 600 was within 0.005 of the best interval score at every
# horizon and level but one (h=1 at 0.95: 0.856 of copy-last's against 0.846 with 100).
SCALE_TIME_CONSTANT_FRAMES = 600.0
# Errors a neuron needs at a horizon before it gets a band there (a scale from fewer is noise).
MIN_ERRORS = 10
# Quantile-tracking step per unit of (miss rate - alpha), in multiples of the multiplier's starting
# value. On the same mice (scale time constant 300) 0.02 to 0.2 kept coverage within 0.001 of nominal
# and 0.01 within 0.004; 0.2 oscillates at h=30 (the feedback arrives 30 frames late), which costs
# interval score there (0.823 of copy-last's at level 0.8, against 0.767 with 0.02 to 0.1).
LEARNING_RATE = 0.05

_JIT = dict(cache=True, fastmath={"contract"}, error_model="numpy")


def gaussian_multiplier(level: float) -> float:
    """The multiplier a Gaussian error needs: its two-sided ``level`` quantile of |e| over its mean |e|
    (the starting value of ``q`` before any miss has been seen)."""
    return NormalDist().inv_cdf(0.5 + level / 2.0) * math.sqrt(math.pi / 2.0)


class OnlineIntervals:
    """Conformal forecast bands for ``n_neurons`` neurons and horizons 1..``horizon``, at ``levels``.

    Call :meth:`update` once per frame, in stream order, also for frames whose truth is missing (NaN)
    or whose forecast is missing: the ring of pending forecasts is indexed by frame count.
    """

    def __init__(self, n_neurons: int, horizon: int, levels: Sequence[float] = DEFAULT_LEVELS, *,
                 scale_time_constant_frames: float = SCALE_TIME_CONSTANT_FRAMES, min_errors: int = MIN_ERRORS,
                 learning_rate: float = LEARNING_RATE, coverage_time_constant_frames: float = 1800.0):
        self.n_neurons = _positive_int(n_neurons, "n_neurons")
        self.horizon = _positive_int(horizon, "horizon")
        self.levels = _levels(levels)
        self.min_errors = _positive_int(min_errors, "min_errors")
        if not (isinstance(learning_rate, int | float) and math.isfinite(learning_rate) and learning_rate > 0):
            raise StatsError(f"learning_rate must be a positive number, got {learning_rate!r}")
        self.scale_decay = decay_for(scale_time_constant_frames)
        # the rolling coverage a monitor reads (Prometheus): forgetting over this many scored frames
        self.coverage_decay = decay_for(coverage_time_constant_frames)
        n, h, n_levels = self.n_neurons, self.horizon, len(self.levels)
        self._start_multiplier = np.array([gaussian_multiplier(level) for level in self.levels])
        self._alpha = np.array([1.0 - level for level in self.levels])
        self._step = learning_rate * self._start_multiplier
        # the total weight of min_errors errors under forgetting (less a rounding margin: the weights
        # are float32): a neuron gets a band at a horizon once its error weight reaches it
        self._min_weight = sum(self.scale_decay ** i for i in range(self.min_errors)) * (1.0 - 1e-5)
        # Layout (measured, docs/intervals.md): pending forecasts are filed by target frame, slot
        # (target % H), then horizon k, then neuron, so the truth of frame t meets its H forecasts in one
        # contiguous (H, N) block, and the running error sums are (H, N) to match. The error scale the
        # bands are drawn with is kept (N, H) like the forecast, so bounds_into is one contiguous pass.
        self._ring_forecast = np.empty((h, h, n), np.float32)
        self._ring_scale = np.empty((h, h, n), np.float32)  # the error scale each one was issued with
        self._ring_multiplier = np.empty((h, h, n_levels), np.float64)  # and the multipliers
        self._error_sum = np.empty((h, n), np.float32)  # decayed sum of |error| per horizon and neuron
        self._error_weight = np.empty((h, n), np.float32)  # decayed count of those errors
        self._scale = np.empty((n, h), np.float32)  # error_sum / error_weight, NaN below min_errors
        self._multiplier = np.empty((n_levels, h), np.float64)
        self._normalised_errors = np.empty(n, np.float32)  # kernel scratch
        # decayed sums of the fraction of issued bands that held, and of the frames that scored any
        self._covered_sum = np.empty((n_levels, h), np.float64)
        self._covered_weight = np.empty(h, np.float64)
        self._frame_shape = (n,)
        self._unit_std = np.ones(n, np.float32)  # half-widths in z units
        self._forecast_shape = (n, h)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new stream): no pending forecasts, no error scales, starting multipliers."""
        self._ring_forecast[:] = np.nan
        self._ring_scale[:] = np.nan
        self._ring_multiplier[:] = np.nan
        self._error_sum[:] = 0.0
        self._error_weight[:] = 0.0
        self._scale[:] = np.nan
        self._multiplier[:] = self._start_multiplier[:, None]
        self._covered_sum[:] = 0.0
        self._covered_weight[:] = 0.0
        self.frames_seen = 0

    # --- the per-frame path ----------------------------------------------------------------------
    def update(self, truth_z: np.ndarray, forecast_z: np.ndarray) -> None:
        """Frame t: ``truth_z`` (N,) float32 is frame t in z units (NaN = missing: scores nothing),
        ``forecast_z`` (N, H) float32 the forecast made at frame t (``[:, k]`` predicts frame t+1+k; NaN
        = none). Scores the H earlier forecasts of frame t against the bands issued with them, moves the
        multipliers and error scales, then files this forecast with the bands it is issued with now
        (those :meth:`bounds_into` gives until the next update)."""
        if type(truth_z) is not np.ndarray or truth_z.dtype != np.float32 or truth_z.shape != self._frame_shape:
            raise StatsError(f"truth_z must be a float32 array of shape {self._frame_shape}, got {_describe(truth_z)}")
        self._check_forecast(forecast_z)
        _update(truth_z, forecast_z, self._ring_forecast, self._ring_scale, self._ring_multiplier,
                self._error_sum, self._error_weight, self._scale, self._multiplier, self._normalised_errors,
                self._alpha, self._step, self.scale_decay, self._min_weight, self.frames_seen, self._covered_sum,
                self._covered_weight, self.coverage_decay)
        self.frames_seen += 1

    def bounds_into(self, forecast_z: np.ndarray, level: float, lower_out: np.ndarray, upper_out: np.ndarray) -> None:
        """``forecast_z ∓ half-width`` into ``lower_out`` and ``upper_out`` ((N, H) float32 each), z units;
        NaN where that neuron and horizon has no band yet."""
        self._check_forecast(forecast_z)
        self._check_out(lower_out, "lower_out")
        self._check_out(upper_out, "upper_out")
        _bounds(forecast_z, self._scale, self._multiplier, self.level_index(level), lower_out, upper_out)

    def half_widths_into(self, level: float, out: np.ndarray, std: np.ndarray | None = None) -> None:
        """The current half-widths, (N, H) float32, in z units (what a client draws around the forecast:
        multiply by the neuron's std for ΔF/F; the mean does not enter a width), or, given each neuron's
        ``std`` ((N,) float32), in ΔF/F in the same pass. NaN = no band yet."""
        self._check_out(out, "out")
        if std is None:
            std = self._unit_std
        else:
            self._check_std(std)
        _half_widths(self._scale, self._multiplier, self.level_index(level), std, out)

    def message_fields_into(self, std: np.ndarray, scale_out: np.ndarray, multiplier_out: np.ndarray) -> None:
        """The two factors of every level's half-width, as the prediction message carries them: into
        ``scale_out`` ((N, H) float32, ΔF/F) each neuron's current error scale times its ``std`` ((N,)
        float32; NaN = no band yet), into ``multiplier_out`` ((levels, H) float32) the current multipliers.
        ``multiplier_out[j, k] * scale_out[n, k]`` (a float32 product) is bit for bit what
        :meth:`half_widths_into` gives for level j with this ``std``."""
        self._check_std(std)
        self._check_out(scale_out, "scale_out")
        if (type(multiplier_out) is not np.ndarray or multiplier_out.dtype != np.float32
                or multiplier_out.shape != self._multiplier.shape or not multiplier_out.flags.writeable):
            raise StatsError(f"multiplier_out must be a writeable float32 array of shape {self._multiplier.shape}, "
                             f"got {_describe(multiplier_out)}")
        _message_fields(self._scale, self._multiplier, std, scale_out, multiplier_out)

    # --- inspection ------------------------------------------------------------------------------
    def level_index(self, level: float) -> int:
        try:
            return self.levels.index(level)
        except ValueError:
            raise StatsError(f"level {level!r} is not one of this object's levels {self.levels}") from None

    @property
    def multipliers(self) -> np.ndarray:
        """A copy of the width multipliers, (levels, H): half-width = multiplier * error scale."""
        return self._multiplier.copy()

    @property
    def coverage(self) -> np.ndarray:
        """The rolling coverage, (levels, H): the fraction of issued bands that held the truth, over the
        scored frames with forgetting (``coverage_time_constant_frames``); NaN before any band was scored."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._covered_weight > 0, self._covered_sum / self._covered_weight, np.nan)

    @property
    def error_scales(self) -> np.ndarray:
        """A copy of the per-neuron error scales, (N, H) z units, NaN below ``min_errors`` errors."""
        return self._scale.copy()

    @property
    def state_arrays(self) -> tuple[np.ndarray, ...]:
        """Every array of the state (for tests that check nothing is reallocated)."""
        return (self._ring_forecast, self._ring_scale, self._ring_multiplier, self._error_sum, self._error_weight,
                self._scale, self._multiplier, self._normalised_errors, self._covered_sum, self._covered_weight)

    # --- checks ----------------------------------------------------------------------------------
    def _check_forecast(self, forecast_z) -> None:
        if (type(forecast_z) is not np.ndarray or forecast_z.dtype != np.float32
                or forecast_z.shape != self._forecast_shape):
            raise StatsError(f"forecast_z must be a float32 array of shape {self._forecast_shape}, "
                             f"got {_describe(forecast_z)}")

    def _check_std(self, std) -> None:
        if type(std) is not np.ndarray or std.dtype != np.float32 or std.shape != self._frame_shape:
            raise StatsError(f"std must be a float32 array of shape {self._frame_shape}, got {_describe(std)}")

    def _check_out(self, out, name: str) -> None:
        if (type(out) is not np.ndarray or out.dtype != np.float32 or out.shape != self._forecast_shape
                or not out.flags.writeable):
            raise StatsError(f"{name} must be a writeable float32 array of shape {self._forecast_shape}, "
                             f"got {_describe(out)}")


# --- kernels -----------------------------------------------------------------------------------------

@njit(**_JIT)
def _update(truth, forecast, ring_forecast, ring_scale, ring_multiplier, error_sum, error_weight, scale,
            multiplier, normalised_errors, alpha, step, decay, min_weight, frame, covered_sum, covered_weight,
            coverage_decay):
    horizon = ring_forecast.shape[0]
    n_neurons = truth.shape[0]
    n_levels = multiplier.shape[0]
    slot = frame % horizon
    decay32 = np.float32(decay)
    min_weight32 = np.float32(min_weight)
    no_band = np.float32(np.nan)
    # Branch-free inner loops (selects, not ifs) so LLVM vectorises them; one horizon at a time so the
    # rows it touches stay in L1 from scoring to filing.
    for k in range(horizon):
        # 1. The forecast of this frame made k + 1 frames ago: its error, normalised by the scale its band
        # was issued with (-1, never a miss, where no band was issued), and the running error scale.
        scored = 0
        for n in range(n_neurons):
            error = abs(truth[n] - ring_forecast[slot, k, n])
            valid = error < np.float32(np.inf)  # False for a missing truth or forecast (NaN)
            error = error if valid else np.float32(0.0)
            issued_scale = ring_scale[slot, k, n]
            banded = valid and issued_scale == issued_scale
            scored += banded
            # 0/0 (a zero-width band met exactly) is NaN, which is not a miss, as |e| > 0 * s is not
            normalised_errors[n] = error / issued_scale if banded else np.float32(-1.0)
            error_sum[k, n] = decay32 * error_sum[k, n] + error if valid else error_sum[k, n]
            error_weight[k, n] = decay32 * error_weight[k, n] + np.float32(1.0) if valid else error_weight[k, n]
        # 2. Quantile tracking of the shared multiplier, on the fraction of issued bands missed.
        if scored > 0:
            covered_weight[k] = coverage_decay * covered_weight[k] + 1.0
            for j in range(n_levels):
                issued_multiplier = np.float32(ring_multiplier[slot, k, j])
                misses = 0
                for n in range(n_neurons):
                    misses += normalised_errors[n] > issued_multiplier
                q = multiplier[j, k] + step[j] * (misses / scored - alpha[j])
                multiplier[j, k] = q if q > 0.0 else 0.0
                covered_sum[j, k] = coverage_decay * covered_sum[j, k] + 1.0 - misses / scored
        # 3. This frame's forecast for frame + 1 + k, filed with the band it is issued with now. Its slot
        # is `slot` for the last horizon (just consumed) and otherwise one already scored.
        target_slot = (frame + 1 + k) % horizon
        for n in range(n_neurons):
            weight = error_weight[k, n]
            current = error_sum[k, n] / weight if weight >= min_weight32 else no_band
            ring_scale[target_slot, k, n] = current
            scale[n, k] = current
            ring_forecast[target_slot, k, n] = forecast[n, k]
        for j in range(n_levels):
            ring_multiplier[target_slot, k, j] = multiplier[j, k]


@njit(**_JIT)
def _bounds(forecast, scale, multiplier, level, lower, upper):
    n_neurons, horizon = forecast.shape
    row = multiplier[level]
    for n in range(n_neurons):
        for k in range(horizon):
            half = np.float32(row[k]) * scale[n, k]
            lower[n, k] = forecast[n, k] - half
            upper[n, k] = forecast[n, k] + half


@njit(**_JIT)
def _half_widths(scale, multiplier, level, std, out):
    n_neurons, horizon = out.shape
    row = multiplier[level]
    for n in range(n_neurons):
        s = std[n]
        for k in range(horizon):
            # scale times std first: the factor the prediction message carries (_message_fields), so a
            # client's multiplier * scale is this product bit for bit
            out[n, k] = np.float32(row[k]) * (scale[n, k] * s)


@njit(**_JIT)
def _message_fields(scale, multiplier, std, scale_out, multiplier_out):
    n_neurons, horizon = scale_out.shape
    for n in range(n_neurons):
        s = std[n]
        for k in range(horizon):
            scale_out[n, k] = scale[n, k] * s
    for j in range(multiplier.shape[0]):
        for k in range(horizon):
            multiplier_out[j, k] = np.float32(multiplier[j, k])


# --- argument checks ---------------------------------------------------------------------------------

def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise StatsError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _levels(levels) -> tuple[float, ...]:
    try:
        values = tuple(float(level) for level in levels)
    except (TypeError, ValueError):
        raise StatsError(f"levels must be numbers strictly between 0 and 1, got {levels!r}") from None
    if not values or not all(0.0 < v < 1.0 for v in values) or len(set(values)) != len(values):
        raise StatsError(f"levels must be distinct numbers strictly between 0 and 1, got {levels!r}")
    return values


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
