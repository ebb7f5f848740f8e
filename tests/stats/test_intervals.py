"""OnlineIntervals: coverage on data with known noise, recovery after a variance shift, missing values,
preallocation, the band each forecast is scored against, argument checks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from rtcalm.stats.errors import StatsError
from rtcalm.stats.intervals import OnlineIntervals, gaussian_multiplier

LEVELS = (0.8, 0.95)


def drive(intervals: OnlineIntervals, truth: np.ndarray, forecast: np.ndarray, horizons, start: int, stop: int):
    """Update frame by frame; coverage per (level, h) of the bands issued at frames start <= t < stop,
    checked against truth[t + h] by hand."""
    n_frames, n_neurons, horizon = forecast.shape
    lower = np.empty((n_neurons, horizon), np.float32)
    upper = np.empty((n_neurons, horizon), np.float32)
    covered = {(level, h): [0, 0] for level in intervals.levels for h in horizons}
    for t in range(n_frames):
        intervals.update(truth[t], forecast[t])
        if not start <= t < stop:
            continue
        for level in intervals.levels:
            intervals.bounds_into(forecast[t], level, lower, upper)
            for h in horizons:
                if t + h < n_frames:
                    y = truth[t + h]
                    ok = np.isfinite(y) & np.isfinite(lower[:, h - 1])
                    inside = (y >= lower[:, h - 1]) & (y <= upper[:, h - 1])
                    covered[level, h][0] += int(inside[ok].sum())
                    covered[level, h][1] += int(ok.sum())
    return {key: c / n for key, (c, n) in covered.items()}


def noise(n_frames, n_neurons, horizon, seed, *, sigma=None, sampler="normal"):
    """Truth = per-neuron-scaled iid noise; the forecast of every frame is 0 (the noise's mean), so every
    horizon's error is the noise itself, with known quantiles."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.3, 3.0, n_neurons) if sigma is None else sigma
    draws = rng.standard_normal((n_frames, n_neurons)) if sampler == "normal" else rng.standard_t(3, (n_frames, n_neurons))
    truth = (draws * sigma).astype(np.float32)
    return truth, np.zeros((n_frames, n_neurons, horizon), np.float32)


def test_coverage_converges_to_nominal_with_gaussian_noise():
    truth, forecast = noise(3000, 100, 8, seed=0)
    intervals = OnlineIntervals(100, 8, LEVELS)
    coverage = drive(intervals, truth, forecast, (1, 8), start=300, stop=3000)
    for (level, _), value in coverage.items():
        assert value == pytest.approx(level, abs=0.01)
    # the error scale is the noise's mean absolute value and the multiplier the Gaussian one
    sigma = np.abs(truth).mean(axis=0)
    assert np.allclose(intervals.error_scales[:, 0], sigma, rtol=0.15)
    assert np.allclose(intervals.multipliers[1], gaussian_multiplier(0.95), rtol=0.08)


def test_heavy_tails_move_the_multiplier_and_keep_coverage():
    """Student-t(3) errors need a wider multiplier than the Gaussian start: the tracker must find it."""
    truth, forecast = noise(4000, 100, 4, seed=1, sampler="t3")
    intervals = OnlineIntervals(100, 4, LEVELS)
    coverage = drive(intervals, truth, forecast, (1, 4), start=300, stop=4000)
    for (level, _), value in coverage.items():
        assert value == pytest.approx(level, abs=0.01)
    assert intervals.multipliers[1].min() > 1.1 * gaussian_multiplier(0.95)
    # without the tracker (a step far too small to move it) the Gaussian multiplier under-covers
    frozen = OnlineIntervals(100, 4, LEVELS, learning_rate=1e-9)
    frozen_coverage = drive(frozen, truth, forecast, (1,), start=300, stop=4000)
    assert frozen_coverage[0.95, 1] < 0.94


def test_coverage_recovers_after_a_variance_shift():
    n, horizon, shift = 100, 6, 2000
    truth, forecast = noise(5000, n, horizon, seed=2, sigma=np.ones(100))
    truth[shift:] *= 4.0  # every neuron's noise four times larger from frame 2000 on
    intervals = OnlineIntervals(n, horizon, LEVELS)
    just_after = drive(intervals, truth[:shift + 60], forecast[:shift + 60], (1, 6), start=shift, stop=shift + 30)
    assert just_after[0.95, 1] < 0.9  # the shift does break the old bands (else this test shows nothing)
    intervals.reset()
    later = drive(intervals, truth, forecast, (1, 6), start=shift + 300, stop=5000)
    for (level, _), value in later.items():
        assert value == pytest.approx(level, abs=0.015)
    intervals.reset()
    whole = drive(intervals, truth, forecast, (1, 6), start=shift, stop=5000)  # long-run, shift included
    for (level, _), value in whole.items():
        assert value == pytest.approx(level, abs=0.02)


def test_missing_truth_or_forecast_updates_nothing():
    truth, forecast = noise(200, 20, 5, seed=3)
    intervals = OnlineIntervals(20, 5, LEVELS)
    for t in range(100):
        intervals.update(truth[t], forecast[t])
    sums_before = intervals._error_sum.copy(), intervals._error_weight.copy()
    multipliers = intervals.multipliers
    missing = np.full(20, np.nan, np.float32)
    intervals.update(missing, forecast[100])
    assert np.array_equal(intervals._error_sum, sums_before[0]) and np.array_equal(intervals._error_weight, sums_before[1])
    assert np.array_equal(intervals.multipliers, multipliers)
    # partly missing: only the neurons with a value move
    partial = truth[101].copy()
    partial[:10] = np.nan
    intervals.update(partial, forecast[101])
    assert np.array_equal(intervals._error_weight[:, :10], sums_before[1][:, :10])
    assert not np.array_equal(intervals._error_weight[:, 10:], sums_before[1][:, 10:])
    # a missing forecast is never scored: after NaN forecasts at frames 102..106, frame 107 (whose
    # forecasts were all made then) changes no error sum
    for t in range(102, 107):
        intervals.update(truth[t], np.full((20, 5), np.nan, np.float32))
    weights, multipliers = intervals._error_weight.copy(), intervals.multipliers
    intervals.update(truth[107], forecast[107])
    assert np.array_equal(intervals._error_weight, weights) and np.array_equal(intervals.multipliers, multipliers)
    intervals.update(truth[108], forecast[108])  # ...and frame 108 scores the forecast made at 107
    assert not np.array_equal(intervals._error_weight[0], weights[0])


def test_no_band_before_min_errors_and_nan_bounds_there():
    intervals = OnlineIntervals(3, 2, LEVELS, min_errors=4)
    lower, upper = np.empty((3, 2), np.float32), np.empty((3, 2), np.float32)
    forecast = np.zeros((3, 2), np.float32)
    for t in range(5):  # horizon 1 is scored from frame 1 on: 4 errors by frame 4
        intervals.update(np.ones(3, np.float32), forecast)
        intervals.bounds_into(forecast, 0.8, lower, upper)
        assert np.isnan(lower[:, 0]).all() == (t < 4)
    assert np.isnan(lower[:, 1]).all()  # horizon 2: 3 errors so far
    assert np.allclose(upper[:, 0], gaussian_multiplier(0.8) * 1.0)  # |error| = 1 every time


def test_bounds_and_half_widths_are_multiplier_times_scale():
    truth, forecast = noise(400, 30, 4, seed=4)
    forecast += np.random.default_rng(5).standard_normal(forecast.shape).astype(np.float32)
    intervals = OnlineIntervals(30, 4, LEVELS)
    for t in range(400):
        intervals.update(truth[t], forecast[t])
    lower, upper, half = (np.empty((30, 4), np.float32) for _ in range(3))
    intervals.bounds_into(forecast[-1], 0.95, lower, upper)
    intervals.half_widths_into(0.95, half)
    expected = intervals.multipliers[1][None, :] * intervals.error_scales
    assert np.allclose(half, expected, rtol=1e-6)
    assert np.allclose(upper - forecast[-1], expected, rtol=1e-5) and np.allclose(forecast[-1] - lower, expected, rtol=1e-5)
    intervals.half_widths_into(0.8, half)
    assert (half < expected).all()


def test_forecasts_are_scored_against_the_band_issued_with_them():
    """A band that shrinks after a forecast was made must not turn that forecast's hit into a miss."""
    intervals = OnlineIntervals(1, 3, (0.5,), min_errors=1)
    zero = np.zeros((1, 3), np.float32)
    for _ in range(8):
        intervals.update(np.ones(1, np.float32), zero)  # |error| 1: scale 1, every pending forecast banded
    assert (intervals.multipliers > 0.5).all()
    intervals._multiplier[:] = 0.0  # (white box) from now on the bands issued are empty
    # an error of 0.01 is inside every band issued so far: all hits, so every multiplier moves down
    # (and is clamped at 0); scored against the current, empty bands it would be a miss and move up
    intervals.update(np.array([0.01], np.float32), zero)
    assert np.array_equal(intervals.multipliers, np.zeros((1, 3)))


def test_the_per_frame_path_allocates_nothing():
    n, horizon = 256, 10
    truth, forecast = noise(300, n, horizon, seed=6)
    intervals = OnlineIntervals(n, horizon, LEVELS)
    lower, upper = np.empty((n, horizon), np.float32), np.empty((n, horizon), np.float32)
    std = np.full(n, 0.5, np.float32)
    scale_out, multiplier_out = np.empty((n, horizon), np.float32), np.empty((len(LEVELS), horizon), np.float32)
    for t in range(50):  # compile and settle
        intervals.update(truth[t], forecast[t])
        intervals.bounds_into(forecast[t], 0.8, lower, upper)
        intervals.half_widths_into(0.95, lower)
        intervals.message_fields_into(std, scale_out, multiplier_out)
    arrays = [(a.__array_interface__["data"][0], a.shape) for a in intervals.state_arrays]
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    for t in range(50, 300):
        intervals.update(truth[t], forecast[t])
        intervals.bounds_into(forecast[t], 0.8, lower, upper)
        intervals.half_widths_into(0.95, lower)
        intervals.message_fields_into(std, scale_out, multiplier_out)
    end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # one (N, H) float32 array, even freed at once, would be 10 kB at the peak
    assert peak - start < 4096 and end - start < 1024
    assert [(a.__array_interface__["data"][0], a.shape) for a in intervals.state_arrays] == arrays


def test_reset_forgets_everything():
    truth, forecast = noise(100, 10, 3, seed=7)
    fresh = OnlineIntervals(10, 3, LEVELS)
    used = OnlineIntervals(10, 3, LEVELS)
    for t in range(100):
        used.update(truth[t], forecast[t] + 1.0)
    used.reset()
    for t in range(100):
        used.update(truth[t], forecast[t])
        fresh.update(truth[t], forecast[t])
    for a, b in zip(used.state_arrays, fresh.state_arrays, strict=True):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_neurons": 0}, "n_neurons"), ({"horizon": 1.5}, "horizon"), ({"levels": (0.8, 1.0)}, "levels"),
    ({"levels": ()}, "levels"), ({"levels": ("a",)}, "levels"), ({"levels": (0.8, 0.8)}, "distinct"),
    ({"learning_rate": 0.0}, "learning_rate"), ({"scale_time_constant_frames": -1}, "time_constant"),
    ({"min_errors": 0}, "min_errors"),
])
def test_bad_settings(kwargs, message):
    settings = {"n_neurons": 4, "horizon": 3, **kwargs}
    with pytest.raises(StatsError, match=message):
        OnlineIntervals(**settings)


