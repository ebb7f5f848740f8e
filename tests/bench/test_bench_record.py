"""The JSON record of every ``rtcalm bench`` run (rtcalm/bench/record.py) and the commit it names
(rtcalm.eval.report.code_state)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from rtcalm.bench.record import bench_record, write_record
from rtcalm.eval.report import code_state


def git(directory, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=directory,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_commit_is_the_short_hash_marked_dirty_only_by_tracked_changes(tmp_path):
    assert code_state(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    short = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_state(tmp_path) == short
    (tmp_path / "result.json").write_text("{}")  # untracked output of a run: still the same code
    assert code_state(tmp_path) == short
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_state(tmp_path) == f"{short}-dirty"
    # a directory inside a checkout is not that checkout (a package installed in a project's venv)
    (tmp_path / "site").mkdir()
    assert code_state(tmp_path / "site") is None


def test_the_record_names_the_command_as_run_and_writes_strict_json(tmp_path, capsys):
    record = bench_record(["rtcalm", "bench", "step", "--json", "my results.json"],
                          {"p50_ms": 1.5, "ratio": float("nan"), "rows": [{"p99_ms": float("inf")}]},
                          load_before=0.5)
    assert record["command"] == "rtcalm bench step --json 'my results.json'"
    assert record["machine"]["load_average_1min"]["before"] == 0.5
    out = tmp_path / "record.json"
    write_record(record, str(out))
    written = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert written["result"] == {"p50_ms": 1.5, "ratio": None, "rows": [{"p99_ms": None}]}
    write_record(record, "-")
    assert json.loads(capsys.readouterr().out) == written
