"""The simulated visual cortex: movie properties and receptive-field ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.sim.visual_cortex import (
    CELL_TYPES,
    SCENES,
    VisualCortexConfig,
    firing_rate,
    gabor_filters,
    make_movie,
    make_visual_cortex,
    optimal_gratings,
    sample_receptive_fields,
    simulate_visual_cortex,
    stimulus_drive,
)

SMALL = dict(n_neurons=96, n_frames=1800, height=16, width=32, seed=3)


@pytest.fixture(scope="module")
def small():
    return make_visual_cortex(**SMALL)


def test_shapes_range_and_seed(small):
    recording, movie = small
    assert recording.dff.shape == (1800, 96) and recording.dff.dtype == np.float32
    assert movie.shape == (1800, 16, 32) and movie.dtype == np.float32
    assert movie.min() >= 0 and movie.max() <= 1
    again_rec, again_movie = make_visual_cortex(**SMALL)
    assert np.array_equal(again_rec.dff, recording.dff) and np.array_equal(again_movie, movie)
    other_rec, other_movie = make_visual_cortex(**{**SMALL, "seed": 4})
    assert not np.array_equal(other_movie, movie) and not np.array_equal(other_rec.dff, recording.dff)
    for name in ("rf_x", "rf_y", "rf_orientation_deg", "rf_spatial_frequency", "rf_sigma", "cell_type"):
        assert recording.neuron_info[name].shape == (96,)


def test_segments_cover_the_movie_and_scenes_move(small):
    recording, movie = small
    onsets = np.round(recording.trials["onset_s"] * recording.rate_hz).astype(int)
    lengths = np.round(recording.trials["duration_s"] * recording.rate_hz).astype(int)
    assert onsets[0] == 0 and np.array_equal(onsets[1:], (onsets + lengths)[:-1]) and (onsets + lengths)[-1] == 1800
    assert set(recording.trials["scene"]) <= set(range(len(SCENES)))
    # every segment is a moving picture, not a still
    for onset, length in zip(onsets, lengths, strict=True):
        segment = movie[onset:onset + length]
        assert np.abs(np.diff(segment, axis=0)).mean() > 1e-4
    # all scene types occur in a longer movie
    _, segments = make_movie(VisualCortexConfig(n_frames=6000, height=16, width=32, seed=0))
    assert {scene for _, _, scene in segments} == set(range(len(SCENES)))


def test_neurons_prefer_their_own_receptive_field():
    cfg = VisualCortexConfig(n_neurons=200, height=32, width=64, seed=5)
    rf = sample_receptive_fields(cfg)
    best = optimal_gratings(rf, 32, 64)  # (neurons, H, W)
    probes = []  # same grating rotated, and the cell's own Gabor patch moved far away
    for delta in (30.0, 60.0, 90.0):
        rotated = {**rf, "rf_orientation_deg": rf["rf_orientation_deg"] + delta}
        probes.append(optimal_gratings(rotated, 32, 64))
    moved = {**rf, "rf_x": (rf["rf_x"] + 32) % 64}
    patch = 0.5 + 0.5 * gabor_filters(rf, 32, 64) / np.abs(gabor_filters(rf, 32, 64)).max(axis=(1, 2), keepdims=True)
    patch_moved = 0.5 + 0.5 * gabor_filters(moved, 32, 64) / np.abs(gabor_filters(moved, 32, 64)).max(axis=(1, 2), keepdims=True)

    def own_rate(frames):  # each neuron's rate for its own probe image (frame i is neuron i's probe)
        return firing_rate(np.diag(stimulus_drive(frames, rf)), cfg)

    best_rate = own_rate(best)
    rotated_rates = np.stack([own_rate(p) for p in probes])
    assert np.all(best_rate[None] >= rotated_rates - 1e-6)
    # orthogonal gratings barely drive the cells
    assert np.median(rotated_rates[-1] - cfg.baseline_rate_hz) < 0.1 * np.median(best_rate - cfg.baseline_rate_hz)
    # a patch on the receptive field drives the cell; the same patch half a screen (> 5 sigma) away does not
    small_rf = rf["rf_sigma"] < 6
    assert small_rf.sum() > 50
    assert np.mean((own_rate(patch) > 3 * own_rate(patch_moved))[small_rf]) > 0.95


def test_complex_cells_are_phase_invariant_and_simple_cells_are_not():
    cfg = VisualCortexConfig(n_neurons=200, height=32, width=64, seed=6)
    rf = sample_receptive_fields(cfg)
    rates = []
    for shift in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        frames = optimal_gratings({**rf, "rf_phase": rf["rf_phase"] + shift}, 32, 64)
        rates.append(firing_rate(np.diag(stimulus_drive(frames, rf)), cfg))
    rates = np.stack(rates)  # (phases, neurons)
    modulation = (rates.max(0) - rates.min(0)) / (rates.max(0) - cfg.baseline_rate_hz)
    is_complex = rf["cell_type"] == CELL_TYPES.index("complex")
    assert is_complex.sum() > 40 and (~is_complex).sum() > 40
    assert np.median(modulation[is_complex]) < 0.2 and np.median(modulation[~is_complex]) > 0.9


def test_calcium_traces_reveal_preferred_orientation():
    # Show drifting gratings (8 orientations x 3 spatial frequencies, 2 s on, 1 s gray) to the simulated
    # cortex and read the preferred orientation back from ΔF/F alone.
    height, width, rate = 16, 32, 30.0
    yy, xx = np.mgrid[0:height, 0:width]
    orientations = np.arange(8) * 22.5
    blocks, labels = [], []
    for _repeat in range(2):
        for sf in (0.05, 0.09, 0.16):
            for ori in orientations:
                t = np.arange(60)[:, None, None] / rate
                proj = xx * np.cos(np.deg2rad(ori)) + yy * np.sin(np.deg2rad(ori))
                blocks.append(0.5 + 0.5 * np.cos(2 * np.pi * (sf * proj[None] - 2.0 * t)))
                blocks.append(np.full((30, height, width), 0.5))
                labels += [ori] * 60 + [np.nan] * 30
    movie = np.concatenate(blocks).astype(np.float32)
    labels = np.array(labels)
    recording = simulate_visual_cortex(movie, n_neurons=150, seed=7)
    dff = recording.dff
    # mean ΔF/F during each orientation, 5 frames after onset to account for the calcium delay
    shifted = np.roll(labels, 5)
    tuning = np.stack([dff[shifted == ori].mean(axis=0) for ori in orientations])  # (8, neurons)
    estimate = orientations[np.argmax(tuning, axis=0)]
    truth = recording.neuron_info["rf_orientation_deg"]
    error = np.abs((estimate - truth + 90) % 180 - 90)
    responsive = (tuning.max(0) - tuning.min(0)) > 0.02  # ΔF/F
    assert responsive.sum() > 100
    assert np.mean(error[responsive] <= 22.5) > 0.85


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="rise_s"):
        make_visual_cortex(n_frames=100, n_neurons=4, rise_s=1.0, decay_s=0.5)
    with pytest.raises(ValueError, match="Nyquist"):
        make_visual_cortex(n_frames=100, n_neurons=4, spatial_frequency_max=0.6)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        simulate_visual_cortex(np.full((10, 8, 8), 2.0, dtype=np.float32), n_neurons=4)
    with pytest.raises(ValueError, match="frames"):
        simulate_visual_cortex(np.zeros((8, 8), dtype=np.float32), n_neurons=4)