def test_bad_frames_change_nothing():
    intervals = OnlineIntervals(4, 3, LEVELS)
    good_truth, good_forecast = np.zeros(4, np.float32), np.zeros((4, 3), np.float32)
    out = np.empty((4, 3), np.float32)
    for truth, forecast in [(good_truth.astype(np.float64), good_forecast), (np.zeros(5, np.float32), good_forecast),
                            (good_truth, np.zeros((3, 4), np.float32)), ([0.0] * 4, good_forecast)]:
        with pytest.raises(StatsError):
            intervals.update(truth, forecast)
    assert intervals.frames_seen == 0
    with pytest.raises(StatsError, match="not one of"):
        intervals.half_widths_into(0.9, out)
    with pytest.raises(StatsError, match="upper_out"):
        intervals.bounds_into(good_forecast, 0.8, out, np.empty((4, 3), np.float64))


def test_half_widths_in_dff_are_the_z_half_widths_times_the_std():
    rng = np.random.default_rng(3)
    intervals = OnlineIntervals(6, 4, levels=(0.8,))
    for _ in range(40):
        intervals.update(rng.standard_normal(6).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32))
    std = rng.random(6).astype(np.float32) + 0.5
    in_z, in_dff = np.empty((6, 4), np.float32), np.empty((6, 4), np.float32)
    intervals.half_widths_into(0.8, in_z)
    intervals.half_widths_into(0.8, in_dff, std)
    np.testing.assert_allclose(in_dff, in_z * std[:, None], rtol=1e-6)
    with pytest.raises(StatsError, match="std must be a float32 array of shape"):
        intervals.half_widths_into(0.8, in_dff, std.astype(np.float64))


