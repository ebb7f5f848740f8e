"""tools/profile_onnx_step.py runs and reports what docs/benchmarks.md quotes (tiny sizes; the numbers
themselves are the profiler's business), and tools/plot_latency.py draws from bench latency records."""

from __future__ import annotations

import json

import pytest


def test_profile_of_the_onnx_step_lists_the_cache_writes_as_scatternd(tool, capsys):
    pytest.importorskip("onnxruntime")
    assert tool("profile_onnx_step").main(["--neurons", "16", "--frames", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["neurons"] == 16 and report["nodes"] > 10
    assert report["per_op_us"]["ScatterND"] > 0  # the key and value ring writes
    assert "ScatterElements" not in report["per_op_us"]
    assert report["kernel_us_per_step"] == pytest.approx(sum(report["per_op_us"].values()))


def test_bad_profile_arguments_are_refused(tool):
    with pytest.raises(SystemExit):
        tool("profile_onnx_step").main(["--neurons", "0"])


def latency_record(stage_ms: float) -> dict:
    from rtcalm.bench.latency import WATERFALL

    stages = {name: {"p50_ms": stage_ms, "p99_ms": 2 * stage_ms, "p999_ms": 3 * stage_ms} for name in WATERFALL}
    return {"command": "rtcalm bench latency --neurons 8 --json run.json", "commit": None, "machine": {},
            "result": {"neurons": 8, "transport": "tcp", "frames": 10, "rate_hz": 30.0, "model": "default@x",
                       "backend": "onnxruntime-cpu", "p50_ms": 6 * stage_ms, "p99_ms": 12 * stage_ms,
                       "stages": stages}}


def test_plot_latency_draws_bench_latency_records_and_refuses_others(tmp_path, tool):
    pytest.importorskip("matplotlib")
    plot_latency = tool("plot_latency")
    runs = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, stage_ms in zip(runs, (0.1, 0.3), strict=True):
        path.write_text(json.dumps(latency_record(stage_ms)))
    out = tmp_path / "waterfall.png"
    plot_latency.main([*map(str, runs), "--out", str(out)])
    assert out.read_bytes().startswith(b"\x89PNG")
    other = tmp_path / "step.json"
    other.write_text(json.dumps({**latency_record(0.1), "command": "rtcalm bench step"}))
    with pytest.raises(SystemExit, match="not a record of rtcalm bench latency"):
        plot_latency.main([str(other), "--out", str(out)])

