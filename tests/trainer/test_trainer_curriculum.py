"""POYO-CAP's neuron curriculum in the trainer: predictable split, phases, restricted sampling, and a tiny
end-to-end run of every regime and of the latent masked objective."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer_pretrain import TINY  # noqa: E402

from rtcalm.data import Recording, RecordingMeta, save_recording
from trainer.config import TrainConfigError, parse_train_config
from trainer.curriculum import phase_at, total_steps, training_phases
from trainer.data import CropSampler, load_sessions
from trainer.pretrain import pretrain

N_REGULAR, N_SPARSE = 8, 6


def write_mixed_recordings(root: Path) -> Path:
    """Three mice, each recording with N_REGULAR Gaussian AR(1) neurons (skewness ~0) followed by
    N_SPARSE neurons of rare large calcium events (heavily skewed, far over POYO-CAP's thresholds)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, mouse in enumerate(["mouse-a", "mouse-b", "mouse-c"]):
        n_frames = 400
        x = np.zeros((n_frames, N_REGULAR + N_SPARSE), np.float32)
        events = np.zeros((n_frames, N_SPARSE), np.float32)
        for n in range(N_SPARSE):  # two events per sparse neuron
            events[rng.choice(np.arange(20, n_frames - 20), 2, replace=False), n] = 5.0
        for t in range(1, n_frames):
            x[t, :N_REGULAR] = 0.9 * x[t - 1, :N_REGULAR] + 0.3 * rng.normal(size=N_REGULAR)
            x[t, N_REGULAR:] = 0.85 * x[t - 1, N_REGULAR:] + events[t] + 0.01 * rng.normal(size=N_SPARSE)
        rec = Recording(dff=x, rate_hz=30.0, neuron_ids=np.arange(x.shape[1]),
                        meta=RecordingMeta(source=f"mixed {i}", format="test", mouse=mouse, session=f"s{i}"))
        save_recording(rec, root / f"{mouse}_s{i}.rtcalm.h5")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_mixed_recordings(tmp_path_factory.mktemp("mixed"))


def config(**transformer):
    d = copy.deepcopy(TINY)
    d["transformer"].update({"predictable_thresholds": "poyo-cap", **transformer})
    return parse_train_config(d)


def train_sessions(data_root):
    cfg = config()
    sessions, _ = load_sessions(data_root, cfg.data, log=lambda *_: None)
    return [s for s in sessions if s.mouse == "mouse-a"]


@pytest.mark.parametrize("regime, names, starts, steps", [
    ("mixed", ["all"], [0], 8),
    ("curriculum", ["predictable", "unpredictable"], [0, 4], 8),
    ("reverse", ["unpredictable", "predictable"], [0, 4], 8),
    ("unpredictable_only", ["unpredictable"], [0], 4),
])
def test_phases_of_each_regime(data_root, regime, names, starts, steps):
    cfg = config(neuron_curriculum=regime, first_phase_fraction=0.5)
    phases, split = training_phases(train_sessions(data_root), cfg.transformer)
    assert [p.name for p in phases] == names and [p.first_step for p in phases] == starts
    assert total_steps(cfg.transformer) == steps
    assert [phase_at(phases, step) for step in range(steps)] == [0] * starts[-1] + [len(phases) - 1] * (steps - starts[-1])
    if regime == "mixed":
        assert split is None and phases[0].neurons is None
        return
    assert split["method"] == "poyo-cap" and split["predictable"] == N_REGULAR
    by_name = {p.name: p.neurons[0].tolist() for p in phases}
    regular, sparse = list(range(N_REGULAR)), list(range(N_REGULAR, N_REGULAR + N_SPARSE))
    for name, neurons in by_name.items():
        assert neurons == (regular if name == "predictable" else sparse)


def test_sampler_draws_only_the_phase_neurons(data_root):
    sessions = train_sessions(data_root)
    sparse = [np.arange(N_REGULAR, N_REGULAR + N_SPARSE)]
    sampler = CropSampler(sessions, crop_frames=20, max_neurons=4, neurons=sparse)
    generator = torch.Generator().manual_seed(0)
    epoch = sessions[0].epochs[0]
    for _ in range(20):
        crop, _ = sampler.sample(2, generator)  # (2, 20, 4)
        # every sampled column is one of the sparse neurons' columns of the epoch
        columns = [next(n for n in range(epoch.shape[1]) if any(torch.equal(crop[0, :, c], epoch[s:s + 20, n])
                                                                 for s in range(epoch.shape[0] - 19)))
                   for c in range(crop.shape[2])]
        assert set(columns) <= set(sparse[0].tolist())
    with pytest.raises(Exception, match="usable neurons"):
        CropSampler(sessions, crop_frames=20, max_neurons=4, neurons=[np.array([], dtype=np.int64)])


@pytest.mark.parametrize("changes", [
    {"neuron_curriculum": "curriculum"}, {"neuron_curriculum": "reverse"},
    {"neuron_curriculum": "unpredictable_only"}, {"objective": "latent_masked"},
])
def test_tiny_runs_of_every_regime_and_objective(data_root, tmp_path, changes):
    lines = []
    metrics = pretrain(config(**changes), data_root, tmp_path / "run", progress=False, log=lines.append)
    assert metrics["transformer"]["steps"] == (4 if changes.get("neuron_curriculum") == "unpredictable_only" else 8)
    assert metrics["forecast_protocol"]["test"]["model"]["1"]["mse_ratio"] > 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    transformer = [r for r in log if r["stage"] == "transformer"]
    if "objective" in changes:
        assert "train_latent_l1" in transformer[-1] and "validation_next_code_ce" not in transformer[-1]
    else:
        assert any("neuron curriculum" in line and "predictable" in line for line in lines)


@pytest.mark.parametrize("edit, message", [
    ({"objective": "masked"}, "transformer.objective"),
    ({"neuron_curriculum": "predictable_first"}, "neuron_curriculum"),
    ({"first_phase_fraction": 1.0}, "first_phase_fraction"),
    ({"masked_fraction": 0}, "masked_fraction"),
    ({"latent_weight": -1}, "latent_weight"),
    ({"predictable_thresholds": "otsu"}, "predictable_thresholds"),
])
def test_bad_curriculum_and_objective_settings_are_refused(edit, message):
    with pytest.raises(TrainConfigError, match=message):
        config(**edit)
