"""OnlineDff against an offline computation of the same definition, plus bad input."""

from __future__ import annotations

import numpy as np
import pytest
from stats_reference import reference_dff

from rtcalm.sim import make_synthetic
from rtcalm.stats import OnlineDff, StatsError


def _raw(seed, frames, neurons):
    rng = np.random.default_rng(seed)
    drift = np.linspace(0.0, 30.0, frames)[:, None]  # slow bleaching-like drift
    transients = (rng.random((frames, neurons)) < 0.03) * rng.exponential(80.0, (frames, neurons))
    f = 200.0 + drift + transients + 5.0 * rng.standard_normal((frames, neurons))
    fneu = 80.0 + 3.0 * rng.standard_normal((frames, neurons))
    return f.astype(np.float32), fneu.astype(np.float32)


CONFIGS = [
    dict(neuropil_coef=0.7, block_frames=5, window_frames=40, percentile=8.0, min_baseline=0.0),
    dict(neuropil_coef=0.0, block_frames=1, window_frames=7, percentile=50.0, min_baseline=0.0),
    dict(neuropil_coef=1.0, block_frames=7, window_frames=7, percentile=0.0, min_baseline=10.0),
    dict(neuropil_coef=0.5, block_frames=4, window_frames=30, percentile=100.0, min_baseline=0.0),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_offline_definition(config):
    f, fneu = _raw(0, 300, 11)
    f[np.random.default_rng(1).random(f.shape) < 0.05] = np.nan  # missing values
    f[20:60, 2] = np.nan  # whole blocks missing
    dff = OnlineDff(11, **config)
    got = np.stack([dff.update(f[t], fneu[t]).copy() for t in range(f.shape[0])])
    want = reference_dff(f, fneu, **config)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=2e-6)  # float32 output


def test_without_neuropil_and_in_batches():
    f, _ = _raw(2, 200, 5)
    config = dict(neuropil_coef=0.7, block_frames=3, window_frames=30, percentile=10.0, min_baseline=0.0)
    dff = OnlineDff(5, **config)
    got = np.concatenate([dff.update_many(f[:77]), dff.update_many(f[77:].astype(np.float64))])
    want = reference_dff(f, None, **config)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert dff.frames_seen == 200


def test_non_positive_baseline_gives_nan_not_a_crash():
    f = np.full((60, 2), 50.0, dtype=np.float32)
    fneu = np.full((60, 2), 100.0, dtype=np.float32)  # F - 0.7 * Fneu = -20 for neuron 0
    fneu[:, 1] = 0.0
    dff = OnlineDff(2, block_frames=5, window_frames=20)
    out = dff.update_many(f, fneu)
    assert np.isnan(out[:, 0]).all()
    assert np.isnan(out[:6, 1]).all() and np.allclose(out[6:, 1], 0.0)  # first block: 5 + 1 % 5 frames


def test_warm_up_and_staggered_blocks():
    block = 4
    dff = OnlineDff(8, block_frames=block, window_frames=40)
    out = dff.update_many(np.full((20, 8), 10.0, dtype=np.float32))
    first_valid = [int(np.argmax(~np.isnan(out[:, i]))) for i in range(8)]
    assert first_valid == [block + i % block for i in range(8)]  # each neuron's longer first block
    assert dff.lag_frames["first_baseline_after"] == 2 * block - 1


def test_recovers_synthetic_dff_from_raw_fluorescence():
    """Synthetic raw F = F0 (1 + dF/F) + 0.7 Fneu. For sparse cells, quiet most of the time, the low
    percentile is F0 itself and the true dF/F comes back; for densely active cells it sits above F0
    (a known property of percentile baselines), so only the shape comes back. Subtracting the
    neuropil helps everywhere."""
    rec, raw, neuropil = make_synthetic(n_neurons=32, n_frames=3000, seed=4, return_raw=True)
    config = dict(block_frames=30, window_frames=900, percentile=8.0)
    out = OnlineDff(32, neuropil_coef=0.7, **config).update_many(raw, neuropil)
    no_subtraction = OnlineDff(32, neuropil_coef=0.0, **config).update_many(raw, neuropil)
    settled = slice(900, None)
    truth = rec.dff[settled]
    r = np.array([np.corrcoef(out[settled, i], truth[:, i])[0, 1] for i in range(32)])
    r_raw = np.array([np.corrcoef(no_subtraction[settled, i], truth[:, i])[0, 1] for i in range(32)])
    sparse = rec.neuron_info["cell_class"] == 2
    assert sparse.sum() >= 5
    assert (r[sparse] > 0.99).all()
    np.testing.assert_allclose(np.median(out[settled][:, sparse] - truth[:, sparse], axis=0), 0.0, atol=0.03)
    assert (r > 0.85).all()
    assert r.mean() > r_raw.mean()


def test_memory_and_lag_are_reported():
    dff = OnlineDff(4096)  # defaults: 30-frame blocks, 1800-frame window, 8th percentile
    assert dff.window_blocks == 60
    assert dff.memory_bytes >= 2 * 4096 * 60 * 8
    assert dff.lag_frames["step_down"] < dff.lag_frames["step_up"]


@pytest.mark.parametrize("kwargs, message", [
    ({"n_neurons": 0}, "positive integer"),
    ({"n_neurons": 3, "block_frames": 0}, "positive integer"),
    ({"n_neurons": 3, "block_frames": 2.5}, "positive integer"),
    ({"n_neurons": 3, "window_frames": 5, "block_frames": 10}, "at least block_frames"),
    ({"n_neurons": 3, "percentile": 101}, "between 0 and 100"),
    ({"n_neurons": 3, "percentile": -1}, "between 0 and 100"),
    ({"n_neurons": 3, "neuropil_coef": -0.1}, ">= 0"),
    ({"n_neurons": 3, "neuropil_coef": float("nan")}, "finite"),
    ({"n_neurons": 3, "min_baseline": "low"}, "number"),
])
def test_bad_configuration(kwargs, message):
    with pytest.raises(StatsError, match=message):
        OnlineDff(**kwargs)


def test_bad_frames_change_nothing():
    f, fneu = _raw(5, 50, 3)
    dff = OnlineDff(3, block_frames=2, window_frames=10)
    dff.update_many(f, fneu)
    before = (dff._block_sum.copy(), dff._sorted.copy(), dff.baseline, dff.frames_seen)
    bad_inputs = [
        (np.zeros(4, dtype=np.float32), None, "shape"),
        (np.zeros(3, dtype=np.int16), None, "float32"),
        ([1.0, 2.0, 3.0], None, "float32"),
        (np.zeros(3, dtype=np.float32), np.zeros(2, dtype=np.float32), "shape"),
        (np.array([1.0, np.inf, 1.0], dtype=np.float32), None, "infinite"),
        (np.ones(3, dtype=np.float32), np.array([1.0, 1.0, -np.inf], dtype=np.float32), "infinite"),
    ]
    for frame, neuropil, message in bad_inputs:
        with pytest.raises(StatsError, match=message):
            dff.update(frame, neuropil)
    with pytest.raises(StatsError, match="infinite"):
        dff.update_many(np.array([[1.0, 1.0, 1.0], [1.0, np.inf, 1.0]], dtype=np.float32))
    with pytest.raises(StatsError, match="shape"):
        dff.update_many(f, fneu[:10])
    after = (dff._block_sum, dff._sorted, dff.baseline, dff.frames_seen)
    for a, b in zip(before[:3], after[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert before[3] == after[3]
