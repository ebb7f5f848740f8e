"""tools/curriculum_experiment.py's statistics and its configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def curriculum_experiment(tool):
    return tool("curriculum_experiment")


def test_mean_and_95_percent_interval_over_seeds(curriculum_experiment):
    summary = curriculum_experiment.mean_and_ci([1.0, 2.0, 3.0])
    # Student t with 2 degrees of freedom: 4.3027 x sd 1 / sqrt(3)
    assert summary["mean"] == 2.0 and summary["n"] == 3
    assert summary["ci95"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)


def test_each_row_is_a_config_change_of_the_base_and_summarises(curriculum_experiment):
    base = json.loads((Path(__file__).resolve().parents[2] / "configs" / "pretrain_tokens.json").read_text())
    config = curriculum_experiment.make_config(base, "mixed, latent masked", 2, 40)
    assert config["seed"] == 2 and config["name"] == "mixed-latent-masked-seed2"
    assert config["transformer"]["objective"] == "latent_masked" and config["transformer"]["steps"] == 40
    assert config["model"] == base["model"] and config["data"] == base["data"]
    runs = [{"row": row, "seed": seed, "forecast_mse_ratio": {"1": 0.8 + 0.01 * seed, "30": 0.9},
             "pooled_ar_mse_ratio": {"1": 0.86, "30": 0.85}, "direction_accuracy": 0.3 - 0.01 * seed,
             "linear_mean_response": 0.33, "chance": 0.12}
            for row in curriculum_experiment.ROWS for seed in (0, 1, 2)]
    mixed_latent = curriculum_experiment.summarise(runs)["mixed, latent masked"]
    assert mixed_latent["forecast_mse_ratio"]["1"]["mean"] == pytest.approx(0.81)
    assert mixed_latent["forecast_mse_ratio"]["1"]["ci95"] == pytest.approx(0.0248, abs=1e-4)
    assert mixed_latent["direction_accuracy"]["mean"] == pytest.approx(0.29)
