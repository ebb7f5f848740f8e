"""StreamingStats: exactness against scipy / offline definitions, missing values, epochs, merging,
forgetting, bad input, and the no-allocation hot path."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from stats_reference import reference_stats, scipy_moments

from rtcalm.stats import NeuronStats, StatsError, StreamingStats, stats_of_epochs

FIELDS = NeuronStats.FIELDS


def _heavy_tailed(rng, frames, neurons, dtype=np.float32):
    """Mixed traces: Gaussian noise plus sparse exponential transients of per-neuron rate."""
    rate = rng.uniform(0.002, 0.3, size=neurons)
    events = rng.random((frames, neurons)) < rate
    x = 0.05 * rng.standard_normal((frames, neurons)) + events * rng.exponential(1.0, (frames, neurons))
    return x.astype(dtype)


def _assert_stats_close(got: NeuronStats, want: dict, rtol=1e-9, fields=FIELDS):
    for name in fields:
        g, w = getattr(got, name), want[name]
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{name}: NaN pattern differs")
        ok = ~np.isnan(w)
        if name == "mean":  # relative error is meaningless for a mean near 0; scale by the spread
            scale = np.maximum(want["std"][ok], np.abs(w[ok]))
            np.testing.assert_array_less(np.abs(g[ok] - w[ok]), rtol * scale + 1e-300, err_msg=name)
        else:
            np.testing.assert_allclose(g[ok], w[ok], rtol=rtol, atol=0, err_msg=name)


def test_frame_by_frame_matches_scipy_and_offline_definitions():
    rng = np.random.default_rng(0)
    x = _heavy_tailed(rng, 3000, 37)
    stats = StreamingStats(37)
    for frame in x:
        stats.update(frame)
    snap = stats.snapshot()
    _assert_stats_close(snap, scipy_moments(x), fields=("mean", "std", "skewness", "kurtosis"))
    _assert_stats_close(snap, reference_stats([x]))
    assert stats.frames_seen == 3000
    np.testing.assert_array_equal(snap.count, 3000)


def test_lag1_autocorrelation_is_the_usual_acf_estimator():
    rng = np.random.default_rng(1)
    ar = np.zeros((4000, 3))
    for t in range(1, 4000):  # AR(1) with coefficients 0.9, 0.0, -0.5
        ar[t] = np.array([0.9, 0.0, -0.5]) * ar[t - 1] + rng.standard_normal(3)
    stats = StreamingStats(3)
    stats.update_many(ar.astype(np.float32))
    x = ar.astype(np.float32).astype(np.float64)
    d = x - x.mean(axis=0)
    acf1 = (d[1:] * d[:-1]).sum(axis=0) / (d * d).sum(axis=0)
    np.testing.assert_allclose(stats.snapshot().lag1_autocorr, acf1, rtol=1e-9)
    np.testing.assert_allclose(acf1, [0.9, 0.0, -0.5], atol=0.05)  # and it measures what it should


def test_snr_separates_slow_signal_from_white_noise():
    rng = np.random.default_rng(2)
    t = np.arange(6000)
    slow = np.sin(2 * np.pi * t / 300.0)[:, None]
    noise = rng.standard_normal((6000, 2))
    x = np.column_stack([slow[:, 0] + 0.1 * noise[:, 0], 0.1 * noise[:, 1]]).astype(np.float32)
    stats = StreamingStats(2)
    stats.update_many(x)
    snr = stats.snapshot().snr
    # signal std 0.707 over noise 0.1 -> ~7; pure noise -> ~0
    assert 6.0 < snr[0] < 8.0
    assert snr[1] < 0.2


def test_update_and_update_many_agree_and_accept_float64():
    rng = np.random.default_rng(3)
    x = _heavy_tailed(rng, 500, 9)
    one = StreamingStats(9)
    for frame in x:
        one.update(frame)
    many = StreamingStats(9)
    many.update_many(x[:123])
    many.update_many(x[123:].astype(np.float64))
    np.testing.assert_array_equal(one._state, many._state)


def test_missing_values_are_skipped_per_neuron():
    rng = np.random.default_rng(4)
    x = _heavy_tailed(rng, 2000, 12)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:, 3] = np.nan  # a neuron never seen
    x[100:400, 5] = np.nan  # a long gap
    x[0, :] = np.nan  # a frame missing entirely
    stats = StreamingStats(12)
    for frame in x:
        stats.update(frame)
    snap = stats.snapshot()
    want = reference_stats([x])
    _assert_stats_close(snap, want)
    ok = np.arange(12) != 3
    _assert_stats_close(NeuronStats(**{f: getattr(snap, f)[ok] for f in FIELDS}),
                        scipy_moments(x[:, ok]),
                        fields=("mean", "std", "skewness", "kurtosis"))
    assert snap.count[3] == 0 and np.isnan(snap.mean[3]) and np.isnan(snap.skewness[3])
    np.testing.assert_array_equal(snap.count, (~np.isnan(x)).sum(axis=0))


def test_epoch_boundaries_drop_lag1_pairs_but_not_moments():
    rng = np.random.default_rng(5)
    epochs = [_heavy_tailed(rng, 49, 6) for _ in range(40)]
    for e in epochs[::7]:
        e[rng.random(e.shape) < 0.2] = np.nan
    snap = stats_of_epochs(epochs, 6)
    _assert_stats_close(snap, reference_stats(epochs))
    glued = reference_stats([np.concatenate(epochs)])  # what you would get by wrongly gluing the trials
    assert not np.allclose(snap.lag1_autocorr, glued["lag1_autocorr"], rtol=1e-6)
    np.testing.assert_allclose(snap.skewness, glued["skewness"], rtol=1e-9)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("time_constant", [None, 300.0])
def test_merge_equals_one_pass(contiguous, time_constant):
    rng = np.random.default_rng(6)
    x = _heavy_tailed(rng, 1500, 10)
    x[rng.random(x.shape) < 0.05] = np.nan
    cuts = [0, 1, 400, 401, 1000, 1500]  # includes one-frame pieces
    pieces = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    one_pass = StreamingStats(10, time_constant_frames=time_constant)
    for piece in pieces:
        if not contiguous:
            one_pass.mark_epoch_boundary()
        one_pass.update_many(piece)

    merged = StreamingStats(10, time_constant_frames=time_constant)
    for piece in pieces:
        part = StreamingStats(10, time_constant_frames=time_constant)
        part.update_many(piece)
        merged.merge(part, contiguous=contiguous)
    assert merged.frames_seen == one_pass.frames_seen == 1500
    want = one_pass.snapshot()
    got = merged.snapshot()
    for name in FIELDS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-12, err_msg=name)
    # and merging keeps streaming correctly afterwards
    tail = _heavy_tailed(rng, 50, 10)
    one_pass.update_many(tail)
    merged.update_many(tail)
    for name in FIELDS:
        np.testing.assert_allclose(getattr(merged.snapshot(), name), getattr(one_pass.snapshot(), name),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


def test_merge_of_trials_matches_reference():
    rng = np.random.default_rng(7)
    epochs = [_heavy_tailed(rng, 30, 4) for _ in range(10)]
    total = StreamingStats(4)
    for e in epochs:
        part = StreamingStats(4)
        part.update_many(e)
        total.merge(part)  # default: an epoch boundary between
    _assert_stats_close(total.snapshot(), reference_stats(epochs))


def test_forgetting_matches_weighted_definitions():
    rng = np.random.default_rng(8)
    epochs = [_heavy_tailed(rng, 700, 8), _heavy_tailed(rng, 500, 8)]
    epochs[1][rng.random(epochs[1].shape) < 0.1] = np.nan
    stats = StreamingStats(8, time_constant_frames=250.0)
    for e in epochs:
        stats.mark_epoch_boundary()
        for frame in e:
            stats.update(frame)
    _assert_stats_close(stats.snapshot(), reference_stats(epochs, time_constant_frames=250.0), rtol=1e-8)
    # without missing values the total weight tends to 1 / (1 - exp(-1/tau)), about tau + 0.5
    full = StreamingStats(2, time_constant_frames=250.0)
    full.update_many(np.ones((5000, 2), dtype=np.float32))
    np.testing.assert_allclose(full.snapshot().count, 1 / (1 - np.exp(-1 / 250.0)), rtol=1e-6)


def test_forgetting_follows_a_change_the_exact_mode_averages_away():
    low = np.zeros((3000, 1), dtype=np.float32) + np.random.default_rng(9).standard_normal((3000, 1)).astype(np.float32)
    exact, forgetting = StreamingStats(1), StreamingStats(1, time_constant_frames=100)
    for stats in (exact, forgetting):
        stats.update_many(low)
        stats.update_many(low + 10.0)
    assert abs(forgetting.snapshot().mean[0] - 10.0) < 0.5
    assert abs(exact.snapshot().mean[0] - 5.0) < 0.5


def test_constant_and_short_traces_give_nan_like_scipy():
    x = np.zeros((50, 4), dtype=np.float32)
    x[:, 0] = 3.25  # constant
    x[:, 1] = np.nan
    x[0, 1] = 1.0  # a single value
    x[:, 2] = np.arange(50)  # fine
    x[:, 3] = np.arange(50) ** 2
    x[::2, 3] = np.nan  # values never in consecutive frames: no lag-1 pair
    stats = StreamingStats(4)
    stats.update_many(x)
    snap = stats.snapshot()
    assert np.isnan(snap.skewness[0]) and np.isnan(snap.kurtosis[0]) and snap.std[0] == 0
    assert snap.count[1] == 1 and np.isnan(snap.skewness[1]) and np.isnan(snap.lag1_autocorr[1])
    assert np.isfinite(snap.skewness[2]) and np.isfinite(snap.lag1_autocorr[2])
    assert np.isnan(snap.lag1_autocorr[3]) and np.isnan(snap.snr[3]) and np.isfinite(snap.skewness[3])
    want = scipy_moments(x)
    np.testing.assert_array_equal(np.isnan(snap.skewness), np.isnan(want["skewness"]))


def test_empty_accumulator_snapshot_is_all_nan():
    snap = StreamingStats(3).snapshot()
    assert (snap.count == 0).all()
    for name in FIELDS[1:]:
        assert np.isnan(getattr(snap, name)).all(), name


@pytest.mark.parametrize("bad_frame, message", [
    (np.zeros(5, dtype=np.float32), "shape"),
    (np.zeros((1, 6), dtype=np.float32), "shape"),
    (np.zeros(6, dtype=np.int32), "float32"),
    (np.zeros(6, dtype=np.float16), "float32"),
    ([0.0] * 6, "float32"),
    (None, "float32"),
    (np.array([0, 1, np.inf, 0, 0, 0], dtype=np.float32), "infinite"),
    (np.array([0, 1, 0, 0, 0, -np.inf], dtype=np.float64), "infinite"),
])
def test_bad_frames_are_rejected_without_touching_state(bad_frame, message):
    rng = np.random.default_rng(10)
    stats = StreamingStats(6)
    stats.update_many(_heavy_tailed(rng, 20, 6))
    before = stats._state.copy()
    with pytest.raises(StatsError, match=message):
        stats.update(bad_frame)
    np.testing.assert_array_equal(stats._state, before)
    assert stats.frames_seen == 20


@pytest.mark.parametrize("bad_frames, message", [
    (np.zeros((4, 5), dtype=np.float32), "shape"),
    (np.zeros(6, dtype=np.float32), "shape"),
    (np.zeros((4, 6), dtype=np.int64), "float32"),
    ("frames", "float32"),
])
def test_bad_batches_are_rejected(bad_frames, message):
    stats = StreamingStats(6)
    with pytest.raises(StatsError, match=message):
        stats.update_many(bad_frames)


def test_a_batch_with_inf_anywhere_changes_nothing():
    rng = np.random.default_rng(11)
    stats = StreamingStats(6)
    stats.update_many(_heavy_tailed(rng, 20, 6))
    before = stats._state.copy()
    batch = _heavy_tailed(rng, 100, 6)
    batch[97, 2] = np.inf  # only near the end: the first 97 frames must not have been added
    with pytest.raises(StatsError, match="infinite"):
        stats.update_many(batch)
    np.testing.assert_array_equal(stats._state, before)
    assert stats.frames_seen == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"n_neurons": 0}, "positive integer"),
    ({"n_neurons": -3}, "positive integer"),
    ({"n_neurons": 2.5}, "positive integer"),
    ({"n_neurons": True}, "positive integer"),
    ({"n_neurons": 4, "time_constant_frames": 0}, "positive"),
    ({"n_neurons": 4, "time_constant_frames": -5.0}, "positive"),
    ({"n_neurons": 4, "time_constant_frames": float("nan")}, "positive"),
    ({"n_neurons": 4, "time_constant_frames": float("inf")}, "positive"),
    ({"n_neurons": 4, "time_constant_frames": "soon"}, "number"),
])
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(StatsError, match=message):
        StreamingStats(**kwargs)


def test_bad_merges_are_rejected():
    a = StreamingStats(4)
    a.update(np.ones(4, dtype=np.float32))
    with pytest.raises(StatsError, match="neurons"):
        a.merge(StreamingStats(5))
    with pytest.raises(StatsError, match="time constants"):
        a.merge(StreamingStats(4, time_constant_frames=10))
    with pytest.raises(StatsError, match="itself"):
        a.merge(a)
    with pytest.raises(StatsError, match="StreamingStats"):
        a.merge("b")


def test_copy_and_reset():
    rng = np.random.default_rng(12)
    a = StreamingStats(5)
    a.update_many(_heavy_tailed(rng, 100, 5))
    b = a.copy()
    np.testing.assert_array_equal(a._state, b._state)
    b.update(np.ones(5, dtype=np.float32))
    assert a.frames_seen == 100 and b.frames_seen == 101
    a.reset()
    assert a.frames_seen == 0 and (a.snapshot().count == 0).all()


def test_per_frame_update_allocates_no_arrays():
    n = 4096
    rng = np.random.default_rng(13)
    frames = list(_heavy_tailed(rng, 16, n))
    stats = StreamingStats(n)
    for frame in frames:  # compile / load from cache, and pass the first-frame path
        stats.update(frame)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for j in range(2000):
            stats.update(frames[j % 16])
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024, "memory kept growing across updates"
    assert peak - before < 4 * n, f"an update allocated {peak - before} bytes (one frame is {4 * n})"


def test_scale_into_after_a_batch_update_matches_the_snapshot_without_allocating():
    rng = np.random.default_rng(14)
    x = _heavy_tailed(rng, 200, 6)
    x[:, 1] = 2.0  # constant: std 0 -> NaN
    x[150:, 2] = np.nan  # fewer values than min_count below
    stats = StreamingStats(6)
    stats.update_many(x)
    mean, std, inv_std = (np.empty(6, dtype=np.float32) for _ in range(3))
    stats.scale_into(mean, std, inv_std, min_count=151)
    snap = stats.snapshot()
    ready = np.array([True, False, False, True, True, True])
    np.testing.assert_allclose(mean, snap.mean, rtol=1e-6)  # the mean is written while a neuron warms up
    np.testing.assert_allclose(std[ready], snap.std[ready], rtol=1e-6)
    assert np.isnan(std[~ready]).all() and np.isnan(inv_std[~ready]).all()
    n = 4096  # wide enough that any temporary array of a frame would dwarf Python's call overhead
    wide = StreamingStats(n)
    wide.update_many(rng.standard_normal((40, n)).astype(np.float32))
    mean, std, inv_std = (np.empty(n, dtype=np.float32) for _ in range(3))
    wide.scale_into(mean, std, inv_std, min_count=20)  # compiled before measuring
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(100):
            wide.scale_into(mean, std, inv_std, min_count=20)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024, "memory kept growing across calls"
    assert peak - before < 4 * n, f"a call allocated {peak - before} bytes (one frame is {4 * n})"
    with pytest.raises(StatsError, match="std_out"):
        wide.scale_into(mean, np.empty(n, dtype=np.int32), inv_std, min_count=20)


def test_scale_into_is_the_snapshot_in_float32_with_nan_std_while_warming_up():
    rng = np.random.default_rng(4)
    stats = StreamingStats(6)
    frames = rng.standard_normal((40, 6)).astype(np.float32)
    frames[:30, 2] = np.nan  # neuron 2: 10 valid values
    frames[:, 5] = 1.5  # neuron 5: no variance
    for frame in frames:
        stats.update(frame)
    mean, std, inv_std = (np.empty(6, dtype=np.float32) for _ in range(3))
    stats.scale_into(mean, std, inv_std, min_count=20)
    snapshot = stats.snapshot()
    ready = [0, 1, 3, 4]
    assert np.allclose(mean, snapshot.mean, rtol=1e-6, atol=0)
    assert np.allclose(std[ready], snapshot.std[ready], rtol=1e-6, atol=0)
    assert np.array_equal(inv_std[ready], np.float32(1.0) / std[ready])
    assert np.isnan(std[[2, 5]]).all() and np.isnan(inv_std[[2, 5]]).all()
    with pytest.raises(StatsError, match="inv_std_out must be a float32 array"):
        stats.scale_into(mean, std, np.empty(6), min_count=20)
    with pytest.raises(StatsError, match="mean_out"):
        stats.scale_into(np.empty(5, dtype=np.float32), std, inv_std, min_count=20)
