"""`rtcalm heads load|unload|list --session S` against a real daemon (real sockets): the control commands
from the shell, and each malformed input or refusal as one line."""

from __future__ import annotations

import json

import numpy as np
import torch
from daemon_helpers import SMALL_MODEL

from rtcalm.cli import main
from rtcalm.model.heads import TimeResolvedConfig, TimeResolvedHead, save_head

N = 12
D = SMALL_MODEL["d_model"]


def write_head(directory, name="direction", features="raw", n_neurons=N):
    torch.manual_seed(0)
    head = TimeResolvedHead(TimeResolvedConfig(name, "classification", n_neurons, D, 6, 2, 0 if features == "raw" else 2,
                                               [0.0, 90.0], features=features))
    with torch.no_grad():
        head.readout.weight.normal_(0.0, 0.1)
    return save_head(head, directory)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result, *words):
    code, out, err = result
    lines = [line for line in err.splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rtcalm: error: "), (code, out, err)
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_load_list_unload_from_the_shell(harness, capsys, tmp_path):
    control = harness.endpoints["control"]
    harness.control.start_session("rig", N)
    write_head(tmp_path / "dir")  # a directory with one head stands for that head
    code, out, err = run(capsys, "heads", "load", tmp_path / "dir", "--session", "rig", "--control", control)
    assert code == 0, err
    assert out.splitlines()[0] == "loaded head 'direction' in session 'rig'"
    assert "direction: classification; raw, 6 frames in 2 bins; classes 0, 90; 0 frames taken" in out
    speed = write_head(tmp_path / "speed", name="speed", features="both")
    code, out, err = run(capsys, "heads", "load", speed, "--session", "rig", "--control", control, "--json")
    assert code == 0, err
    assert [h["name"] for h in json.loads(out)["heads"]] == ["direction", "speed"]

    harness.send_lockstep(harness.sender("rig"), np.random.default_rng(0).standard_normal((5, N)).astype(np.float32))
    code, out, err = run(capsys, "heads", "list", "--session", "rig", "--control", control)
    assert code == 0, err
    assert out.splitlines()[0] == "session 'rig': 2 head(s)" and out.count("5 frames taken") == 2
    code, out, err = run(capsys, "heads", "unload", "speed", "--session", "rig", "--control", control)
    assert code == 0 and out.splitlines() == ["unloaded head 'speed' from session 'rig'",
                                              out.splitlines()[1]] and "direction" in out.splitlines()[1]
    assert [h["name"] for h in harness.session_status("rig")["heads"]] == ["direction"]


def test_refusals_and_malformed_input_are_one_line(harness, capsys, tmp_path):
    control = harness.endpoints["control"]
    harness.control.start_session("rig", N)
    good = write_head(tmp_path / "good")
    wide = write_head(tmp_path / "wide", n_neurons=N + 1)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    broken.with_suffix(".safetensors").write_bytes(b"")
    both_here = tmp_path / "two"
    write_head(both_here, name="a")
    write_head(both_here, name="b")
    base = ["--control", control]
    one_line_error(run(capsys, "heads", "load", tmp_path / "nothing.json", "--session", "rig", *base),
                   "head_not_found", "nothing.json")
    one_line_error(run(capsys, "heads", "load", wide, "--session", "rig", *base), "head_mismatch", "n_neurons")
    one_line_error(run(capsys, "heads", "load", broken, "--session", "rig", *base), "head_invalid", "not JSON")
    one_line_error(run(capsys, "heads", "load", both_here, "--session", "rig", *base), "2 head files")
    one_line_error(run(capsys, "heads", "load", good, "--session", "nobody", *base), "unknown_session")
    one_line_error(run(capsys, "heads", "unload", "direction", "--session", "rig", *base), "unknown_head")
    one_line_error(run(capsys, "heads", "list", "--session", "nobody", *base), "no session 'nobody'", "rig")
    one_line_error(run(capsys, "heads", "list", "--session", "bad id!", *base), "session id")
    one_line_error(run(capsys, "heads", "list", "--session", "rig", "--control", "tcp://127.0.0.1:9", "--timeout",
                       "0.3"), "no reply", "tcp://127.0.0.1:9")
    one_line_error(run(capsys, "heads", "list", "--session", "rig", *base, "--timeout", "-1"), "--timeout")
    assert harness.session_status("rig")["heads"] == []  # nothing refused changed the session
