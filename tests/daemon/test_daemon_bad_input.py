"""Every kind of bad ingest message: the daemon publishes an error with the right code (under the
sender's session when it can be read), counts it, and keeps serving good frames with its state intact."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from daemon_helpers import OfflineReference, make_config

from rtcalm.client import DaemonError
from rtcalm.sim import make_synthetic

N = 16


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=100, seed=5).dff


def frame_fields(**changes) -> dict:
    message = {"v": 1, "type": "frame", "session": "bad", "seq": 20, "t_acq_ns": 1,
               "n": N, "dff": np.zeros(N, "<f4").tobytes()}
    message.update(changes)
    return {k: v for k, v in message.items() if v is not None}


def packed(**changes) -> bytes:
    return msgpack.packb(frame_fields(**changes), use_bin_type=True)


inf_frame = np.zeros(N, "<f4")
inf_frame[3] = np.inf
huge_frame = np.zeros(N, "<f4")
huge_frame[3] = 3e38  # finite float32: it once entered the statistics and left forecasts near 6e37

BAD_MESSAGES = [
    ("garbage bytes", [b"\x00\xffnot msgpack at all\xc1"], "malformed", ""),
    ("empty message", [b""], "malformed", ""),
    ("msgpack but not a map", [msgpack.packb([1, 2, 3])], "malformed", ""),
    ("two message parts", [packed(), b"extra"], "malformed", ""),
    ("wrong version", [packed(v=2)], "unsupported_version", "bad"),
    ("version as a string", [packed(v="1")], "unsupported_version", "bad"),
    ("no version", [packed(v=None)], "unsupported_version", "bad"),
    ("wrong type", [packed(type="prediction")], "wrong_type", "bad"),
    ("missing seq", [packed(seq=None)], "bad_field", "bad"),
    ("negative seq", [packed(seq=-1)], "bad_field", "bad"),
    ("seq as a float", [packed(seq=20.0)], "bad_field", "bad"),
    ("seq as a bool", [packed(seq=True)], "bad_field", "bad"),
    ("bad session id", [packed(session="no spaces allowed")], "bad_field", ""),
    ("zero neurons", [packed(n=0, dff=b"")], "bad_field", "bad"),
    ("dff as a list", [packed(dff=[0.0] * N)], "bad_field", "bad"),
    ("wrong neuron count for the payload", [packed(n=N + 1)], "payload_size", "bad"),
    ("truncated payload", [packed(dff=np.zeros(N, "<f4").tobytes()[:-3])], "payload_size", "bad"),
    ("payload too long", [packed(dff=np.zeros(N + 2, "<f4").tobytes())], "payload_size", "bad"),
    ("infinite value", [packed(dff=inf_frame.tobytes())], "non_finite", "bad"),
    ("finite dF/F far beyond max_abs_dff", [packed(dff=huge_frame.tobytes())], "value_out_of_range", "bad"),
    ("negative dF/F just beyond max_abs_dff", [packed(dff=np.full(N, -1.001e4, "<f4").tobytes())],
     "value_out_of_range", "bad"),
    ("raw fluorescence beyond max_abs_fluorescence",
     [packed(dff=None, raw=huge_frame.tobytes(), neuropil=np.zeros(N, "<f4").tobytes())], "value_out_of_range", "bad"),
    ("both dff and raw", [packed(raw=np.zeros(N, "<f4").tobytes(), neuropil=np.zeros(N, "<f4").tobytes())],
     "bad_field", "bad"),
    ("too many neurons", [packed(n=100, dff=np.zeros(100, "<f4").tobytes())], "too_large", "bad"),
    ("message over the size limit", [packed(dff=np.zeros(N, "<f4").tobytes(), pad=b"x" * 5000)], "too_large", ""),
]


@pytest.fixture(scope="module")
def bad_harness(request, checkpoint):
    from daemon_helpers import Harness

    h = Harness(make_config(limits={"max_neurons": 64, "max_message_bytes": 4096}), str(checkpoint))
    request.addfinalizer(h.close)
    return h


@pytest.mark.parametrize("what, parts, code, session", BAD_MESSAGES, ids=[m[0] for m in BAD_MESSAGES])
def test_bad_message_is_answered_counted_and_harmless(bad_harness, model, frames, what, parts, code, session):
    h = bad_harness
    sender = h.sender("bad")
    if "bad" not in {s["session"] for s in h.control.status()["sessions"]}:
        h.send_lockstep(sender, frames[:20])  # a good stream first, seq 0..19
    before = h.session_status("bad")

    h.push_raw(*parts)
    error = h.error()
    assert error.code == code, error.message
    assert error.session == session
    assert error.message

    # The good stream goes on exactly as if the bad message had never been sent.
    sender.next_seq = before["last_seq"] + 1
    good = h.send_lockstep(sender, frames[sender.next_seq:sender.next_seq + 1])[0]
    reference = OfflineReference(model, N, make_config()).run(frames[:good.seq + 1])
    np.testing.assert_allclose(good.forecast, reference[-1], rtol=1e-5, atol=1e-5, equal_nan=True)
    after = h.session_status("bad")
    assert after["stream_id"] == before["stream_id"]
    assert after["accepted"] == before["accepted"] + 1
    assert after["rejected"] == before["rejected"] + (1 if session == "bad" else 0)


def test_values_at_the_bound_are_accepted_like_any_other(make_harness, model, frames):
    """limits.max_abs_dff is inclusive, and a frame with a value beyond it is dropped whole: the stream then
    equals the reference without that frame (a gap), and the neuron's forecasts stay at data scale."""
    h = make_harness(limits={"max_abs_dff": 50.0})
    sender = h.sender("bound")
    h.send_lockstep(sender, frames[:20])
    at_bound = frames[20].copy()
    at_bound[0] = -50.0
    assert h.send_lockstep(sender, [at_bound])[0].seq == 20
    beyond = frames[21].copy()
    beyond[3] = 3e38
    sender.send(beyond)
    error = h.error("bound")
    assert (error.code, error.seq) == ("value_out_of_range", 21)
    assert "neuron 3" in error.message and "limits.max_abs_dff" in error.message
    good = h.send_lockstep(sender, frames[22:23], seqs=[22])[0]
    reference = OfflineReference(model, N, make_config())
    reference.run(np.concatenate([frames[:20], at_bound[None]]))
    reference.step(np.full(N, np.nan, np.float32))  # frame 21 was refused: its slot is a gap
    np.testing.assert_allclose(good.forecast, reference.step(frames[22]), rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.nanmax(np.abs(good.forecast)) < 100
    assert h.daemon.metrics.malformed["value_out_of_range"]._value.get() == 1
    assert h.daemon.metrics.errors_published["value_out_of_range"]._value.get() == 1


def test_idle_sessions_expire_and_free_their_place(make_harness, frames, caplog):
    """Rigs that come back under new session ids must not lock others out: a session without frames for
    sessions.idle_timeout_s is stopped (logged, counted), and a new session gets its place."""
    h = make_harness(limits={"max_sessions": 2}, sessions={"idle_timeout_s": 1.0})
    caplog.set_level("INFO", logger="rtcalm.daemon")
    old, busy = h.sender("old"), h.sender("busy")
    h.send_lockstep(old, frames[:3])
    first_stream = h.session_status("old")["stream_id"]
    h.send_lockstep(busy, frames[:3])
    newcomer = h.sender("new")
    newcomer.send(frames[0])
    error = h.error("new")
    assert error.code == "too_many_sessions" and "idle_timeout_s" in error.message

    # "busy" keeps streaming every 0.2 s; "old" falls silent and expires after a second.
    deadline = time.monotonic() + 10
    while "old" in {s["session"] for s in h.control.status()["sessions"]}:
        assert time.monotonic() < deadline, "the idle session never expired"
        h.send_lockstep(busy, frames[busy.next_seq:busy.next_seq + 1])
        time.sleep(0.2)
    assert {s["session"] for s in h.control.status()["sessions"]} == {"busy"}
    assert h.daemon.metrics.sessions_expired._value.get() == 1
    assert any("session old expired" in r.getMessage() for r in caplog.records)
    assert h.send_lockstep(newcomer, frames[1:2], seqs=[1])[0].seq == 1  # the freed place
    # The expired id is a new stream when its rig comes back (once there is room again).
    h.control.stop_session("new")
    back = h.send_lockstep(old, frames[3:4], seqs=[3])[0]
    assert back.stream_frame == 0 and h.session_status("old")["stream_id"] != first_stream


def test_started_sessions_expire_too(make_harness, frames):
    """A session started with the control command, but never sent a frame, expires like any other."""
    h = make_harness(limits={"max_sessions": 1}, sessions={"idle_timeout_s": 0.3})
    h.control.start_session("started", N)  # a started session expires too when no frame comes
    time.sleep(0.6)
    assert h.send_lockstep(h.sender("rig"), frames[:1])[0].seq == 0
    assert {s["session"] for s in h.control.status()["sessions"]} == {"rig"}


def test_pinned_session_rejects_another_neuron_count(make_harness, model, frames):
    h = make_harness()
    h.control.start_session("pinned", N)
    sender = h.sender("pinned")
    h.send_lockstep(sender, frames[:12])
    sender.send(np.zeros(N + 4, np.float32))
    error = h.error("pinned")
    assert error.code == "neuron_count" and error.seq == 12
    good = h.send_lockstep(sender, frames[13:14], seqs=[13])[0]
    reference = OfflineReference(model, N, make_config())
    reference.run(frames[:12])
    reference.step(np.full(N, np.nan, np.float32))  # seq 12 was refused: its slot is a gap
    np.testing.assert_allclose(good.forecast, reference.step(frames[13]), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_session_limits_and_auto_start(make_harness, frames):
    h = make_harness(limits={"max_sessions": 1}, sessions={"auto_start": False})
    h.sender("nobody").send(frames[0])
    assert h.error("nobody").code == "unknown_session"
    h.control.start_session("one", N)
    h.send_lockstep(h.sender("one"), frames[:2])
    h.control.stop_session("one")
    h.control.start_session("two", N)
    from rtcalm.client import DaemonError

    with pytest.raises(DaemonError) as info:
        h.control.start_session("three", N)
    assert info.value.code == "too_many_sessions"


def test_auto_started_sessions_are_limited(make_harness, frames):
    h = make_harness(limits={"max_sessions": 1})
    h.send_lockstep(h.sender("first"), frames[:2])
    h.sender("second").send(frames[0])
    assert h.error("second").code == "too_many_sessions"
    assert h.send_lockstep(h.sender("first"), frames[2:3], seqs=[2])[0].seq == 2



def test_total_neurons_over_all_sessions_are_bounded(make_harness, frames):
    """limits.max_total_neurons bounds memory across sessions: a frame or start that would exceed it is an
    error reply (too_large) and a counter, and the sessions already running are untouched."""
    h = make_harness(limits={"max_total_neurons": 2 * N + 2})  # room for two sessions of N (plus the probe)
    first, second = h.sender("one"), h.sender("two")
    h.send_lockstep(first, frames[:3])
    h.send_lockstep(second, frames[:3])
    third = h.sender("three")
    third.send(frames[0])
    error = h.error("three")
    assert error.code == "too_large" and "max_total_neurons" in error.message
    with pytest.raises(DaemonError) as info:
        h.control.start_session("four", N)
    assert info.value.code == "too_large"
    # Growing a running session past the budget is refused too; it keeps its stream.
    second.send(np.zeros(N + 8, np.float32), seq=3)
    assert h.error("two").code == "too_large"
    assert h.send_lockstep(second, frames[4:5], seqs=[4])[0].forecast.shape[0] == N
    sessions = {s["session"] for s in h.control.status()["sessions"]}
    assert sessions == {"one", "two"}
    errors = h.daemon.metrics.errors_published["too_large"]._value.get()
    assert errors >= 2
