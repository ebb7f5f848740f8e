"""Control commands over the real REQ/REP socket, bad requests, and the atomic model hot swap."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zmq
from daemon_helpers import OfflineReference, make_config

from rtcalm import protocol
from rtcalm.client import DaemonError
from rtcalm.engine import load_engine
from rtcalm.model import load_checkpoint
from rtcalm.sim import make_synthetic
from rtcalm.stats import StreamingStats

N = 20


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=200, seed=6).dff


def raw_request(harness, *parts: bytes) -> dict | protocol.ErrorMessage:
    socket = harness.context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(harness.endpoints["control"])
    socket.send_multipart(list(parts))
    assert socket.poll(20000), "the daemon must answer every request"
    reply = protocol.parse_reply(socket.recv())
    socket.close()
    return reply


def test_status_describes_the_daemon(harness, frames):
    harness.send_lockstep(harness.sender("rig"), frames[:15])
    status = harness.control.status()
    assert status["ok"] and status["cmd"] == "status"
    assert status["daemon"]["protocol"] == 1
    assert status["model"]["version"].startswith("small-a@") and status["model"]["loading"] is None
    assert status["model"]["backend"] == "torch-cpu" and status["model"]["horizon"] == 5
    assert status["endpoints"]["ingest"] == harness.endpoints["ingest"]
    (session,) = status["sessions"]
    assert session["session"] == "rig" and session["accepted"] == 15 and session["last_seq"] == 14
    assert status["latency"]["frames"] >= 15 and status["latency"]["model"]["p50_us"] > 0


def test_start_stop_reset_and_their_errors(harness, frames):
    control = harness.control
    started = control.start_session("s1", N)
    assert started["pinned"] and started["neurons"] == N and started["accepted"] == 0
    with pytest.raises(DaemonError) as info:
        control.start_session("s1", N)
    assert info.value.code == "session_exists"
    harness.send_lockstep(harness.sender("s1"), frames[:5])
    reset = control.reset_session("s1")
    assert reset["stream_id"] != started["stream_id"] and reset["last_seq"] is None and reset["accepted"] == 5
    stopped = control.stop_session("s1")
    assert stopped["session"] == "s1"
    for call in (control.stop_session, control.reset_session, control.get_stats):
        with pytest.raises(DaemonError) as info:
            call("s1")
        assert info.value.code == "unknown_session"
    with pytest.raises(DaemonError) as info:
        control.request("start", session="s2")
    assert info.value.code == "bad_field"
    with pytest.raises(DaemonError) as info:
        control.request("start", session="s 2", n_neurons=3)
    assert info.value.code == "bad_field"
    with pytest.raises(DaemonError) as info:
        control.request("shutdown")
    assert info.value.code == "unknown_command"


def test_reset_restarts_statistics_and_model(harness, model, frames):
    sender = harness.sender("r")
    harness.send_lockstep(sender, frames[:30])
    harness.control.reset_session("r")
    predictions = harness.send_lockstep(sender, frames[100:130], seqs=range(0, 30))
    expected = OfflineReference(model, N, make_config()).run(frames[100:130])
    np.testing.assert_allclose(predictions[-1].forecast, expected[-1], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_get_stats_equals_offline_statistics(harness, frames):
    harness.send_lockstep(harness.sender("st"), frames[:50])
    reply = harness.control.get_stats("st")
    reference = StreamingStats(N)
    reference.update_many(frames[:50])
    snapshot = reference.snapshot()
    assert reply["n"] == N and reply["frames"] == 50
    for name in ("mean", "std", "skewness", "kurtosis"):
        np.testing.assert_allclose(reply["vectors"][name], getattr(snapshot, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("parts, code", [
    ([b"\x93garbage"], "malformed"),
    ([msgpack.packb({"v": 9, "type": "request", "cmd": "status"})], "unsupported_version"),
    ([msgpack.packb({"v": 1, "type": "frame", "cmd": "status"})], "wrong_type"),
    ([msgpack.packb({"v": 1, "type": "request"})], "unknown_command"),
    ([msgpack.packb({"v": 1, "type": "request", "cmd": "status", "latency_frames": -3})], "bad_field"),
    ([msgpack.packb({"v": 1, "type": "request", "cmd": "load_model", "model": ""})], "bad_field"),
    ([protocol.build_request("status"), b"second part"], "malformed"),
], ids=["garbage", "version", "type", "no command", "bad argument", "empty model", "two parts"])
def test_bad_requests_get_error_replies(harness, parts, code):
    errors = harness.daemon.metrics.errors_published[code]
    before = errors._value.get()
    reply = raw_request(harness, *parts)
    assert isinstance(reply, protocol.ErrorMessage) and reply.code == code and reply.message
    assert harness.control.status()["ok"]  # and the daemon still answers
    # docs/protocol.md: every error, published or a control reply, is counted by code.
    assert errors._value.get() == before + 1


@pytest.mark.parametrize("cmd", ["get_stats", "stop", "reset", "unload_head"])
def test_error_replies_carry_the_requests_session_and_are_counted(harness, cmd):
    errors = harness.daemon.metrics.errors_published["unknown_session"]
    before = errors._value.get()
    reply = raw_request(harness, protocol.build_request(cmd, session="nobody", name="direction"))
    assert isinstance(reply, protocol.ErrorMessage)
    assert (reply.code, reply.session) == ("unknown_session", "nobody")
    assert errors._value.get() == before + 1
    assert harness.daemon.metrics.control_requests.labels(cmd=cmd, result="unknown_session")._value.get() >= 1
    # An unreadable session id is no address: the reply carries "".
    reply = raw_request(harness, protocol.build_request(cmd, session="not a session id"))
    assert (reply.code, reply.session) == ("bad_field", "")


def test_hot_swap_keeps_serving_and_warms_the_new_model(harness, model, second_checkpoint, frames):
    sender = harness.sender("swap")
    before = harness.send_lockstep(sender, frames[:40])
    described = harness.control.load_model(str(second_checkpoint))
    assert described["version"].startswith("small-b@") and described["last_load_error"] is None
    after = harness.send_lockstep(sender, frames[40:50])
    assert {p.model_version for p in before} == {before[0].model_version}
    assert {p.model_version for p in after} == {described["version"]}
    assert [p.seq for p in after] == list(range(40, 50)) and after[0].stream_id == before[0].stream_id

    # The new model's state was warmed on the last receptive-field frames of normalised history: the
    # same as a fresh new-model stream fed those frames (normalised with the session's statistics,
    # which carry on across the swap).
    new_model = load_checkpoint(second_checkpoint)
    old = OfflineReference(model, N, make_config())
    old.run(frames[:40])
    warmed = new_model.new_state(N)
    rf = new_model.config.receptive_field_frames
    new_model.step_many(np.stack(old.z_history[40 - rf:40]), warmed)
    old.model, old.state = new_model, warmed
    expected = old.run(frames[40:50])
    np.testing.assert_allclose(after[-1].forecast, expected[-1], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_failed_load_leaves_the_old_model_serving(harness, tmp_path, frames):
    sender = harness.sender("keep")
    first = harness.send_lockstep(sender, frames[:5])[-1]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for attempt, spec in enumerate((str(tmp_path / "missing"), str(broken))):
        with pytest.raises(DaemonError) as info:
            harness.control.load_model(spec)
        assert info.value.code == "model_load_failed" and spec in info.value.message
        seq = 5 + attempt
        later = harness.send_lockstep(sender, frames[seq:seq + 1], seqs=[seq])[0]
        assert later.model_version == first.model_version
    assert str(broken) in harness.control.status()["model"]["last_load_error"]


def test_second_load_while_loading_is_refused(make_harness, checkpoint, frames):
    release = threading.Event()

    def slow_loader(spec):  # the real loader, held until the test has tried a second load
        release.wait(30)
        return load_engine(spec, backend="torch")

    h = make_harness(model_loader=slow_loader)
    h.send_lockstep(h.sender("busy"), frames[:3])
    assert h.control.load_model(str(checkpoint), wait=False) == {}
    with pytest.raises(DaemonError) as info:
        h.control.request("load_model", model=str(checkpoint))
    assert info.value.code == "model_loading"
    status = h.control.status()["model"]
    assert status["loading"] == str(checkpoint)
    # Frames are still served by the old model while the load is in progress.
    assert h.send_lockstep(h.sender("busy"), frames[3:4], seqs=[3])[0].seq == 3
    release.set()
    for _ in range(200):
        if h.control.status()["model"]["loading"] is None:
            break
        threading.Event().wait(0.05)
    assert h.control.status()["model"]["loading"] is None
