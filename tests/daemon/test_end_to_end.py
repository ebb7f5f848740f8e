"""End to end: `rtcalm serve` as its own process, real recordings streamed through real sockets, and the
published forecasts compared with the offline reference on the same frames. Plus the other daemon
commands as a user runs them: replay, demo, bench latency."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from daemon_helpers import OfflineReference

from rtcalm.cli import main
from rtcalm.client import ControlClient, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon import DaemonConfig
from rtcalm.daemon.process import DaemonProcess
from rtcalm.data import load_recording

pytestmark = pytest.mark.slow


def collect(subscriber: PredictionSubscriber, session_last_seq: dict[str, int]) -> dict[str, list[Prediction]]:
    """Receive until every session's prediction for its last sequence number has arrived."""
    got = {session: [] for session in session_last_seq}
    pending = set(session_last_seq)
    while pending:
        message = subscriber.receive(timeout_ms=60000)
        assert message is not None, f"no prediction for {sorted(pending)} within a minute"
        assert isinstance(message, Prediction), message
        if message.session not in got:
            continue
        got[message.session].append(message)
        if message.seq == session_last_seq[message.session]:
            pending.discard(message.session)
    return got


@pytest.mark.real_data
def test_real_recordings_through_the_serve_process(checkpoint, model, cascade_mat, neurodio_files):
    recordings = {"cascade": load_recording(cascade_mat).dff[:900],
                  "allen-a": load_recording(neurodio_files[0]).dff[:600],
                  "allen-b": load_recording(neurodio_files[-1]).dff[:600]}
    config = DaemonConfig()  # `rtcalm serve` runs with the defaults (only the ports and the backend differ)
    # torch: the reference's own step, so forecasts agree to rounding (ONNX: test_onnx_backend_...)
    with DaemonProcess(model=str(checkpoint), metrics=False, extra_args=["--backend", "torch"]) as daemon:
        control = ControlClient(daemon.endpoints["control"], timeout_ms=30000)
        subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions=[*recordings, "handshake"])
        senders = {name: RigSender(daemon.endpoints["ingest"], session=name) for name in [*recordings, "handshake"]}
        # Wait until the subscription has reached the daemon: a throw-away session's frames get answered.
        while True:
            senders["handshake"].send(np.zeros(2, np.float32))
            if subscriber.receive(timeout_ms=200) is not None:
                break
        while subscriber.receive(timeout_ms=200) is not None:
            pass
        # The cascade excerpt in lockstep (every frame answered), the two Allen excerpts as fast as
        # the sender can go, interleaved (the daemon folds backlogs into batches).
        cascade = recordings["cascade"]
        lockstep = []
        for seq in range(cascade.shape[0]):
            senders["cascade"].send(cascade[seq])
            answer = subscriber.receive(timeout_ms=60000)
            assert isinstance(answer, Prediction) and (answer.session, answer.seq) == ("cascade", seq), answer
            lockstep.append(answer)
        for t in range(600):
            senders["allen-a"].send(recordings["allen-a"][t])
            senders["allen-b"].send(recordings["allen-b"][t])
        burst = collect(subscriber, {"allen-a": 599, "allen-b": 599})
        sessions = {s["session"]: s for s in control.status()["sessions"]}
        for sender in senders.values():
            sender.close()
        subscriber.close()
        control.close()

    for name, predictions in (("cascade", lockstep), ("allen-a", burst["allen-a"]), ("allen-b", burst["allen-b"])):
        frames = recordings[name]
        expected = OfflineReference(model, frames.shape[1], config).run(frames)
        assert [p.seq for p in predictions] == sorted(p.seq for p in predictions)
        for p in predictions:
            np.testing.assert_allclose(p.forecast, expected[p.seq], rtol=1e-4, atol=1e-5, equal_nan=True,
                                       err_msg=f"{name} seq {p.seq}")
        assert np.isfinite(predictions[-1].forecast).mean() > 0.9
        assert sessions[name]["accepted"] == frames.shape[0]
        assert sessions[name]["published"] + sessions[name]["batched"] == frames.shape[0]
    assert [p.seq for p in lockstep] == list(range(900))


