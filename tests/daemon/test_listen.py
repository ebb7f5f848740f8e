"""``rtcalm listen`` against a real daemon over real sockets: every prediction and error as one JSON line,
fields as documented, equal to what the Python client receives; session filter and --count."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from rtcalm.sim import make_synthetic

N = 12


def start_listen(harness, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rtcalm", "listen", "--from", harness.endpoints["publish"], *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stream_until_exit(harness, process: subprocess.Popen, senders, frames, timeout_s: float = 60.0) -> list[dict]:
    """Send frames round-robin from ``senders`` until the listener exits (a new subscriber misses what is
    published before its subscription arrives, so the stream must go on until it has what it needs)."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while process.poll() is None:
        assert time.monotonic() < deadline, "rtcalm listen did not finish"
        for sender in senders:
            sender.send(frames[i % len(frames)])
        i += 1
        time.sleep(0.01)
    out, err = process.communicate()
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_listen_prints_predictions_and_errors_as_json_lines(harness):
    frames = make_synthetic(n_neurons=N, n_frames=200, seed=3).dff
    process = start_listen(harness, "--session", "watched", "--count", "5", "--vectors")
    watched, other = harness.sender("watched"), harness.sender("other")
    records = stream_until_exit(harness, process, [watched, other], frames)
    assert len(records) == 5
    assert {r["session"] for r in records} == {"watched"}  # the filter is exact
    first = records[0]
    assert first["type"] == "prediction"
    assert set(first) >= {"session", "seq", "t_acq_ns", "t_recv_ns", "t_pub_ns", "t_listen_ns", "n", "horizon",
                          "rate_hz", "model_version", "stream_id", "stream_frame", "folded", "predictable_count",
                          "decoded", "stage_ns", "forecast", "predictable"}
    assert first["n"] == N and len(first["forecast"]) == N and len(first["forecast"][0]) == first["horizon"]
    assert first["t_recv_ns"] <= first["t_pub_ns"] <= first["t_listen_ns"]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)

    # The Python client (the harness's subscriber, which sees every session) got the same numbers for the
    # same frames; NaN (a neuron still warming up) is printed as null.
    seen = {m.seq: m for m in harness.drain(harness.subscriber) if m.session == "watched"}
    for record in records:
        prediction = seen[record["seq"]]
        printed = np.array([[np.nan if v is None else v for v in row] for row in record["forecast"]], np.float32)
        np.testing.assert_array_equal(printed, prediction.forecast)
        assert record["predictable"] == prediction.predictable.astype(int).tolist()
        assert (record["model_version"], record["stream_id"], record["t_pub_ns"]) == (
            prediction.model_version, prediction.stream_id, prediction.t_pub_ns)


def test_listen_prints_errors_and_stops_after_count(harness):
    process = start_listen(harness, "--count", "2")  # every session, and unattributed errors
    bad = harness.sender("bad-values")
    huge = np.zeros(N, np.float32)
    huge[0] = 3e38
    deadline = time.monotonic() + 60
    while process.poll() is None:
        assert time.monotonic() < deadline
        bad.send(huge, seq=0)  # refused, so seq 0 stays free: every send is one more error
        time.sleep(0.02)
    out, err = process.communicate()
    assert process.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    assert records[0] == {**records[0], "type": "error", "session": "bad-values", "seq": 0,
                          "code": "value_out_of_range"}
    assert records[0]["message"] and isinstance(records[0]["t_recv_ns"], int)
