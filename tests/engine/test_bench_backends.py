"""tools/bench_backends.py runs and reports what docs/benchmarks.md quotes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_backends.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("bench_backends", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_backends_are_timed_against_torch_in_one_run(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / "bench.json"
    assert tool.main(["--neurons", "8,16", "--steps", "12", "--backends", "onnx,onnx-static", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [run["n_neurons"] for run in report["runs"]] == [8, 16]
    for run in report["runs"]:
        rows = run["results"]
        assert list(rows) == ["torch", "onnx", "onnx-static"]
        assert rows["torch"]["speedup_vs_torch_eager"] == 1.0
        for row in rows.values():
            assert 0 < row["median_ms"] <= row["p99_ms"] and row["speedup_vs_torch_eager"] > 0
            assert row["max_abs_diff_vs_torch"] <= 1e-4  # the same forecasts, not just fast ones
        assert rows["onnx"]["engine_backend"] == "onnxruntime-cpu"
    assert report["machine"]["cpu_count"] >= 1 and "load_average_before" in report
    table = capsys.readouterr().out
    assert "onnx-static" in table and "median ms" in table


def test_unavailable_or_unknown_backends_are_refused(capsys):
    tool = load_tool()
    with pytest.raises(SystemExit):
        tool.main(["--backends", "coreml"])
    assert "unknown backends ['coreml']" in capsys.readouterr().err
    usable, why_not = tool.available_backends()
    if "tensorrt" not in usable:
        with pytest.raises(SystemExit):
            tool.main(["--backends", "tensorrt"])
        assert "backend tensorrt cannot run here" in capsys.readouterr().err