def test_replay_streams_into_a_daemon(harness):
    result = subprocess.run([sys.executable, "-m", "rtcalm", "replay", "--synthetic", "--neurons", "16",
                             "--frames", "90", "--rate", "300", "--to", harness.endpoints["ingest"],
                             "--session", "replayed", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sent 90 frames, dropped 0" in result.stderr
    while harness.prediction("replayed").seq != 89:
        pass
    status = harness.session_status("replayed")
    assert status["accepted"] == 90 and status["gaps"] == 0 and status["neurons"] == 16


@pytest.mark.real_data
def test_replay_refuses_trial_structured_recordings(grating_files, capsys):
    assert main(["replay", str(grating_files[0]), "--to", "tcp://127.0.0.1:1"]) == 2
    assert "trial-structured" in capsys.readouterr().err


def test_demo_runs_and_stops_cleanly(checkpoint):
    result = subprocess.run([sys.executable, "-m", "rtcalm", "demo", "--model", str(checkpoint), "--synthetic",
                             "--neurons", "32", "--duration", "5", "--plain"], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.split("rtcalm demo summary")[1]
    predictions = int(summary.split(" predictions")[0].rsplit(", ", 1)[1])
    assert predictions > 60  # about 30 per second after start-up
    assert "latency rig send -> prediction received" in summary and "forecast skill vs copy-last" in summary
    # The demo head belongs to the shipped default model: with another model the demo says so, not decodes.
    assert "decoded: none (the demo head reads default@" in summary and checkpoint.name in summary
    assert "rtcalm demo: stopped" in result.stderr


def test_bench_latency_json(checkpoint):
    result = subprocess.run([sys.executable, "-m", "rtcalm", "bench", "latency", "--model", str(checkpoint),
                             "--neurons", "32", "--frames", "60", "--rate", "100", "--json", "-"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["command"].startswith("rtcalm bench latency --model ") and record["machine"]["cores"] >= 1
    report = record["result"]
    assert {"neurons", "rate_hz", "frames", "p50_ms", "p99_ms", "p999_ms", "lost_frames", "stages"} <= set(report)
    assert (report["neurons"], report["rate_hz"], report["frames"], report["lost_frames"]) == (32, 100.0, 60, 0)
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["p999_ms"]
    assert {"validate", "stats", "model", "publish", "all_but_model"} <= set(report["stages"])
    assert report["targets"]["no_lost_frames"]["met"]


def test_bench_latency_with_decoding_heads(checkpoint, tmp_path):
    """--head KIND makes a head of that kind for the benchmark's neurons and model; --head PATH loads a
    fitted one; the session decodes every frame (the heads' work is in the model stage)."""
    from rtcalm.bench.latency import benchmark_head

    fitted = benchmark_head("backbone", tmp_path, neurons=32, model=str(checkpoint))
    result = subprocess.run([sys.executable, "-m", "rtcalm", "bench", "latency", "--model", str(checkpoint),
                             "--neurons", "32", "--frames", "40", "--rate", "100", "--no-references", "--head", "raw",
                             "--head", "both", "--head", str(fitted), "--json", "-"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["result"]
    assert [(h["name"], h["features"], h["n_bins"], h["window_frames"]) for h in report["heads"]] == [
        ("bench_raw", "raw", 8, 60), ("bench_both", "both", 8, 60), ("bench_backbone", "backbone", 8, 60)]
    assert report["lost_frames"] == 0
    wrong = subprocess.run([sys.executable, "-m", "rtcalm", "bench", "latency", "--model", str(checkpoint),
                            "--neurons", "16", "--frames", "10", "--no-references", "--head", str(fitted)],
                           capture_output=True, text=True, timeout=180)
    assert wrong.returncode == 2 and "head_mismatch" in wrong.stderr and "Traceback" not in wrong.stderr


def test_bench_latency_interleaves_heads(checkpoint):
    """--interleave: from the daemon's own replies, every block ran with the head (or none) the schedule
    gave it; each head gets its added-cost target."""
    from rtcalm.bench.interleave import NO_HEAD

    result = subprocess.run([sys.executable, "-m", "rtcalm", "bench", "latency", "--model", str(checkpoint),
                             "--neurons", "32", "--frames", "108", "--rate", "100", "--no-references",
                             "--head", "raw", "--head", "both", "--interleave", "12", "--json", "-"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["result"]
    interleaved = report["interleaved"]
    assert interleaved["arms"] == [NO_HEAD, "bench_raw", "bench_both"] and interleaved["cycles"] == 3
    # The daemon's own replies: every block ran with exactly the head the schedule gave it.
    assert interleaved["daemon_heads"] == [[] if arm == NO_HEAD else [arm] for arm in interleaved["schedule"]]
    assert all(row["frames"] > 0 for row in interleaved["per_arm"].values())
    assert set(interleaved["added"]) == {"bench_raw", "bench_both"}
    assert {"head_bench_raw_adds_to_p50", "head_bench_both_adds_to_p50"} <= set(report["targets"])
    assert report["lost_frames"] == 0


def test_ipc_transport_serves_the_same_forecasts_as_tcp(checkpoint):
    """`rtcalm serve` on ipc:// (Unix domain sockets) answers a stream exactly as on tcp://."""
    frames = np.random.default_rng(8).standard_normal((60, 16)).astype(np.float32)
    forecasts = {}
    for transport in ("tcp", "ipc"):
        with DaemonProcess(model=str(checkpoint), metrics=False, transport=transport,
                           extra_args=["--backend", "torch"]) as daemon:
            assert all(address.startswith(f"{transport}://") for address in daemon.endpoints.values())
            subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions=["rig", "handshake"])
            sender = RigSender(daemon.endpoints["ingest"], session="handshake")
            while True:  # the subscription has reached the daemon once a throw-away session is answered
                sender.send(np.zeros(2, np.float32))
                if subscriber.receive(timeout_ms=200) is not None:
                    break
            while subscriber.receive(timeout_ms=200) is not None:
                pass
            rig = RigSender(daemon.endpoints["ingest"], session="rig")
            got = []
            for frame in frames:  # in lockstep: every frame answered
                rig.send(frame)
                message = subscriber.receive(timeout_ms=30000)
                assert isinstance(message, Prediction), message
                got.append(message.forecast)
            forecasts[transport] = np.stack(got)
            for socket in (subscriber, sender, rig):
                socket.close()
    assert np.array_equal(forecasts["tcp"], forecasts["ipc"], equal_nan=True)
