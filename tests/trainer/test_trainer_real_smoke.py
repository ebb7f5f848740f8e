"""The default recipe, cut short (configs/pretrain_smoke.json), on the real recordings: what CI can afford
of `python -m trainer pretrain --config configs/pretrain_default.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.__main__ import main as trainer_main

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_smoke_recipe_trains_and_reports_on_held_out_mice(real_data_dir, tmp_path):
    out = tmp_path / "smoke"
    assert trainer_main(["pretrain", "--config", str(REPO / "configs" / "pretrain_smoke.json"),
                         "--data-root", str(real_data_dir), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["test"]["mice"] == ["511510667", "511510989"]
    test = metrics["forecast_protocol"]["test"]
    # even 200 per-neuron steps beat copy-last one frame ahead on the held-out mice
    assert test["model"]["1"]["mse_ratio"] < 0.9
    assert (out / "checkpoints" / "best" / "README.md").is_file()
