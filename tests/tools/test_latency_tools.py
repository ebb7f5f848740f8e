"""tools/profile_onnx_step.py and tools/bench_transport_floor.py run and report what docs/benchmarks.md
quotes (tiny sizes; the numbers themselves are the benchmarks' business)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


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


def test_transport_floor_times_zeromq_and_a_plain_socket_paced_and_back_to_back(tmp_path):
    # run as the script it is: its echo processes are spawned, and spawn re-imports the main script
    out = tmp_path / "floor.json"
    done = subprocess.run([sys.executable, str(TOOLS / "bench_transport_floor.py"), "--neurons", "8", "--horizon",
                           "2", "--round-trips", "5", "--rate", "200", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["reply_bytes"] == 8 * 2 * 4 + 200
    assert set(report["rows"]) == {f"{kind}_{pace}" for kind in ("zeromq_tcp", "zeromq_ipc", "plain_tcp_socket")
                                   for pace in ("paced", "back_to_back")}
    for row in report["rows"].values():
        assert row["round_trips"] == 5 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert "plain_tcp_socket_paced" in done.stdout


def test_bad_transport_floor_arguments_are_refused(tool):
    with pytest.raises(SystemExit):
        tool("bench_transport_floor").main(["--rate", "0"])


def test_benchmarks_md_renders_from_the_stored_closed_loop_bench():
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "closed_loop_bench.py"
    done = subprocess.run([sys.executable, str(tool), "render", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
