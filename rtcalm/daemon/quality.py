"""A session's live forecast quality: the truth of every frame scored against the forecasts made for it.

Per consumed frame (the daemon's per-frame path, right after the model step; :func:`observe_frames`):

- :class:`rtcalm.stats.skill.RollingSkill`: skill against copy-last at ``quality.skill_horizons``,
  exported per session as ``rtcalm_forecast_skill{session, horizon}``;
- with ``quality.interval_levels`` set, :class:`rtcalm.stats.intervals.OnlineIntervals`: the bands the
  prediction message carries (per-neuron error scales in ΔF/F and per-level multipliers, whose product is
  the half-width: docs/intervals.md, docs/protocol.md) and their
  rolling coverage, ``rtcalm_forecast_interval_coverage{session, level, horizon}``.

Frames consumed without a forecast (folded into a catch-up batch, or filled in for a gap) are scored too,
with a missing forecast, so both rings stay on the acquisition's frame clock. Everything is allocated
when the session starts; a fresh stream starts from nothing (a new neuron count is a new object).
"""

from __future__ import annotations

import numpy as np

from rtcalm.stats.intervals import OnlineIntervals
from rtcalm.stats.skill import RollingSkill


class SessionQuality:
    def __init__(self, n_neurons: int, horizon: int, *, skill_horizons: tuple[int, ...],
                 interval_levels: tuple[float, ...], window_frames: float):
        self.horizon = horizon
        usable = tuple(h for h in skill_horizons if h <= horizon)  # a model with a shorter horizon: fewer
        self.skill = RollingSkill(n_neurons, horizon, usable, time_constant_frames=window_frames) if usable else None
        self.intervals = None
        # What the prediction message carries with intervals, refilled in place every frame: the error
        # scale times the neuron's std, (N, H) float32 ΔF/F, and the multipliers, (levels, H) float32.
        self.interval_scale = None
        self.interval_multiplier = None
        if interval_levels:
            self.intervals = OnlineIntervals(n_neurons, horizon, interval_levels,
                                             coverage_time_constant_frames=window_frames)
            self.interval_scale = np.empty((n_neurons, horizon), np.float32)
            self.interval_multiplier = np.empty((len(interval_levels), horizon), np.float32)
        self.no_forecast = np.full((n_neurons, horizon), np.nan, np.float32)

    def observe(self, truth_z: np.ndarray, forecast_z: np.ndarray | None) -> None:
        """One consumed frame (z, (N,) float32) and the forecast made at it ((N, H) float32; None: none)."""
        forecast = self.no_forecast if forecast_z is None else forecast_z
        if self.skill is not None:
            self.skill.update(truth_z, forecast)
        if self.intervals is not None:
            self.intervals.update(truth_z, forecast)

    def fill_message_intervals(self, std: np.ndarray) -> None:
        """Refill :attr:`interval_scale` (with each neuron's ``std``, (N,) float32) and
        :attr:`interval_multiplier` from the current bands: one numba call, no allocation."""
        self.intervals.message_fields_into(std, self.interval_scale, self.interval_multiplier)


def observe_frames(quality: SessionQuality | None, frames_z: np.ndarray, forecast_z: np.ndarray | None) -> None:
    """``frames_z`` (k, N) consumed in order; ``forecast_z`` was made at the last of them (None: none was)."""
    if quality is None:
        return
    last = frames_z.shape[0] - 1
    for i in range(frames_z.shape[0]):
        quality.observe(frames_z[i], forecast_z if i == last else None)
