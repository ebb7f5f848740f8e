"""``python -m trainer baselines``: fits both learned baselines on a config's training mice."""

from __future__ import annotations

import json

import pytest
from test_trainer_pretrain import TINY, write_recordings

from rtcalm.model.baselines import load_baseline
from trainer.__main__ import main as trainer_main
from trainer.baselines import BaselineRecipe, fit_baseline
from trainer.config import parse_train_config
from trainer.data import load_sessions, split_by_mouse


def test_fits_both_baselines_on_the_training_mice_only(tmp_path):
    data_root = write_recordings(tmp_path / "data")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "baselines"
    assert trainer_main(["baselines", "--config", str(config), "--data-root", str(data_root), "--out", str(out),
                         "--steps", "5", "--no-progress"]) == 0
    summary = json.loads((out / "baselines.json").read_text())
    assert set(summary) == {"mlp", "poco"}
    for kind in ("mlp", "poco"):
        assert summary[kind]["train_mice"] == ["mouse-a"]  # mouse-b validates, mouse-c tests
        assert load_baseline(out / kind).config.kind == kind


def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert trainer_main(["baselines", "--config", str(config), "--kinds", "mlp,lstm"]) == 2
    assert "--kinds: choose from mlp, poco" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["mlp", "poco"])
def test_a_short_fit_lowers_the_loss(kind, tmp_path):
    """200 steps of the trainer's loop (trainer.steps.baseline_step): the copy-last-ratio loss falls
    (observed from about 1.9 to about 1.1 on three seeds)."""
    config = parse_train_config(TINY)
    sessions, _ = load_sessions(write_recordings(tmp_path / "data"), config.data, log=lambda *_: None)
    train, _, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    _, info = fit_baseline(kind, train, BaselineRecipe(steps=201, seed=0), 5, progress=False, context_frames=16,
                           hidden=24)
    assert [point["step"] for point in info["curve"]] == [0, 100, 200]
    assert info["curve"][-1]["loss"] < 0.8 * info["curve"][0]["loss"]
