"""RollingSkill against a direct numpy computation of 1 - MSE(model) / MSE(copy-last)."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.stats.errors import StatsError
from rtcalm.stats.skill import RollingSkill


def reference(truth: np.ndarray, forecasts: np.ndarray, h: int) -> float:
    """Over every frame t >= h and every neuron where truth[t], the forecast made at t - h for t, and
    truth[t - h] are present: 1 - sum of squared model errors / sum of copy-last's."""
    y, f, c = truth[h:], forecasts[:-h, :, h - 1], truth[:-h]
    ok = np.isfinite(y) & np.isfinite(f) & np.isfinite(c)
    return 1.0 - np.sum((y - f)[ok] ** 2) / np.sum((y - c)[ok] ** 2)


def test_matches_numpy_without_forgetting_and_skips_missing_values():
    rng = np.random.default_rng(0)
    n, horizon, frames = 7, 6, 200
    truth = rng.normal(size=(frames, n)).astype(np.float32)
    truth[rng.random((frames, n)) < 0.1] = np.nan
    forecasts = (truth[:, :, None] * 0.5 + rng.normal(size=(frames, n, horizon)) * 0.3).astype(np.float32)
    forecasts[rng.random(frames) < 0.2] = np.nan  # frames without a forecast (folded, gaps)
    skill = RollingSkill(n, horizon, (1, 3, 6), time_constant_frames=1e12)
    assert np.isnan(skill.skill).all()
    for t in range(frames):
        skill.update(truth[t], forecasts[t])
    np.testing.assert_allclose(skill.skill, [reference(truth, forecasts, h) for h in (1, 3, 6)], rtol=1e-5)


def test_a_perfect_forecast_scores_one_and_copy_last_scores_zero():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(50, 4)).astype(np.float32)
    perfect, copy = RollingSkill(4, 2, (1, 2)), RollingSkill(4, 2, (1, 2))
    for t in range(50):
        ahead = np.stack([truth[min(t + 1, 49)], truth[min(t + 2, 49)]], axis=1)
        perfect.update(truth[t], ahead if t < 48 else np.full((4, 2), np.nan, np.float32))
        copy.update(truth[t], np.repeat(truth[t][:, None], 2, axis=1))
    np.testing.assert_allclose(perfect.skill, [1.0, 1.0])
    np.testing.assert_allclose(copy.skill, [0.0, 0.0], atol=1e-6)


def test_forgetting_follows_a_change():
    rng = np.random.default_rng(2)
    skill = RollingSkill(16, 1, (1,), time_constant_frames=50)
    truth = rng.normal(size=(600, 16)).astype(np.float32)
    for t in range(600):
        good = t < 300
        forecast = truth[t + 1] if good and t + 1 < 600 else -truth[t] * 3
        skill.update(truth[t], np.asarray(forecast, np.float32)[:, None])
        if t == 299:
            assert skill.skill[0] > 0.99
    assert skill.skill[0] < 0  # the last 300 frames forecast badly, and the window forgot the good ones


@pytest.mark.parametrize("horizons", [(), (0,), (7,), (1.0,)])
def test_bad_horizons(horizons):
    with pytest.raises(StatsError, match="horizons must be"):
        RollingSkill(4, 6, horizons)


def test_bad_shapes():
    skill = RollingSkill(4, 3, (1,))
    with pytest.raises(StatsError, match="expected a frame of 4"):
        skill.update(np.zeros(5, np.float32), np.zeros((4, 3), np.float32))
