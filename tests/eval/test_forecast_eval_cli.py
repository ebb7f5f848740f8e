"""`rtcalm forecast-eval` end to end with a small random checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtcalm.data import save_recording
from rtcalm.eval.forecast import first_test_frame, fit_pooled_ar, model_forecaster
from rtcalm.model import Calm, CalmConfig
from rtcalm.model.checkpoint import save_checkpoint
from rtcalm.sim import make_synthetic

SMALL = CalmConfig(d_model=16, n_layers=2, n_heads=2, mlp_hidden=32, attention_window_frames=8, n_latents=4,
                   token_window_frames=4, codebook_size=32, code_dim=4, tokenizer_hidden=16,
                   forecast_horizon_frames=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Calm(SMALL).eval()
    ar = fit_pooled_ar([make_synthetic(n_neurons=16, n_frames=600, seed=9).dff], order=8, horizon=10)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m", {"pooled_ar": ar.to_dict()})


@pytest.fixture(scope="module")
def recording_file(tmp_path_factory):
    return save_recording(make_synthetic(n_neurons=16, n_frames=400, seed=1),
                          tmp_path_factory.mktemp("rec") / "syn.rtcalm.h5")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rtcalm", "forecast-eval", *map(str, args)],
                          capture_output=True, text=True)


def test_json_document(checkpoint, recording_file):
    result = _cli(recording_file, "--model", checkpoint, "--horizons", "1,5,10", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["horizons"] == [1, 5, 10] and doc["files"] == [str(recording_file)]
    assert set(doc["model"]) == {"1", "5", "10"} and set(doc["model"]["1"]) == {"mse_ratio", "pearson"}
    assert set(doc["baselines"]) == {"copy_last", "context_mean", "pooled_ar", "mlp", "poco"}
    assert doc["baselines"]["copy_last"]["5"]["mse_ratio"] == pytest.approx(1.0)
    assert doc["context"] == SMALL.receptive_field_frames


def test_streaming_pass_equals_per_time_windows():
    """With context >= receptive field, the chunked forward pass gives the per-t windowed forecasts."""
    torch.manual_seed(1)
    model = Calm(SMALL).eval()
    with torch.no_grad():  # an untrained model barely depends on its input; make it depend strongly
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    z = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    times = np.arange(first_test_frame(200), 190)
    rf = SMALL.receptive_field_frames
    streamed = model_forecaster(model, chunk_frames=16)(z, times, rf)
    windowed = model_forecaster(model, chunk_frames=16)
    # the per-t path with a much shorter context sees strictly less, so it must differ
    shorter = windowed(z, times, SMALL.token_window_frames)
    exact = np.stack([model(torch.from_numpy(z[t - rf + 1:t + 1])[None]).forecast[0, -1].detach().numpy()
                      for t in times])
    assert np.allclose(streamed, exact, atol=1e-5)
    assert not np.allclose(shorter, exact, atol=1e-5)


def test_bad_arguments(checkpoint, recording_file, tmp_path):
    for args, message in [(("--horizons", "a,b"), "comma-separated"), (("--horizons", "0"), "positive"),
                          (("--context", "0"), "positive integer"), (("--horizons", "40"), "forecasts 10 frames")]:
        result = _cli(recording_file, "--model", checkpoint, *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    missing = _cli(recording_file, "--model", tmp_path / "nope")
    assert missing.returncode == 2 and "no such checkpoint" in missing.stderr


@pytest.mark.real_data
def test_trial_structured_file_is_refused(checkpoint, grating_files):
    result = _cli(grating_files[0], "--model", checkpoint, "--horizons", "1,5")
    assert result.returncode == 2 and "trial-structured" in result.stderr


def test_intervals_in_the_json_and_the_table(checkpoint, recording_file):
    result = _cli(recording_file, "--model", checkpoint, "--horizons", "1,10", "--intervals", "0.8,0.95", "--json")
    assert result.returncode == 0, result.stderr
    intervals = json.loads(result.stdout)["intervals"]
    assert intervals["levels"] == [0.8, 0.95] and intervals["burn_in_frames"] == 300
    for level in ("0.8", "0.95"):
        entry = intervals[level]
        assert {"coverage", "interval_score", "copy_last_interval_score"} <= set(entry)
        assert set(entry["per_horizon"]) == {"1", "10"}
        assert 0.0 <= entry["coverage"] <= 1.0 and entry["interval_score"] > 0 and entry["copy_last_interval_score"] > 0
    table = _cli(recording_file, "--model", checkpoint, "--horizons", "1,10", "--intervals", "0.9")
    assert table.returncode == 0, table.stderr
    assert "online conformal intervals" in table.stdout and "copy_last" in table.stdout
    assert len([line for line in table.stdout.splitlines() if line.split()[:1] == ["0.9"]]) == 3  # h=1, 10, all


@pytest.mark.parametrize("levels, message", [("1.5", "strictly between 0 and 1"), ("0", "strictly between 0 and 1"),
                                             ("abc", "comma-separated numbers"), ("", "strictly between 0 and 1"),
                                             ("0.8,1", "strictly between 0 and 1"), ("nan", "strictly between")])
def test_bad_interval_levels(checkpoint, recording_file, levels, message):
    result = _cli(recording_file, "--model", checkpoint, "--intervals", levels)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
