"""`rtcalm decode-eval` end to end with a small random checkpoint and a trial recording file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtcalm.data import Recording, TrialTable, save_recording
from rtcalm.model import Calm
from rtcalm.model.checkpoint import save_checkpoint
from rtcalm.sim import make_synthetic

from .test_forecast_eval_cli import SMALL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(Calm(SMALL).eval(), tmp_path_factory.mktemp("ckpt") / "m")


def _trial_file(tmp_path, labels=True):
    rng = np.random.default_rng(0)
    directions = np.tile(np.arange(8) * 45.0, 5)
    dff = rng.standard_normal((40, 48, 6)).astype(np.float32)
    rec = Recording(dff=dff, rate_hz=16.0, neuron_ids=np.arange(6), trial_time_s=-1 + np.arange(48) / 16,
                    trials=TrialTable({"onset_s": np.full(40, np.nan), "direction_deg": directions}),
                    continuous_labels={"running_speed": rng.random((40, 48))} if labels else {})
    return save_recording(rec, tmp_path / ("trials.rtcalm.h5" if labels else "nolabels.rtcalm.h5"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rtcalm", "decode-eval", *map(str, args)], capture_output=True, text=True)


def test_json_document(tmp_path, checkpoint):
    result = _cli(_trial_file(tmp_path), "--task", "direction", "--model", checkpoint, "--folds", "5", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["task"] == "direction" and doc["metric"] == "accuracy"
    assert 0.0 <= doc["model"] <= 1.0
    assert set(doc["baselines"]) == {"lda_binned", "logistic_binned", "linear_mean_response", "chance"}
    assert 0.0 <= doc["served"] <= 1.0 and doc["model_version"].startswith("m@")
    decoders = {"served", "model", "model_time_resolved", "raw_time_resolved", *doc["baselines"]}
    assert set(doc["standard_errors"]) == decoders
    row = doc["per_file"][0]
    assert row["trials"] == 40 and set(row["predictions"]) == decoders and len(row["targets"]) == 40
    assert len(row["selected"]["model_time_resolved"]) == 5  # one inner-CV choice per outer fold
    served = row["selected"]["served"]  # what fit-head --features auto chose inside each outer fold
    assert len(served) == 5 and {s["features"] for s in served} <= {"raw", "backbone", "both"}
    for choice in served:  # the candidates within one standard error of the best, averaged
        assert 0.0 <= choice["inner_cv"] <= 1.0 and 0.0 < choice["band"] < 0.5 and choice["members"]
        assert all(m["bins"] in (1, 2, 4, 8) and choice["inner_cv"] - choice["band"] - 1e-9 <= m["inner_cv"]
                   <= choice["inner_cv"] for m in choice["members"])


def test_bad_task_and_label_less_file(tmp_path, checkpoint):
    bad = _cli(_trial_file(tmp_path), "--task", "colour", "--model", checkpoint)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = _cli(_trial_file(tmp_path, labels=False), "--task", "speed", "--model", checkpoint)
    assert missing.returncode == 2 and "running_speed" in missing.stderr and "Traceback" not in missing.stderr
    contiguous = save_recording(make_synthetic(n_neurons=4, n_frames=100), tmp_path / "c.rtcalm.h5")
    result = _cli(contiguous, "--task", "direction", "--model", checkpoint)
    assert result.returncode == 2 and "trial-structured" in result.stderr


def test_text_table_lists_every_decoder_with_its_standard_error(tmp_path, checkpoint):
    result = _cli(_trial_file(tmp_path), "--task", "speed", "--model", checkpoint, "--folds", "4")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"model", "served", "model_time_resolved", "raw_time_resolved", "ridge_binned",
                         "linear_mean_response", "chance"}
    assert all(line.count("±") == 2 for line in rows.values())  # the file and the mean


def test_timecourse_refits_every_decoder_on_the_frames_available_so_far(tmp_path, checkpoint):
    """A file whose class shows only from 0.5 s after the onset: nothing decodes it from the first 0.25 s
    (4 frames at 16 Hz), everything that reads the time course does from 1 s on."""
    rng = np.random.default_rng(1)
    directions = np.tile(np.arange(4) * 90.0, 12)
    dff = rng.standard_normal((48, 48, 6)).astype(np.float32) * 0.3
    late = (np.arange(48) / 16 - 1) >= 0.5
    for k, d in enumerate(directions):
        dff[k][np.ix_(late, [int(d // 90)])] += 2.0
    path = save_recording(Recording(dff=dff, rate_hz=16.0, neuron_ids=np.arange(6), trial_time_s=-1 + np.arange(48) / 16,
                                    trials=TrialTable({"onset_s": np.full(48, np.nan), "direction_deg": directions})),
                          tmp_path / "late.rtcalm.h5")
    result = _cli(path, "--task", "direction", "--model", checkpoint, "--folds", "4", "--timecourse", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["available_s"] == [0.25, 0.5, 1.0, 2.0]
    assert {"served", "model", "model_time_resolved", "raw_time_resolved", "lda_binned", "chance"} <= set(doc["decoders"])
    for name in ("served", "lda_binned", "raw_time_resolved"):
        curve = doc["decoders"][name]
        assert curve[0] < 0.5 and curve[2] > 0.9 and curve[3] > 0.9, (name, curve)
    assert len(doc["per_file"]) == 1 and len(doc["per_file"][0]["served"]) == 4
    text = _cli(path, "--task", "direction", "--model", checkpoint, "--folds", "4", "--timecourse")
    assert text.returncode == 0 and "t = 0.25 s" in text.stdout and "served" in text.stdout
