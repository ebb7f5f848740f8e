"""Rolling forecast skill against copy-last, driven one frame at a time as the daemon drives it.

::

    skill = RollingSkill(n_neurons, horizons=(1, 5, 15, 30), time_constant_frames=1800)
    # per frame t, after the model has forecast frames t+1 .. t+H:
    skill.update(truth_z, forecast_z)      # truth_z (N,) frame t; forecast_z (N, H), [:, k] predicts t+1+k
    skill.skill                            # (horizons,): 1 - MSE(model) / MSE(copy-last), NaN until scored

For each horizon h, when frame t arrives it is compared with the forecast made at frame t - h for it
and with copy-last's (frame t - h itself), over the neurons where all three are present; the squared
errors summed over neurons enter exponentially forgetting sums (``time_constant_frames``; None: plain
sums, nothing forgotten), and the skill is one minus their ratio: 0 is copy-last's skill, above 0 better,
below 0 worse. It is forecast-eval's ``1 - mse_ratio`` in the daemon's running z units, over a recent
window instead of a whole file (``rtcalm demo`` scores in ΔF/F, forgetting nothing).

State is allocated in the constructor; :meth:`update` is one numba call that allocates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from rtcalm.stats.errors import StatsError
from rtcalm.stats.moments import decay_for

_JIT = dict(cache=True, error_model="numpy")


class RollingSkill:
    """Skill against copy-last at ``horizons`` (frames ahead, each within the forecast's ``horizon``)."""

    def __init__(self, n_neurons: int, horizon: int, horizons: Sequence[int], *,
                 time_constant_frames: float | None = 1800.0):
        horizons = tuple(horizons)
        if not horizons or any(type(h) is not int or not 1 <= h <= horizon for h in horizons):
            raise StatsError(f"horizons must be frames ahead from 1 to {horizon}, got {list(horizons)}")
        self.horizons = horizons
        self.decay = decay_for(time_constant_frames)
        ring = max(horizons) + 1  # frame t needs the forecast and the frame of t - max(h)
        self._steps = np.array([h - 1 for h in horizons], dtype=np.int64)  # forecast column of horizon h
        self._lags = np.array(horizons, dtype=np.int64)
        self._ring_forecast = np.empty((ring, len(horizons), n_neurons), np.float32)
        self._ring_truth = np.empty((ring, n_neurons), np.float32)
        self._model_sse = np.empty(len(horizons))
        self._copy_sse = np.empty(len(horizons))
        self._shape = (n_neurons, horizon)
        self.reset()

    def reset(self) -> None:
        self._ring_forecast[:] = np.nan
        self._ring_truth[:] = np.nan
        self._model_sse[:] = 0.0
        self._copy_sse[:] = 0.0
        self.frames_seen = 0

    def update(self, truth_z: np.ndarray, forecast_z: np.ndarray) -> None:
        """Frame t (NaN = missing) and the forecast made at it (all NaN for a frame without one)."""
        if forecast_z.shape != self._shape or truth_z.shape != self._shape[:1]:
            raise StatsError(f"expected a frame of {self._shape[0]} and a forecast of shape {self._shape}, got "
                             f"{truth_z.shape} and {forecast_z.shape}")
        _update(truth_z, forecast_z, self._ring_forecast, self._ring_truth, self._steps, self._lags, self._model_sse,
                self._copy_sse, self.decay, self.frames_seen)
        self.frames_seen += 1

    @property
    def skill(self) -> np.ndarray:
        """(horizons,) 1 - MSE ratio against copy-last over the recent window; NaN until scored."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self._copy_sse > 0, 1.0 - self._model_sse / self._copy_sse, np.nan)


@njit(**_JIT)
def _update(truth, forecast, ring_forecast, ring_truth, steps, lags, model_sse, copy_sse, decay, frame):
    ring = ring_truth.shape[0]
    for j in range(lags.shape[0]):
        past = (frame - lags[j]) % ring
        model, copy = 0.0, 0.0
        for n in range(truth.shape[0]):
            y = truth[n]
            f = ring_forecast[past, j, n]
            c = ring_truth[past, n]
            if y == y and f == f and c == c:  # all present
                model += (y - f) * (y - f)
                copy += (y - c) * (y - c)
        if frame >= lags[j]:
            model_sse[j] = decay * model_sse[j] + model
            copy_sse[j] = decay * copy_sse[j] + copy
    slot = frame % ring
    for n in range(truth.shape[0]):
        ring_truth[slot, n] = truth[n]
        for j in range(steps.shape[0]):
            ring_forecast[slot, j, n] = forecast[n, steps[j]]
