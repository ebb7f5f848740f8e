"""Forecast intervals scored offline (rtcalm.eval.intervals): the same bands as driving OnlineIntervals
frame by frame, the interval score's units, the JSON entry, coverage on real data."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import Recording, load_recording
from rtcalm.eval.forecast import EvaluationError, PooledAR, copy_last, first_test_frame, fit_pooled_ar, zscore
from rtcalm.eval.intervals import evaluate_intervals, interval_scores
from rtcalm.stats.intervals import OnlineIntervals

LEVELS = (0.8, 0.95)


def _ar1(n_frames=900, n_neurons=12, phi=0.9, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n_frames, n_neurons))
    for t in range(1, n_frames):
        x[t] = phi * x[t - 1] + rng.standard_normal(n_neurons) * rng.uniform(0.5, 2.0, n_neurons)
    return x.astype(np.float32)


def test_offline_scores_equal_frame_by_frame_driving():
    """interval_scores against an independent loop: one update per frame, bands taken as issued, scored
    by hand with plain Python arithmetic."""
    z = _ar1(seed=1)
    z[500:520, 3] = np.nan  # missing stretch
    horizon, horizons, burn_in = 6, (1, 3, 6), 300
    forecast = np.ascontiguousarray(np.repeat(0.9 * z[:, :, None], horizon, axis=2))
    forecast[100:110, 5] = np.nan  # missing forecasts
    std = np.linspace(0.5, 2.0, z.shape[1])
    offline = interval_scores(z, forecast, std, LEVELS, horizons, burn_in)

    intervals = OnlineIntervals(z.shape[1], horizon, LEVELS)
    lower, upper = np.empty((z.shape[1], horizon), np.float32), np.empty((z.shape[1], horizon), np.float32)
    issued = {}
    for t in range(z.shape[0]):
        intervals.update(z[t], forecast[t])
        for level in LEVELS:
            intervals.bounds_into(forecast[t], level, lower, upper)
            issued[t, level] = lower.copy(), upper.copy()
    for level in LEVELS:
        for h in horizons:
            covered = scored = 0
            total = 0.0
            for t in range(burn_in, z.shape[0] - h):
                lo, hi = issued[t, level]
                for n in range(z.shape[1]):
                    y, a, b = float(z[t + h, n]), float(lo[n, h - 1]), float(hi[n, h - 1])
                    if np.isnan(y) or np.isnan(a):
                        continue
                    scored += 1
                    covered += a <= y <= b
                    penalty = 2.0 / (1.0 - level) * (max(a - y, 0.0) + max(y - b, 0.0))
                    total += ((b - a) + penalty) * std[n]
            cell = offline[level][h]
            assert (cell["covered"], cell["scored"]) == (covered, scored)
            assert cell["interval_score_sum"] == pytest.approx(total, rel=1e-9)
    assert offline[0.95][1]["scored"] < (z.shape[0] - burn_in - 1) * z.shape[1]  # the NaNs were skipped


def _recording(dff):
    return Recording(dff=dff, rate_hz=30.0, neuron_ids=np.arange(dff.shape[1]))


def _ar_forecaster(dff) -> PooledAR:
    return fit_pooled_ar([dff], order=2, horizon=10)


def test_interval_score_is_in_dff_units_and_coverage_is_scale_free():
    dff = _ar1(seed=2)
    forecaster = _ar_forecaster(dff)
    base = evaluate_intervals([_recording(dff)], forecaster, LEVELS, [1, 10], context_frames=8)
    scaled = evaluate_intervals([_recording(dff * 3.0)], forecaster, LEVELS, [1, 10], context_frames=8)
    for level in map(str, LEVELS):
        assert scaled[level]["coverage"] == pytest.approx(base[level]["coverage"], abs=1e-6)
        assert scaled[level]["interval_score"] == pytest.approx(3.0 * base[level]["interval_score"], rel=1e-4)
        assert scaled[level]["interval_score_ratio"] == pytest.approx(base[level]["interval_score_ratio"], rel=1e-4)


def test_json_entry_and_coverage_on_ar1():
    recordings = [_recording(_ar1(n_frames=1500, n_neurons=40, seed=s)) for s in (3, 4)]
    forecaster = _ar_forecaster(_ar1(n_frames=1500, n_neurons=40, seed=5))
    out = evaluate_intervals(recordings, forecaster, LEVELS, [1, 5, 10], context_frames=8)
    assert out["levels"] == list(LEVELS) and out["burn_in_frames"] == 300 and len(out["per_file"]) == 2
    for level in LEVELS:
        entry = out[str(level)]
        assert set(entry) >= {"coverage", "interval_score", "copy_last_interval_score", "per_horizon"}
        assert set(entry["per_horizon"]) == {"1", "5", "10"}
        for cell in [entry, *entry["per_horizon"].values()]:
            assert cell["coverage"] == pytest.approx(level, abs=0.02)
            assert cell["copy_last_coverage"] == pytest.approx(level, abs=0.02)
        # the AR forecast is the best one for AR(1) data: narrower calibrated bands than copy-last's
        assert entry["per_horizon"]["10"]["interval_score_ratio"] < 0.9


def test_copy_last_as_the_model_has_ratio_one_and_short_files_are_refused():
    dff = _ar1(n_frames=700, seed=6)
    out = evaluate_intervals([_recording(dff)], lambda z, t, c: copy_last(z, t, c, 5), LEVELS, [1, 5], context_frames=4)
    assert out["0.8"]["interval_score_ratio"] == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match="burn-in"):
        evaluate_intervals([_recording(dff[:320])], lambda z, t, c: copy_last(z, t, c, 30), LEVELS, [30], 4)


@pytest.mark.real_data
def test_copy_last_coverage_on_the_validation_mouse(real_data_dir):
    """Real ΔF/F (heavy-tailed, the validation mouse, not a test mouse): copy-last bands cover as stated."""
    path = real_data_dir / "yueqiw_neurod-io/data/501317920/natural_movie_one_70463-71367/rec_data.npz"
    dff = load_recording(path).dff
    z = zscore(dff, dff[:first_test_frame(dff.shape[0])])
    forecast = copy_last(z, np.arange(z.shape[0]), 1, 30)
    sums = interval_scores(z, forecast, np.ones(z.shape[1]), LEVELS, [1, 30])
    for level in LEVELS:
        for h in (1, 30):
            assert sums[level][h]["covered"] / sums[level][h]["scored"] == pytest.approx(level, abs=0.02)
