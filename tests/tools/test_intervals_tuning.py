"""tools/intervals_tuning.py: the per-neuron variant is one OnlineIntervals per neuron, and the pooled
and per-neuron coverages are what they say."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.eval.intervals import interval_scores


@pytest.fixture(scope="module")
def intervals_tuning(tool):
    return tool("intervals_tuning")


def _data(n_frames=700, n_neurons=6, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n_frames, n_neurons)) * rng.uniform(0.5, 2.0, n_neurons)).astype(np.float32)
    return {"z": z, "model": np.zeros((n_frames, n_neurons, 30), np.float32), "std": np.ones(n_neurons)}


def test_per_neuron_variant_is_one_object_per_neuron(intervals_tuning):
    data = _data()
    sums = intervals_tuning.per_neuron_scores(data, data["model"])
    single = interval_scores(data["z"][:, [2]], np.ascontiguousarray(data["model"][:, [2]]), data["std"][[2]],
                             intervals_tuning.LEVELS, intervals_tuning.HORIZONS)
    assert sums[0.8][1]["scored"] == data["z"].shape[1] * single[0.8][1]["scored"]
    shared = interval_scores(data["z"], data["model"], data["std"], intervals_tuning.LEVELS, intervals_tuning.HORIZONS)
    assert sums[0.95][5]["covered"] != shared[0.95][5]["covered"]  # a different method, not a copy


def test_pooled_and_neuron_coverage_agree(intervals_tuning):
    data = _data(seed=1)
    sums = interval_scores(data["z"], data["model"], data["std"], intervals_tuning.LEVELS, intervals_tuning.HORIZONS)
    pooled = intervals_tuning.pooled([sums])
    per_neuron, smallest_ratio = intervals_tuning.neuron_coverage(data["z"], data["model"])
    for key, values in per_neuron.items():
        assert values.shape == (6,) and values.mean() == pytest.approx(pooled[key][0], abs=1e-9)
    assert smallest_ratio > 1.0
