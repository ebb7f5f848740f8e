"""``python -m trainer baselines``: fits both learned baselines on a config's training mice."""

from __future__ import annotations

import json

from test_trainer_pretrain import TINY, write_recordings

from rtcalm.model.baselines import load_baseline
from trainer.__main__ import main as trainer_main


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
