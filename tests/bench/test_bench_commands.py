"""Every ``rtcalm bench`` sub-command: a tiny real run that writes the JSON record (command, commit,
machine, result with positive, finite milliseconds), and its malformed arguments (exit 2, one error line,
before anything runs). ``bench latency``'s runs are in tests/bench/test_bench_latency_rules.py and
tests/daemon/test_end_to_end.py."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from rtcalm.cli import main

SUBCOMMANDS = ("step", "backends", "stats", "latency", "transport", "soak", "quality")


def check_record(record: dict, argv: list[str]) -> dict:
    """The envelope every bench sub-command writes; returns its result."""
    assert set(record) == {"command", "commit", "machine", "result"}
    assert record["command"] == shlex.join(["rtcalm", *argv])
    assert record["commit"] is None or re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", record["commit"]), record["commit"]
    machine = record["machine"]
    assert {"platform", "cpu", "cores", "python", "libraries", "load_average_1min"} <= set(machine)
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"].count(".") == 2
    assert machine["libraries"]["numpy"] == np.__version__
    assert isinstance(record["result"], dict)
    return record["result"]


def milliseconds(value, where: str = "result") -> list[tuple[str, float]]:
    """Every ``*_ms`` number in ``value``, with where it is."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_ms") and item is not None and not isinstance(item, dict):
                found.append((f"{where}.{key}", item))
            else:
                found += milliseconds(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += milliseconds(item, f"{where}[{i}]")
    return found


def assert_positive_finite_ms(result: dict, at_least: int) -> None:
    numbers = milliseconds(result)
    assert len(numbers) >= at_least, numbers
    bad = [(where, value) for where, value in numbers if not (math.isfinite(value) and value > 0)]
    assert not bad, bad


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        return exit_info.code


# --- tiny real runs --------------------------------------------------------------------------------

def test_bench_step_writes_its_record(tmp_path, capsys):
    out = tmp_path / "step.json"
    argv = ["bench", "step", "--neurons", "8,16", "--history", "4,40", "--steps", "100", "--json", str(out)]
    assert main(argv) == 0
    result = check_record(json.loads(out.read_text()), argv)
    assert [(row["neurons"], row["history"], row["steps"]) for row in result["rows"]] == [
        (8, 4, 100), (8, 40, 100), (16, 4, 100), (16, 40, 100)]
    for row in result["rows"]:
        assert row["p50_ms"] <= row["p99_ms"] and row["cpu_p50_ms"] <= row["cpu_p99_ms"]
    assert_positive_finite_ms(result, at_least=4 * 5)
    # neither 512 nor 4096 neurons were run: only the history target applies
    assert set(result["targets"]) == {"history_ratio"} and result["targets"]["history_ratio"]["value"] > 0
    assert "longest / shortest history p50 ratio" in capsys.readouterr().out


def test_bench_step_json_dash_prints_only_the_record(capsys):
    argv = ["bench", "step", "--neurons", "8", "--history", "4", "--steps", "100", "--json", "-"]
    assert main(argv) == 0
    result = check_record(json.loads(capsys.readouterr().out), argv)
    assert result["targets"] == {}  # one history, no target neuron count: nothing to judge


def test_bench_backends_writes_its_record(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "backends.json"
    argv = ["bench", "backends", "--neurons", "8", "--steps", "100", "--backends", "onnx,onnx-static",
            "--json", str(out)]
    assert main(argv) == 0
    result = check_record(json.loads(out.read_text()), argv)
    [run] = result["runs"]
    assert run["neurons"] == 8 and run["skipped"] == {}
    rows = run["results"]
    assert list(rows) == ["torch", "onnx", "onnx-static"]
    assert rows["torch"]["speedup_vs_torch_eager"] == 1.0
    for row in rows.values():
        assert row["p50_ms"] <= row["p99_ms"] and row["speedup_vs_torch_eager"] > 0
        assert row["max_abs_diff_vs_torch"] <= 1e-4  # the same forecasts, not just fast ones
    assert rows["onnx"]["engine_backend"] == "onnxruntime-cpu"
    assert_positive_finite_ms(result, at_least=3 * 3)
    assert "onnx-static" in capsys.readouterr().out


def test_bench_stats_writes_its_record(tmp_path, capsys):
    out = tmp_path / "stats.json"
    argv = ["bench", "stats", "--neurons", "64", "--frames", "200", "--json", str(out)]
    assert main(argv) == 0
    result = check_record(json.loads(out.read_text()), argv)
    assert [(row["neurons"], row["source"]) for row in result["update"]] == [(64, "warm"), (64, "cold")]
    for row in result["update"] + result["update_forgetting"] + result["dff"]:
        assert row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] and row["calls"] >= 200
    assert_positive_finite_ms(result, at_least=4 * 4)
    assert "StreamingStats.update" in capsys.readouterr().out


def test_bench_transport_writes_its_record(tmp_path):
    out = tmp_path / "transport.json"
    argv = ["bench", "transport", "--neurons", "8", "--horizon", "2", "--round-trips", "100", "--rate", "1000",
            "--json", str(out)]
    done = subprocess.run([sys.executable, "-m", "rtcalm", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = check_record(json.loads(out.read_text()), argv)
    assert result["reply_bytes"] == 8 * 2 * 4 + 200
    assert set(result["rows"]) == {f"{kind}_{pacing}" for kind in ("zeromq_tcp", "zeromq_ipc", "plain_tcp_socket")
                                   for pacing in ("paced", "back_to_back")}
    for row in result["rows"].values():
        assert row["round_trips"] == 100 and row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    assert_positive_finite_ms(result, at_least=6 * 3)
    assert "plain_tcp_socket_paced" in done.stdout


@pytest.mark.slow
def test_bench_soak_writes_its_record_and_exits_by_its_checks(tmp_path):
    out = tmp_path / "soak.json"
    argv = ["bench", "soak", "--minutes", "0.1", "--window-s", "2", "--neurons", "16", "--json", str(out)]
    done = subprocess.run([sys.executable, "-m", "rtcalm", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    result = check_record(json.loads(out.read_text()), argv)
    assert (result["neurons"], result["rate_hz"], result["window_s"]) == (16, 30.0, 2.0)
    assert len(result["windows"]) >= 2 and result["frames_sent"] >= 150
    for window in result["windows"]:
        assert window["rss_mib"] > 0 and window["predictions"] > 0
        assert window["p50_ms"] <= window["p99_ms"] <= window["max_ms"]
    assert_positive_finite_ms(result["windows"], at_least=2 * 3)
    assert set(result["checks"]) == {"memory_growth_mib", "worst_window_p99_ms", "lost_frames"}
    assert done.returncode == (0 if all(check["met"] for check in result["checks"].values()) else 1)
    assert "checks:" in done.stdout and "rtcalm bench soak: t_s" in done.stderr


def test_bench_quality_writes_its_record(tmp_path, capsys):
    out = tmp_path / "quality.json"
    argv = ["bench", "quality", "--neurons", "16", "--horizon", "4", "--levels", "0.8", "--frames", "100",
            "--json", str(out)]
    assert run_main(argv) == 0
    result = check_record(json.loads(out.read_text()), argv)
    assert (result["neurons"], result["horizon"], result["levels"], result["frames"]) == (16, 4, [0.8], 100)
    assert set(result["parts"]) == {"skill only (the default)", "encoding without intervals",
                                    "skill and intervals 0.8", "encoding with intervals",
                                    "skill and intervals, filled and encoded", "added by intervals"}
    assert_positive_finite_ms([p for n, p in result["parts"].items() if n != "added by intervals"], at_least=2 * 5)
    assert "target: intervals add <= 0.05 ms p50" in capsys.readouterr().out


# --- malformed arguments: exit 2, one error line, nothing run --------------------------------------

@pytest.mark.parametrize("argv, problem", [
    (["bench", "step", "--steps", "50"], "--steps must be at least 100 for a p99"),
    (["bench", "step", "--threads", "0"], "expected a positive integer"),
    (["bench", "step", "--history", "0"], "history lengths must be positive integers"),
    (["bench", "step", "--neurons", "a,b"], "expected comma-separated neuron counts"),
    (["bench", "backends", "--backends", "coreml"], "unknown backend(s) coreml"),
    (["bench", "backends", "--backends", ","], "unknown backend(s) ','"),
    (["bench", "backends", "--steps", "10"], "--steps must be at least 100 for a p99"),
    (["bench", "backends", "--threads", "-1"], "expected a positive integer"),
    (["bench", "backends", "--seed", "-1"], "--seed must be 0 or more"),
    (["bench", "stats", "--frames", "99"], "--frames must be at least 100 for a p99"),
    (["bench", "latency", "--rate", "0"], "--rate in (0, 10000]"),
    (["bench", "transport", "--rate", "0"], "expected a positive number"),
    (["bench", "transport", "--rate", "nan"], "expected a positive number"),
    (["bench", "transport", "--rate", "20000"], "--rate must be at most 10000 Hz"),
    (["bench", "transport", "--round-trips", "5"], "--round-trips must be at least 100 for a p99"),
    (["bench", "transport", "--horizon", "0"], "expected a positive integer"),
    (["bench", "soak", "--minutes", "0"], "expected a positive number"),
    (["bench", "soak", "--minutes", "inf"], "expected a positive number"),
    (["bench", "soak", "--minutes", "1", "--window-s", "120"], "--window-s 120 is longer than --minutes 1"),
    (["bench", "soak", "--backend", "cuda"], "invalid choice: 'cuda'"),
    (["bench", "soak", "--rate", "1e6"], "--rate must be at most 10000 Hz"),
    (["bench", "soak", "--max-p99-ms", "-3"], "expected a positive number"),
    (["bench", "quality", "--levels", "0.9,0.8"], "levels must be increasing numbers in (0, 1)"),
    (["bench", "quality", "--levels", "1.5"], "levels must be increasing numbers in (0, 1)"),
    (["bench", "quality", "--levels", "x"], "expected comma-separated coverage levels"),
    (["bench", "quality", "--frames", "10"], "--frames must be at least 100 for a p99"),
    (["bench", "quality", "--neurons", "0"], "expected a positive integer"),
])
def test_malformed_arguments_are_one_line_and_exit_2(argv, problem, capsys):
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and problem in errors[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_subcommand_checks_its_json_file_before_running(subcommand, tmp_path, capsys):
    for bad, problem in ((str(tmp_path / "missing" / "out.json"), "does not exist"),
                         (str(tmp_path), "expected a file path or '-'")):
        assert run_main(["bench", subcommand, "--json", bad]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "--json" in errors[0] and problem in errors[0], errors
