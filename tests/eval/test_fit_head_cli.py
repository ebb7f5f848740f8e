"""`rtcalm fit-head` and `rtcalm decode` end to end (a small random checkpoint, synthetic recordings whose
class shows in the time course of a few neurons), and every malformed input each refuses in one line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from rtcalm.cli import main
from rtcalm.data import Recording, TrialTable, save_recording
from rtcalm.model import Calm
from rtcalm.model.checkpoint import save_checkpoint

from .test_forecast_eval_cli import SMALL

CLASSES = np.arange(4) * 90.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(Calm(SMALL).eval(), tmp_path_factory.mktemp("ckpt") / "m")


def trial_recording(trials=48, neurons=6, seed=0, rate=16.0) -> Recording:
    """Epochs -1..+2 s; from the onset, neuron k (k = the class) responds, with running speed and noise."""
    rng = np.random.default_rng(seed)
    directions = np.tile(CLASSES, trials // 4)
    frames = int(3 * rate)
    time = -1 + np.arange(frames) / rate
    dff = rng.standard_normal((trials, frames, neurons)).astype(np.float32) * 0.3
    for k, d in enumerate(directions):
        dff[k, time >= 0, int(d // 90)] += 1.5
    speed = rng.random((trials, frames)).astype(np.float32) + (directions[:, None] / 90.0)
    return Recording(dff=dff, rate_hz=rate, neuron_ids=np.arange(neurons), trial_time_s=time,
                     trials=TrialTable({"onset_s": np.full(trials, np.nan), "direction_deg": directions}),
                     continuous_labels={"running_speed": speed})


@pytest.fixture(scope="module")
def trial_file(tmp_path_factory):
    return save_recording(trial_recording(), tmp_path_factory.mktemp("rec") / "trials.rtcalm.h5")


def contiguous(tmp_path, trials=40, rate=30.0, neurons=5, seed=1):
    """A contiguous recording with a stimulus every 3 s (named 'left'/'right'), and its label table."""
    rng = np.random.default_rng(seed)
    n_frames = int(trials * 3 * rate) + 30
    dff = rng.standard_normal((n_frames, neurons)).astype(np.float32) * 0.3
    names = np.array(["left", "right"])[np.arange(trials) % 2]
    onsets = 1.0 + 3.0 * np.arange(trials)
    for onset, name in zip(onsets, names, strict=True):
        start = int(round(onset * rate))
        dff[start:start + int(2 * rate), 0 if name == "left" else 1] += 1.5
    path = save_recording(Recording(dff=dff, rate_hz=rate, neuron_ids=np.arange(neurons)), tmp_path / "block.rtcalm.h5")
    table = tmp_path / "labels.csv"
    table.write_text("time,stimulus\n" + "".join(f"{o:.3f},{n}\n" for o, n in zip(onsets, names, strict=True)))
    return path, table


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_head_writes_the_head_with_its_provenance_and_decode_reads_it(capsys, tmp_path, trial_file, checkpoint):
    code, out, err = run(capsys, "fit-head", trial_file, "--task", "direction", "--model", checkpoint, "--backend",
                         "torch", "--out", tmp_path / "heads", "--folds", "4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    head_json = tmp_path / "heads" / "direction.json"
    assert doc["head"] == str(head_json) and head_json.with_suffix(".safetensors").is_file()
    written = json.loads(head_json.read_text())
    assert written["version"] in (3, 4) and written["provenance"]["chosen"] == doc["chosen"]
    assert written["version"] == (4 if "bin_sizes" in written["config"] else 3)
    provenance = written["provenance"]
    assert provenance["inputs"] == [{"file": str(trial_file), "sha256": hashlib.sha256(trial_file.read_bytes()).hexdigest()}]
    assert provenance["model"]["version"].startswith("m@") and provenance["command"].startswith("rtcalm fit-head ")
    assert provenance["trials"] == 48 and provenance["window_frames"] == 60 and provenance["metric"] == "accuracy"
    assert written["config"]["features"] == doc["chosen"]["features"] and written["config"]["classes"] == list(CLASSES)
    cv = provenance["cross_validated"]
    assert set(cv["baselines"]) == {"lda_binned", "logistic_binned", "linear_mean_response", "chance"}
    assert cv["served"] > 0.9 and cv["baselines"]["lda_binned"] > 0.9 and len(cv["selected"]) == 4
    assert set(cv["standard_errors"]) == {"served", *cv["baselines"]}

    code, out, err = run(capsys, "decode", trial_file, "--head", tmp_path / "heads", "--backend", "torch", "--json")
    assert code == 0, err
    decoded = json.loads(out)
    assert decoded["frames"] == 48 * 90 and len(decoded["decoded"]) == 48 * 90  # 3 s epochs at 30 Hz
    assert decoded["score"]["metric"] == "accuracy" and decoded["score"]["value"] > 0.9
    first = decoded["trials"][0]  # the epochs are streamed in fit-head's (shuffled) order
    assert decoded["trial_order"] == provenance["trial_order"] == "shuffled"
    assert first["onset_frame"] % 90 == 30 and first["decoded_frame"] == first["onset_frame"] + 59
    assert first["decoded"] == decoded["decoded"][89]["direction"]
    assert decoded["decoded"][89]["direction"] in CLASSES and len(decoded["decoded"][89]["direction_probabilities"]) == 4

    code, out, err = run(capsys, "decode", trial_file, "--head", head_json, "--backend", "torch")
    assert code == 0, err
    assert "accuracy over 48 trials" in out and "fitted on this file" in out


def test_text_table_and_each_feature_kind(capsys, tmp_path, trial_file, checkpoint):
    for features in ("raw", "backbone", "both"):
        code, out, err = run(capsys, "fit-head", trial_file, "--task", "direction", "--features", features, "--name",
                             f"dir_{features}", "--model", checkpoint, "--backend", "torch", "--out", tmp_path,
                             "--folds", "3")
        assert code == 0, err
        assert f"chosen on every trial by inner CV: {features}" in out
        rows = [line.split()[0] for line in out.splitlines() if "±" in line and not line.startswith("3-fold")]
        assert rows == ["served", "lda_binned", "logistic_binned", "linear_mean_response", "chance"]
        assert json.loads((tmp_path / f"dir_{features}.json").read_text())["config"]["features"] == features


def test_regression_on_a_behaviour(capsys, tmp_path, trial_file, checkpoint):
    code, out, err = run(capsys, "fit-head", trial_file, "--task", "speed", "--features", "raw", "--model", checkpoint,
                         "--backend", "torch", "--out", tmp_path, "--folds", "4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["metric"] == "r2" and all(m["penalty"] is not None for m in doc["chosen"]["members"])
    assert set(doc["cross_validated"]["baselines"]) == {"ridge_binned", "linear_mean_response", "chance"}
    assert json.loads((tmp_path / "speed.json").read_text())["config"]["kind"] == "regression"
    code, out, err = run(capsys, "decode", trial_file, "--head", tmp_path / "speed.json", "--backend", "torch", "--json")
    assert code == 0, err
    assert json.loads(out)["score"]["metric"] == "r2"


def test_a_contiguous_recording_with_a_label_table_of_named_classes(capsys, tmp_path, checkpoint):
    path, table = contiguous(tmp_path)
    code, out, err = run(capsys, "fit-head", path, "--labels", table, "--task", "stimulus", "--model", checkpoint,
                         "--backend", "torch", "--out", tmp_path / "h", "--folds", "4")
    assert code == 0, err
    assert "classes: 0 = left, 1 = right" in out
    # left, right, left, ...: the previous label predicts the next, which a backbone head could exploit
    assert "warning: the previous trial's label predicts the next one in 100% of trials" in err
    provenance = json.loads((tmp_path / "h" / "stimulus.json").read_text())["provenance"]
    assert provenance["class_names"] == ["left", "right"] and provenance["inputs"][0]["labels"] == str(table)
    assert provenance["trial_order"] == "recorded" and provenance["label_order_predictability"] == 1.0
    assert provenance["cross_validated"]["served"] > 0.9
    code, out, err = run(capsys, "decode", path, "--labels", table, "--head", tmp_path / "h", "--backend", "torch",
                         "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["score"]["value"] > 0.9 and {t["label"] for t in result["trials"]} == {0.0, 1.0}
    code, out, err = run(capsys, "decode", path, "--head", tmp_path / "h", "--backend", "torch")  # no labels
    assert code == 0, err
    assert "no trial scores" in out


def _one_line_error(code, out, err, *words):
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("rtcalm: error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_fit_head_refuses_malformed_input_in_one_line(capsys, tmp_path, trial_file, checkpoint):
    block, table = contiguous(tmp_path)
    wider = save_recording(trial_recording(neurons=7), tmp_path / "wider.rtcalm.h5")
    few = save_recording(trial_recording(trials=8), tmp_path / "few.rtcalm.h5")
    same = trial_recording()
    same.trials.columns["direction_deg"][:] = 90.0
    constant = save_recording(same, tmp_path / "constant.rtcalm.h5")
    late = tmp_path / "late.csv"
    late.write_text("time,stimulus\n1.0,left\n119.5,right\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "bad.toml").write_text("[stats]\nwarm_up = 3\n")
    base = ["--model", checkpoint, "--backend", "torch"]
    cases = [
        (["fit-head", tmp_path / "missing.h5", "--task", "direction", "--out", tmp_path / "o"], ["missing.h5"]),
        (["fit-head", trial_file, "--task", "colour", "--out", tmp_path / "o"], ["no label 'colour'", "direction_deg"]),
        (["fit-head", trial_file, "--task", "direction", "--labels", table, "--out", tmp_path / "o"],
         ["trial-structured", "contiguous"]),
        (["fit-head", trial_file, wider, "--task", "direction", "--out", tmp_path / "o"], ["7 neurons", "one session"]),
        (["fit-head", block, "--task", "stimulus", "--out", tmp_path / "o"], ["without trials", "--labels"]),
        (["fit-head", block, block, "--labels", table, "--task", "stimulus", "--out", tmp_path / "o"],
         ["1 table(s) for 2 file(s)"]),
        (["fit-head", block, "--labels", late, "--task", "stimulus", "--out", tmp_path / "o"], ["runs past the end"]),
        (["fit-head", block, "--labels", table, "--task", "stimulus", "--regression", "--out", tmp_path / "o"],
         ["holds text"]),
        (["fit-head", few, "--task", "direction", "--out", tmp_path / "o"], ["rarest class has 2 trials"]),
        (["fit-head", constant, "--task", "direction", "--out", tmp_path / "o"], ["same label"]),
        (["fit-head", trial_file, "--task", "direction", "--out", tmp_path / "a-file"], ["is a file"]),
        (["fit-head", trial_file, "--task", "direction", "--name", "bad name!", "--out", tmp_path / "o"],
         ["head name 'bad name!'"]),
        (["fit-head", trial_file, "--task", "direction", "--window-s", "3", "--out", tmp_path / "o"],
         ["less than the 3 s response window"]),
        (["fit-head", trial_file, "--task", "direction", "--config", tmp_path / "bad.toml", "--out", tmp_path / "o"],
         ["bad.toml", "warm_up"]),
    ]
    for args, words in cases:
        _one_line_error(*run(capsys, *args, *base), *words)
    assert not (tmp_path / "o").exists()  # nothing written by a refused fit
    for bad in ("0", "-1", "nan", "soon"):  # argparse: its usage line and one error line
        with pytest.raises(SystemExit) as info:
            main(["fit-head", str(trial_file), "--task", "direction", "--window-s", bad, "--out", str(tmp_path / "o")])
        assert info.value.code == 2 and "--window-s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit-head", str(trial_file), "--task", "direction", "--features", "pixels", "--out", str(tmp_path)])
    assert "invalid choice: 'pixels'" in capsys.readouterr().err


def test_decode_refuses_malformed_input_in_one_line(capsys, tmp_path, trial_file, checkpoint):
    code, _, err = run(capsys, "fit-head", trial_file, "--task", "direction", "--features", "backbone", "--model",
                       checkpoint, "--backend", "torch", "--out", tmp_path / "one", "--folds", "3")
    assert code == 0, err
    head = tmp_path / "one" / "direction.json"
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a", "b"):
        document = json.loads(head.read_text())
        document["config"]["name"] = name
        (two / f"{name}.json").write_text(json.dumps(document))
        (two / f"{name}.safetensors").write_bytes(head.with_suffix(".safetensors").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "direction.json").write_text(head.read_text().replace('"n_bins"', '"bins"'))
    (broken / "direction.safetensors").write_bytes(head.with_suffix(".safetensors").read_bytes())
    other_model = tmp_path / "other"
    save_checkpoint(Calm(SMALL).eval(), other_model)  # other random weights: another version
    wider = save_recording(trial_recording(neurons=7), tmp_path / "wider.rtcalm.h5")
    block, table = contiguous(tmp_path)
    cases = [
        (["decode", trial_file, "--head", tmp_path / "nothing"], ["no such head file or directory"]),
        (["decode", trial_file, "--head", empty], ["0 head files"]),
        (["decode", trial_file, "--head", two], ["2 head files", "a.json, b.json"]),
        (["decode", trial_file, "--head", broken], ["head_invalid", "n_bins must be an integer"]),
        (["decode", wider, "--head", head], ["n_neurons = 6", "the session has 7"]),
        (["decode", trial_file, "--head", head, "--model", other_model], ["reads the hidden state of m@"]),
        (["decode", trial_file, "--head", head, "--labels", table], ["label tables are for contiguous recordings"]),
        (["decode", tmp_path / "missing.h5", "--head", head], ["missing.h5"]),
        (["decode", block, "--head", head, "--labels", tmp_path / "missing.csv"], ["missing.csv"]),
    ]
    for args, words in cases:
        _one_line_error(*run(capsys, *args, "--backend", "torch"), *words)
