"""The synthetic generator's statistics match its ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kurtosis, skew

from rtcalm.sim import make_synthetic
from rtcalm.sim.synthetic import CELL_CLASSES


@pytest.fixture(scope="module")
def recording():
    return make_synthetic(n_neurons=400, n_frames=12000, seed=11)


def test_shapes_and_seed(recording):
    assert recording.dff.shape == (12000, 400) and recording.dff.dtype == np.float32
    again = make_synthetic(n_neurons=400, n_frames=12000, seed=11)
    assert np.array_equal(again.dff, recording.dff)
    other = make_synthetic(n_neurons=400, n_frames=12000, seed=12)
    assert not np.array_equal(other.dff, recording.dff)


def test_sparse_cells_are_heavy_tailed(recording):
    cls = recording.neuron_info["cell_class"]
    kurt = kurtosis(recording.dff, axis=0)
    skewness = skew(recording.dff, axis=0)
    gaussian, regular, sparse = (cls == CELL_CLASSES.index(name) for name in CELL_CLASSES)
    assert gaussian.sum() > 50 and regular.sum() > 30 and sparse.sum() > 50
    assert np.median(kurt[sparse]) > 5 * max(np.median(kurt[gaussian]), np.median(kurt[regular]), 1.0)
    assert np.median(skewness[sparse]) > 2 and abs(np.median(skewness[gaussian])) < 1
    # POYO-CAP's thresholds split the classes the right way round for most cells
    predictable = (skewness <= 3.51) & (kurt <= 22.62)
    assert predictable[gaussian | regular].mean() > 0.9
    assert predictable[sparse].mean() < predictable[gaussian | regular].mean() - 0.3


def test_tuned_cells_prefer_their_direction(recording):
    rate = recording.rate_hz
    onsets = np.round(recording.trials["onset_s"] * rate).astype(int)
    duration = int(round(recording.trials["duration_s"][0] * rate))
    directions = recording.trials["direction_deg"]
    responses = np.stack([recording.dff[o:o + duration].mean(axis=0) for o in onsets])  # (trials, neurons)
    grid = np.unique(directions)
    tuning_curves = np.stack([responses[directions == d].mean(axis=0) for d in grid])  # (directions, neurons)
    preferred = recording.neuron_info["preferred_direction_deg"]
    strength = recording.neuron_info["tuning_strength"]
    strong = np.isfinite(preferred) & (strength > 1.0) & (recording.neuron_info["cell_class"] == 0)
    best = grid[np.argmax(tuning_curves[:, strong], axis=0)]
    error = np.abs((best - preferred[strong] + 180) % 360 - 180)
    assert strong.sum() > 20 and np.mean(error <= 45) > 0.8
    untuned = ~np.isfinite(preferred) & (recording.neuron_info["cell_class"] == 0)
    modulation = tuning_curves.max(axis=0) - tuning_curves.min(axis=0)
    assert np.median(modulation[strong]) > 3 * np.median(modulation[untuned])


def test_population_dynamics_are_shared(recording):
    # Dense cells share latent inputs: their pairwise correlations are far from zero on average.
    dense = recording.dff[:, recording.neuron_info["cell_class"] == 0]
    corr = np.corrcoef(dense.T)
    off_diagonal = np.abs(corr[~np.eye(corr.shape[0], dtype=bool)])
    assert off_diagonal.mean() > 0.1


def test_running_modulates_activity(recording):
    speed = recording.continuous_labels["running_speed"]
    assert (speed >= 0).all() and speed.max() > 5
    gain = recording.neuron_info["running_gain"]
    dense = recording.neuron_info["cell_class"] == 0
    corr = np.array([np.corrcoef(speed, recording.dff[:, i])[0, 1] for i in np.flatnonzero(dense)])
    assert np.corrcoef(gain[dense], corr)[0, 1] > 0.3


def test_raw_fluorescence_inverts_to_dff():
    rec, raw, neuropil = make_synthetic(n_neurons=8, n_frames=500, seed=2, return_raw=True)
    r = 0.7
    corrected = raw - r * neuropil
    f0 = corrected.mean(axis=0) / (1.0 + rec.dff.mean(axis=0))
    assert np.allclose((corrected - f0) / f0, rec.dff, atol=1e-4)


def test_bad_config():
    with pytest.raises(ValueError):
        make_synthetic(n_neurons=0)
    with pytest.raises(ValueError):
        make_synthetic(fraction_gaussian=0.8, fraction_regular=0.5)
