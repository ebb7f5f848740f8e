"""Thresholds (knee / POYO-CAP preset), fallbacks, and the predictable split."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.sim import make_synthetic
from rtcalm.stats import (
    POYO_CAP,
    StatsError,
    choose_thresholds,
    is_predictable,
    line_table,
    select_predictable,
    sorted_knee,
    stats_of_recording,
)


def _hockey_stick(n_flat=80, n_tail=20, seed=0):
    """Values whose sorted curve is flat (around 1) for n_flat points, then climbs steeply."""
    rng = np.random.default_rng(seed)
    flat = 1.0 + 0.05 * rng.random(n_flat)
    tail = 1.05 + np.linspace(1.0, 40.0, n_tail)
    values = np.concatenate([flat, tail])
    return rng.permutation(values), float(np.sort(flat)[-1])


def test_knee_sits_where_the_sorted_curve_turns_up():
    values, last_flat = _hockey_stick()
    knee = sorted_knee(values)
    assert knee.reason is None
    assert last_flat - 0.05 <= knee.value <= 3.0  # at the corner, not in the tail
    assert np.mean(values <= knee.value) == pytest.approx(0.8, abs=0.03)


def test_knee_ignores_nan_and_order():
    values, _ = _hockey_stick()
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert sorted_knee(with_nan).value == sorted_knee(np.sort(values)[::-1]).value


@pytest.mark.parametrize("values, reason", [
    ([1.0, 2.0, 30.0], "too few values"),
    (np.full(50, 2.5), "flat distribution"),
    ([np.nan] * 40, "too few values"),
])
def test_knee_degenerate_inputs_report_why(values, reason):
    knee = sorted_knee(values)
    assert knee.value is None and reason in knee.reason


def test_degenerate_knee_falls_back_to_poyo_cap_and_says_so():
    skew = np.full(30, 0.5)  # flat: no knee
    kurt, _ = _hockey_stick(24, 6)
    thresholds = choose_thresholds(skew, kurt, method="knee")
    assert thresholds.skewness.value == 3.51 and thresholds.skewness.method == "poyo-cap preset"
    assert "flat distribution" in thresholds.skewness.fallback
    assert thresholds.kurtosis.method == "knee over neurons" and thresholds.kurtosis.fallback is None
    assert "no Cre-line metadata" in thresholds.notes[0]

    few = choose_thresholds([0.1, 5.0], [0.2, 40.0], method="knee")
    assert "too few values" in few.skewness.fallback and "too few values" in few.kurtosis.fallback


def test_poyo_cap_preset():
    thresholds = choose_thresholds([0.0, 1.0], [0.0, 1.0], method="poyo-cap")
    assert thresholds is POYO_CAP
    assert (thresholds.skewness.value, thresholds.kurtosis.value) == (3.51, 22.62)
    skew = np.array([3.51, 3.52, 0.0, np.nan, 1.0])
    kurt = np.array([22.62, 1.0, 22.63, 1.0, np.nan])
    np.testing.assert_array_equal(is_predictable(skew, kurt, POYO_CAP), [True, False, False, False, False])


def test_knee_over_cre_line_means_when_enough_lines_are_known():
    rng = np.random.default_rng(1)
    line_means = {"A": 1.0, "B": 1.2, "C": 1.4, "D": 1.5, "E": 6.0, "F": 9.0}  # kurtosis = 5 x skewness
    lines = [name for name in line_means for _ in range(20)]
    skew = np.array([line_means[name] for name in lines]) + 0.01 * rng.standard_normal(len(lines))
    kurt = 5 * skew
    split = select_predictable(skew, kurt, method="knee", cre_lines=lines)
    assert split.thresholds.skewness.method == "knee over cre lines"
    assert not split.thresholds.notes
    assert 1.4 <= split.thresholds.skewness.value <= 1.6
    assert [row["predictable"] for row in split.lines] == [True, True, True, True, False, False]
    # neurons are split by the same thresholds: lines A-C in, E-F out, line D (the knee) straddles it
    labels = np.array(lines)
    assert split.predictable[np.isin(labels, ["A", "B", "C"])].all()
    assert not split.predictable[np.isin(labels, ["E", "F"])].any()

    too_few = select_predictable(skew, kurt, cre_lines=lines, min_lines=7)
    assert too_few.thresholds.skewness.method == "knee over neurons"
    assert "only 6 Cre lines known (< 7)" in too_few.thresholds.notes[0]
    forced = select_predictable(skew, kurt, cre_lines=lines, knee_over="neurons")
    assert forced.thresholds.skewness.method == "knee over neurons"


def test_line_table_skips_unknown_lines_and_undefined_neurons():
    table = line_table([1.0, 2.0, np.nan, 4.0], [1.0, 2.0, 3.0, 4.0], ["x", "x", "x", None])
    assert table == [{"cre_line": "x", "neurons": 2, "mean_skewness": 1.5, "mean_kurtosis": 1.5}]


def test_undefined_statistics_are_never_predictable():
    split = select_predictable([np.nan, 0.1, 0.2], [1.0, np.nan, 0.3], method="poyo-cap")
    np.testing.assert_array_equal(split.predictable, [False, False, True])
    np.testing.assert_array_equal(split.undefined, [True, True, False])
    assert split.summary() == {"neurons": 3, "predictable": 1, "unpredictable": 2, "undefined": 2,
                               "fraction_predictable": 1 / 3}


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "elbow"}, "unknown threshold method"),
    ({"knee_over": "mice"}, "unknown knee_over"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(StatsError, match=message):
        choose_thresholds([1.0, 2.0], [1.0, 2.0], **kwargs)


@pytest.mark.parametrize("skew, kurt", [([1.0, 2.0], [1.0]), ([[1.0]], [[1.0]]), (["a"], ["b"])])
def test_bad_arrays(skew, kurt):
    with pytest.raises(StatsError):
        choose_thresholds(skew, kurt)


def test_bad_cre_line_count():
    with pytest.raises(StatsError, match="labels"):
        line_table([1.0, 2.0], [1.0, 2.0], ["a"])


def test_sparse_synthetic_cells_are_the_unpredictable_ones():
    rec = make_synthetic(n_neurons=200, n_frames=6000, seed=3)
    stats = stats_of_recording(rec)
    sparse = rec.neuron_info["cell_class"] == 2
    assert sparse.any() and (~sparse).any()
    for method in ("knee", "poyo-cap"):
        split = select_predictable(stats.skewness, stats.kurtosis, method=method)
        agreement = np.mean(split.predictable == ~sparse)
        assert agreement > 0.9, (method, agreement)


@pytest.mark.parametrize("time_constant", [None, 100.0])
def test_the_in_place_mask_is_is_predictable_of_the_snapshot(time_constant):
    """StreamingStats.shape_mask_into (what the daemon runs after a prediction) equals the snapshot's
    statistics through is_predictable, for skewed, Gaussian, constant and gappy neurons, at several
    thresholds, into bool and uint8 masks."""
    from rtcalm.stats.moments import StreamingStats
    from rtcalm.stats.selection import POYO_CAP, Threshold, Thresholds, is_predictable

    rng = np.random.default_rng(3)
    n = 200
    frames = rng.standard_normal((400, n)).astype(np.float32)
    frames[:, :60] = np.exp(frames[:, :60] * rng.uniform(0.1, 2.0, 60)).astype(np.float32)  # skewed
    frames[:, 60:65] = 1.0  # no variance: never predictable
    frames[::5, 70:80] = np.nan
    frames[:, 80] = np.nan  # no values at all
    stats = StreamingStats(n, time_constant_frames=time_constant)
    for frame in frames:
        stats.update(frame)
    snapshot = stats.snapshot()
    for skewness_max, kurtosis_max in ((POYO_CAP.skewness.value, POYO_CAP.kurtosis.value), (0.5, 1.0), (5.0, 50.0)):
        expected = (snapshot.skewness <= skewness_max) & (snapshot.kurtosis <= kurtosis_max)
        for dtype in (np.bool_, np.uint8):
            mask = np.full(n, 7 if dtype == np.uint8 else True, dtype=dtype)
            assert stats.shape_mask_into(skewness_max, kurtosis_max, mask) == expected.sum()
            assert np.array_equal(mask.astype(bool), expected)
    given = Thresholds(Threshold(5.0, "given"), Threshold(50.0, "given"), requested="knee")
    assert np.array_equal(mask.astype(bool), is_predictable(snapshot.skewness, snapshot.kurtosis, given))
    assert not mask[60:65].any() and not mask[80]


def test_the_in_place_mask_refuses_a_wrong_buffer():
    from rtcalm.stats.errors import StatsError
    from rtcalm.stats.moments import StreamingStats

    stats = StreamingStats(4)
    for bad in (np.zeros(4, np.float32), np.zeros(5, np.bool_), [False] * 4):
        with pytest.raises(StatsError, match="mask must be a bool or uint8 array of shape"):
            stats.shape_mask_into(1.0, 1.0, bad)
