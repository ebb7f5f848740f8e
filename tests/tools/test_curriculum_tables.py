"""tools/curriculum_experiment.py's statistics and its table in tools/results_tables.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def curriculum_experiment(tool):
    return tool("curriculum_experiment")


@pytest.fixture(scope="module")
def results_tables(tool):
    return tool("results_tables")


def test_mean_and_95_percent_interval_over_seeds(curriculum_experiment):
    summary = curriculum_experiment.mean_and_ci([1.0, 2.0, 3.0])
    # Student t with 2 degrees of freedom: 4.3027 x sd 1 / sqrt(3)
    assert summary["mean"] == 2.0 and summary["n"] == 3
    assert summary["ci95"] == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)


def test_each_row_is_a_config_change_of_the_base_and_the_table_renders(curriculum_experiment, results_tables, tmp_path):
    base = json.loads((Path(__file__).resolve().parents[2] / "configs" / "pretrain_tokens.json").read_text())
    config = curriculum_experiment.make_config(base, "mixed, latent masked", 2, 40)
    assert config["seed"] == 2 and config["name"] == "mixed-latent-masked-seed2"
    assert config["transformer"]["objective"] == "latent_masked" and config["transformer"]["steps"] == 40
    assert config["model"] == base["model"] and config["data"] == base["data"]
    runs = [{"row": row, "seed": seed, "forecast_mse_ratio": {"1": 0.8 + 0.01 * seed, "30": 0.9},
             "pooled_ar_mse_ratio": {"1": 0.86, "30": 0.85}, "direction_accuracy": 0.3 - 0.01 * seed,
             "linear_mean_response": 0.33, "chance": 0.12}
            for row in curriculum_experiment.ROWS for seed in (0, 1, 2)]
    document = {"seeds": [0, 1, 2], "transformer_steps": 40, "test_mice": ["m1"], "runs": runs,
                "rows": curriculum_experiment.summarise(runs)}
    lines = results_tables.curriculum_table(document, tmp_path / "curriculum.json")
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + len(curriculum_experiment.ROWS)
    assert "| mixed | latent masked | 0.8100 ± 0.0248 | 0.9000 ± 0.0000 | 0.290 ± 0.025 |" in table