def test_the_message_fields_multiply_to_the_half_widths_bit_for_bit():
    """The prediction message carries scale * std and the multipliers; a client's float32 product of the
    two must be exactly the half-width the daemon computes (and, in z units, the band bounds_into draws)."""
    truth, forecast = noise(300, 40, 6, seed=11)
    forecast += np.random.default_rng(12).standard_normal(forecast.shape).astype(np.float32)
    intervals = OnlineIntervals(40, 6, LEVELS)
    for t in range(300):
        intervals.update(truth[t], forecast[t])
    rng = np.random.default_rng(13)
    std = (rng.random(40) * 3.0 + 0.01).astype(np.float32)
    std[:3] = np.nan  # neurons 0-2 have no statistics yet: no band in ΔF/F
    scale, multiplier = np.empty((40, 6), np.float32), np.empty((2, 6), np.float32)
    intervals.message_fields_into(std, scale, multiplier)
    assert np.array_equal(scale, intervals.error_scales * std[:, None], equal_nan=True)
    assert np.array_equal(multiplier, intervals.multipliers.astype(np.float32))
    assert np.isnan(scale[:3]).all() and np.isfinite(scale[3:]).all()
    half, lower, upper = (np.empty((40, 6), np.float32) for _ in range(3))
    for j, level in enumerate(LEVELS):
        intervals.half_widths_into(level, half, std)
        client = multiplier[j] * scale  # what rtcalm.protocol.Prediction.interval computes
        assert client.dtype == np.float32 and np.array_equal(client, half, equal_nan=True)
        # the other order of the three factors differs in the last bit for some entries: the test can tell
        other_order = (multiplier[j] * intervals.error_scales) * std[:, None]
        assert not np.array_equal(other_order, half, equal_nan=True)
        # z units (std 1): the product is the band bounds_into draws, bit for bit
        intervals.message_fields_into(np.ones(40, np.float32), scale, multiplier)
        intervals.bounds_into(forecast[-1], level, lower, upper)
        assert np.array_equal(forecast[-1] + multiplier[j] * scale, upper)
        assert np.array_equal(forecast[-1] - multiplier[j] * scale, lower)
        intervals.message_fields_into(std, scale, multiplier)


def test_message_fields_refuse_wrong_buffers():
    intervals = OnlineIntervals(4, 3, LEVELS)
    std, scale, multiplier = np.ones(4, np.float32), np.empty((4, 3), np.float32), np.empty((2, 3), np.float32)
    for args, message in [((std.astype(np.float64), scale, multiplier), "std must be a float32 array of shape"),
                          ((std, scale.T.copy(), multiplier), "scale_out must be a writeable float32"),
                          ((std, scale, np.empty((1, 3), np.float32)), r"multiplier_out must be .* shape \(2, 3\)"),
                          ((std, scale, multiplier.astype(np.float64)), "multiplier_out must be")]:
        with pytest.raises(StatsError, match=message):
            intervals.message_fields_into(*args)
    read_only = np.empty((2, 3), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(StatsError, match="multiplier_out must be a writeable"):
        intervals.message_fields_into(std, scale, read_only)
