"""Fault injection against a real daemon: rigs that disconnect and reconnect, subscribers that stall or
vanish, a flooded control socket, model loads that fail halfway, SIGTERM and SIGKILL of the process.
docs/reliability.md lists each fault with what the daemon does."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import zmq
from daemon_helpers import OfflineReference, make_config

from rtcalm import protocol
from rtcalm.client import DaemonError, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon.process import DaemonProcess
from rtcalm.sim import make_synthetic

N = 12


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=120, seed=21).dff


def test_rig_reconnects_mid_session_and_continues_its_stream(harness, model, frames):
    first = harness.sender("rig")
    before = harness.send_lockstep(first, frames[:20])
    first.close()  # the rig process goes away ...
    second = harness.sender("rig")  # ... and comes back, continuing its sequence numbers
    after = harness.send_lockstep(second, frames[20:40], seqs=range(20, 40))
    assert {p.stream_id for p in before + after} == {before[0].stream_id}  # one continuous stream
    expected = OfflineReference(model, N, make_config()).run(frames[:40])
    np.testing.assert_allclose(after[-1].forecast, expected[-1], rtol=1e-5, atol=1e-5, equal_nan=True)


def test_rig_restarting_its_sequence_numbers(harness, frames):
    first = harness.sender("restart")
    old_stream = harness.send_lockstep(first, frames[:20])[-1].stream_id
    first.close()
    # Without reset the restarted numbers look old: dropped, each answered with out_of_order.
    careless = harness.sender("restart")
    careless.send(frames[20], seq=0)
    assert harness.error("restart").code == "out_of_order"
    careless.close()
    # With reset on its first frame: a fresh stream from seq 0, served at once.
    restarted = RigSender(harness.endpoints["ingest"], session="restart", context=harness.context)
    restarted.send(frames[21], reset=True)
    prediction = harness.prediction("restart")
    assert (prediction.seq, prediction.stream_frame) == (0, 0) and prediction.stream_id != old_stream
    restarted.close()
    assert harness.session_status("restart")["reordered"] == 1


def test_stalled_and_vanished_subscribers_do_not_hold_the_daemon(harness, frames):
    stalled = PredictionSubscriber(harness.endpoints["publish"], hwm=1, context=harness.context)  # never reads
    vanished = PredictionSubscriber(harness.endpoints["publish"], context=harness.context)
    sender = harness.sender("subs")
    harness.send_lockstep(sender, frames[:10])
    vanished.close()  # disappears without unsubscribing
    start = time.monotonic()
    served = harness.send_lockstep(sender, frames[10:110], seqs=range(10, 110))
    assert [p.seq for p in served] == list(range(10, 110))  # the live subscriber missed nothing
    assert time.monotonic() - start < 15
    stalled.close()


def test_flooded_control_socket_answers_everything_and_keeps_serving(harness, frames):
    flood = harness.context.socket(zmq.DEALER)  # a DEALER need not wait for replies: a flood
    flood.setsockopt(zmq.LINGER, 0)
    flood.connect(harness.endpoints["control"])
    n_requests = 2000
    for _ in range(n_requests):
        flood.send_multipart([b"", protocol.build_request("status")])
    for _ in range(200):
        flood.send_multipart([b"", b"\xc1 not msgpack"])
    sender = harness.sender("busy")
    served = harness.send_lockstep(sender, frames[:20])  # frames are still answered during the flood
    assert [p.seq for p in served] == list(range(20))
    replies, bad, deadline = 0, 0, time.monotonic() + 15
    while replies + bad < n_requests + 200 and time.monotonic() < deadline:
        if flood.poll(500):
            reply = protocol.parse_reply(flood.recv_multipart()[1])
            if isinstance(reply, protocol.ErrorMessage):
                assert reply.code == "malformed"
                bad += 1
            else:
                replies += 1
    assert (replies, bad) == (n_requests, 200)
    flood.close()


@pytest.mark.parametrize("damage", ["truncated weights", "mismatched shapes"])
def test_model_load_failing_halfway_keeps_the_old_model(harness, checkpoint, second_checkpoint, tmp_path, frames,
                                                        damage):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(second_checkpoint, broken)
    weights = broken / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:  # a valid file whose tensors do not fit the config (d_model doubled)
        config = json.loads((broken / "config.json").read_text())
        config["model_config"]["d_model"] *= 2
        (broken / "config.json").write_text(json.dumps(config))
    sender = harness.sender("swap")
    first = harness.send_lockstep(sender, frames[:10])[-1]
    with pytest.raises(DaemonError) as info:
        harness.control.load_model(str(broken))
    assert info.value.code == "model_load_failed"
    later = harness.send_lockstep(sender, frames[10:20], seqs=range(10, 20))
    assert {p.model_version for p in later} == {first.model_version}
    assert later[0].stream_id == first.stream_id
    assert str(broken) in harness.control.status()["model"]["last_load_error"]


def _wait_subscribed(sender: RigSender, subscriber: PredictionSubscriber) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sender.send(np.zeros(N, np.float32))
        if subscriber.receive(timeout_ms=200) is not None:
            while subscriber.receive(timeout_ms=200) is not None:
                pass
            return
    raise TimeoutError("no prediction from the daemon")


def test_sigterm_drains_and_exits_cleanly_and_sigkill_restarts_clean(checkpoint, frames):
    daemon = DaemonProcess(model=str(checkpoint), metrics=False, extra_args=["--backend", "torch"])
    endpoints = daemon.start()
    context = zmq.Context()
    try:
        subscriber = PredictionSubscriber(endpoints["publish"], sessions="term", context=context)
        sender = RigSender(endpoints["ingest"], session="term", context=context)
        _wait_subscribed(sender, subscriber)
        first = sender.next_seq
        for frame in frames:  # a burst, then SIGTERM at once: the queued frames are still answered
            sender.send(frame)
        last = sender.next_seq - 1
        daemon.process.send_signal(signal.SIGTERM)
        seqs = []
        while (message := subscriber.receive(timeout_ms=5000)) is not None:
            assert isinstance(message, Prediction)
            seqs.append(message.seq)
        assert daemon.process.wait(30) == 0
        assert seqs and seqs[-1] == last and min(seqs) >= first, (seqs[:3], seqs[-3:], last)
        assert "rtcalm serve: stopped" in daemon.log()
        for client in (sender, subscriber):
            client.close()

        # SIGKILL: no clean-up at all. A new daemon on the same addresses comes up and serves.
        again = DaemonProcess(model=str(checkpoint), metrics=False, extra_args=[
            "--backend", "torch", "--ingest", endpoints["ingest"], "--publish", endpoints["publish"],
            "--control", endpoints["control"]])
        again.start()
        os.kill(again.process.pid, signal.SIGKILL)
        assert again.process.wait(30) == -signal.SIGKILL
        restarted = DaemonProcess(model=str(checkpoint), metrics=False, extra_args=[
            "--backend", "torch", "--ingest", endpoints["ingest"], "--publish", endpoints["publish"],
            "--control", endpoints["control"]])
        with restarted:
            assert restarted.endpoints["ingest"] == endpoints["ingest"]
            subscriber = PredictionSubscriber(endpoints["publish"], sessions="after", context=context)
            sender = RigSender(endpoints["ingest"], session="after", context=context)
            _wait_subscribed(sender, subscriber)
            sender.send(frames[0])
            assert isinstance(subscriber.receive(timeout_ms=10000), Prediction)
            for client in (sender, subscriber):
                client.close()
    finally:
        daemon.stop()
        context.destroy(linger=0)
