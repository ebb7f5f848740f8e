"""``trigger`` messages on the client side, over real ZeroMQ sockets (no daemon): a PUB socket publishes
what the daemon publishes (predictions, errors and triggers of several sessions) and the client's
subscribers, ``rtcalm listen`` and parse_published must take exactly their share; ControlClient's rule
commands against a real REP socket."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from rtcalm import protocol
from rtcalm.client import ControlClient, DaemonError, PredictionSubscriber, Trigger, TriggerSubscriber
from rtcalm.protocol import ProtocolError

SESSIONS = ("rig1", "rig10", "rig2")  # rig10 starts with rig1: the NUL terminator must keep them apart


def make_trigger(session: str, seq: int, rule: str = "burst") -> Trigger:
    return Trigger(session=session, seq=seq, rule=rule, kind="activity", value=2.5 + seq, threshold=2.0,
                   direction="above", t_acq_ns=1_700_000_000_000_000_000 + seq, t_fire_ns=1_700_000_000_100_000_000 + seq,
                   stream_id=7, stream_frame=100 + seq)


def prediction_bytes(session: str, seq: int) -> bytes:
    return protocol.build_prediction(
        session=session, seq=seq, t_acq_ns=1_000 + seq, t_recv_ns=2_000 + seq, t_pub_ns=3_000 + seq,
        forecast=np.full((3, 2), 0.5, np.float32), predictable=np.array([1, 0, 1], np.uint8), decoded={},
        model_version="small@000000000000", rate_hz=30.0, stream_id=7, stream_frame=seq, folded=0, stage_ns={})


class Publisher:
    """A PUB socket that publishes, per round and per session, a prediction, an error and a trigger."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.seq = 0
        self.sent: list[Trigger] = []

    def round(self) -> None:
        for session in SESSIONS:
            self.socket.send_multipart([protocol.topic_for(session), prediction_bytes(session, self.seq)])
            self.socket.send_multipart([protocol.topic_for(session),
                                        protocol.build_error("duplicate", "seen", session=session, seq=self.seq)])
            trigger = make_trigger(session, self.seq)
            self.socket.send_multipart([protocol.trigger_topic(session), protocol.build_trigger(trigger)])
            self.sent.append(trigger)
        self.seq += 1

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def publisher(context):
    publisher = Publisher(context)
    yield publisher
    publisher.close()


def collect(publisher: Publisher, subscriber, rounds: int = 5, timeout_s: float = 20.0) -> list:
    """Publish rounds until the subscriber has received ``rounds`` complete rounds after its first message
    (it misses what was published before its subscription reached the PUB socket), then drain it."""
    received, deadline, first_round = [], time.monotonic() + timeout_s, None
    while first_round is None or publisher.seq < first_round + rounds:
        assert time.monotonic() < deadline, f"only {len(received)} messages within {timeout_s} s"
        publisher.round()
        while (message := subscriber.receive(timeout_ms=20)) is not None:
            received.append(message)
            if first_round is None:
                first_round = publisher.seq
    while (message := subscriber.receive(timeout_ms=200)) is not None:
        received.append(message)
    return received


def kinds_by_session(messages) -> set[tuple[str, str]]:
    return {(type(m).__name__, m.session) for m in messages}


def test_trigger_round_trip():
    trigger = make_trigger("rig1", 5)
    parsed = protocol.parse_published([protocol.trigger_topic("rig1"), protocol.build_trigger(trigger)])
    assert parsed == trigger and type(parsed.value) is float and type(parsed.seq) is int


def test_trigger_subscriber_receives_only_the_triggers_of_its_session(publisher, context):
    with TriggerSubscriber(publisher.address, sessions="rig1", context=context) as triggers:
        received = collect(publisher, triggers)
    assert received and all(isinstance(m, Trigger) for m in received)
    assert {m.session for m in received} == {"rig1"}  # not rig10, not rig2, no predictions or errors
    sent = {(t.session, t.seq): t for t in publisher.sent}
    assert all(m == sent[(m.session, m.seq)] for m in received)  # every field as sent
    seqs = [m.seq for m in received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, in order


def test_trigger_subscriber_of_several_and_of_every_session(publisher, context):
    with TriggerSubscriber(publisher.address, sessions=["rig10", "rig2"], context=context) as some, \
            TriggerSubscriber(publisher.address, context=context) as every:
        received_some = collect(publisher, some)
        received_every = collect(publisher, every)
    assert kinds_by_session(received_some) == {("Trigger", "rig10"), ("Trigger", "rig2")}
    assert kinds_by_session(received_every) == {("Trigger", session) for session in SESSIONS}


def test_prediction_subscriber_and_triggers(publisher, context):
    """A session's prediction subscriber gets no triggers unless asked; one of every session gets them."""
    with PredictionSubscriber(publisher.address, sessions="rig1", context=context) as plain, \
            PredictionSubscriber(publisher.address, sessions="rig1", triggers=True, context=context) as with_triggers, \
            PredictionSubscriber(publisher.address, context=context) as every:
        received_plain = collect(publisher, plain)
        received_with = collect(publisher, with_triggers)
        received_every = collect(publisher, every)
    assert kinds_by_session(received_plain) == {("Prediction", "rig1"), ("ErrorMessage", "rig1")}
    assert kinds_by_session(received_with) == {("Prediction", "rig1"), ("ErrorMessage", "rig1"), ("Trigger", "rig1")}
    assert kinds_by_session(received_every) == {(kind, session) for session in SESSIONS
                                                for kind in ("Prediction", "ErrorMessage", "Trigger")}


def test_trigger_subscriber_iterates(publisher, context):
    with TriggerSubscriber(publisher.address, sessions="rig2", context=context) as triggers:
        deadline = time.monotonic() + 20
        while triggers.receive(timeout_ms=20) is None:  # subscribed from here on
            assert time.monotonic() < deadline
            publisher.round()
        publisher.round()
        assert triggers.socket.poll(5000)
        message = next(iter(triggers))
    assert isinstance(message, Trigger) and message.session == "rig2"


# --- malformed trigger messages ----------------------------------------------------------------------

def trigger_map(**changes) -> dict:
    message = {"v": 1, "type": "trigger", "session": "rig1", "seq": 3, "rule": "burst", "kind": "activity",
               "value": 2.5, "threshold": 2.0, "direction": "above", "t_acq_ns": 10, "t_fire_ns": 20,
               "stream_id": 1, "stream_frame": 3}
    for key, value in changes.items():
        if value is MISSING:
            del message[key]
        else:
            message[key] = value
    return message


MISSING = object()


def test_the_valid_map_parses():
    """Guards the tests below: without the change, the message is valid."""
    parsed = protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map())])
    assert isinstance(parsed, Trigger) and parsed.rule == "burst"


@pytest.mark.parametrize("field", ["session", "seq", *protocol.TRIGGER_FIELDS])
def test_a_missing_field_is_refused(field):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map(**{field: MISSING}))])
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("changes", [
    {"value": 2}, {"value": "2.5"}, {"value": None}, {"threshold": True}, {"rule": 5}, {"kind": b"activity"},
    {"direction": ["above"]}, {"seq": 3.0}, {"seq": -1}, {"seq": 2**63}, {"t_acq_ns": "10"}, {"t_fire_ns": True},
    {"stream_id": 1.5}, {"stream_frame": -3}, {"session": 7},
], ids=lambda changes: ",".join(f"{k}={v!r}" for k, v in changes.items()))
def test_a_field_of_the_wrong_type_is_refused(changes):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map(**changes))])
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("topic", [
    protocol.topic_for("rig1"),           # a prediction's topic
    protocol.trigger_topic("rig10"),      # another session's
    protocol.trigger_topic(),             # the subscription prefix, without the session
    b"!trigger\x00rig1",                  # no NUL terminator
    protocol.trigger_topic("rig1") + b"x",
])
def test_a_trigger_under_the_wrong_topic_is_refused(topic):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([topic, msgpack.packb(trigger_map())])
    assert info.value.code == "bad_field"


def test_a_prediction_under_a_trigger_topic_is_refused():
    with pytest.raises(ProtocolError):
        protocol.parse_published([protocol.trigger_topic("rig1"), prediction_bytes("rig1", 0)])


def test_wrong_envelopes_are_refused():
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map(v=2))])
    assert info.value.code == "unsupported_version"
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map(type="triggered"))])
    assert info.value.code == "wrong_type"
    with pytest.raises(ProtocolError) as info:
        protocol.parse_published([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map())[:-3]])
    assert info.value.code == "malformed"


def test_the_trigger_subscriber_raises_for_what_is_not_a_trigger(publisher, context):
    """Over a real socket: a malformed trigger raises ProtocolError, and so does a non-trigger that a
    foreign publisher sent under a trigger topic (its 'session' is no session id); the next good trigger
    is received."""
    foreign_session = "!trigger\x00rig1"  # topic_for(foreign_session) == trigger_topic("rig1")
    with TriggerSubscriber(publisher.address, sessions="rig1", context=context) as triggers:
        deadline = time.monotonic() + 20
        while triggers.receive(timeout_ms=20) is None:
            assert time.monotonic() < deadline
            publisher.round()
        while triggers.receive(timeout_ms=200) is not None:
            pass
        publisher.socket.send_multipart([protocol.trigger_topic("rig1"), msgpack.packb(trigger_map(value=1))])
        publisher.socket.send_multipart([protocol.trigger_topic("rig1"),
                                         protocol.build_error("duplicate", "x", session=foreign_session)])
        publisher.socket.send_multipart([protocol.trigger_topic("rig1"), protocol.build_trigger(make_trigger("rig1", 99))])
        with pytest.raises(ProtocolError) as info:
            triggers.receive(timeout_ms=5000)
        assert info.value.code == "bad_field"
        with pytest.raises(ProtocolError) as info:
            triggers.receive(timeout_ms=5000)
        assert info.value.code == "wrong_type"
        assert triggers.receive(timeout_ms=5000) == make_trigger("rig1", 99)


# --- rtcalm listen -------------------------------------------------------------------------------------

def listen_until_exit(publisher: Publisher, *args: str, timeout_s: float = 60.0) -> list[dict]:
    process = subprocess.Popen([sys.executable, "-m", "rtcalm", "listen", "--from", publisher.address, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None:
            assert time.monotonic() < deadline, "rtcalm listen did not finish"
            publisher.round()
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            process.kill()
    out, err = process.communicate()
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


TRIGGER_LINE_KEYS = {"type", "session", "seq", "rule", "kind", "value", "threshold", "direction", "t_acq_ns",
                     "t_fire_ns", "stream_id", "stream_frame", "t_listen_ns"}


def check_trigger_lines(publisher: Publisher, records: list[dict]) -> None:
    sent = {(t.session, t.seq): t for t in publisher.sent}
    for record in records:
        if record["type"] == "trigger":
            assert set(record) == TRIGGER_LINE_KEYS
            trigger = sent[(record["session"], record["seq"])]
            assert {k: v for k, v in record.items() if k not in ("type", "t_listen_ns")} == vars(trigger)
            assert isinstance(record["t_listen_ns"], int) and record["t_listen_ns"] > 0


def test_listen_prints_a_sessions_predictions_errors_and_triggers(publisher):
    records = listen_until_exit(publisher, "--session", "rig1", "--count", "12")
    assert len(records) == 12
    assert {r["session"] for r in records} == {"rig1"}
    assert {r["type"] for r in records} == {"prediction", "error", "trigger"}
    check_trigger_lines(publisher, records)


def test_listen_triggers_only(publisher):
    records = listen_until_exit(publisher, "--session", "rig1", "--session", "rig2", "--triggers-only",
                                "--count", "8")
    assert len(records) == 8 and {r["type"] for r in records} == {"trigger"}
    assert {r["session"] for r in records} == {"rig1", "rig2"}
    check_trigger_lines(publisher, records)
    records = listen_until_exit(publisher, "--triggers-only", "--count", "9")
    assert {r["type"] for r in records} == {"trigger"} and {r["session"] for r in records} == set(SESSIONS)


def test_listen_without_a_session_prints_triggers_too(publisher):
    records = listen_until_exit(publisher, "--count", "18")
    assert {r["type"] for r in records} == {"prediction", "error", "trigger"}
    check_trigger_lines(publisher, records)


# --- control commands ------------------------------------------------------------------------------------

class FakeDaemonControl:
    """A real REP socket answering each request with a reply that echoes it, or an error for rule 'nope'."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.requests: list[protocol.ControlRequest] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            request = protocol.parse_request(self.socket.recv())
            self.requests.append(request)
            if "nope" in request.args.get("rules", []):
                self.socket.send(protocol.build_error("unknown_rule", "no rule 'nope'", session="rig1",
                                                      cmd=request.cmd))
            else:
                self.socket.send(protocol.build_reply(request.cmd, echo=request.args))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close()


def test_control_client_rule_commands(context, tmp_path):
    daemon = FakeDaemonControl(context)
    control = ControlClient(daemon.address, timeout_ms=5000, context=context)
    try:
        assert control.load_rules("rig1", tmp_path / "rules.toml")["echo"] == {
            "session": "rig1", "path": str(tmp_path / "rules.toml")}
        assert control.arm("rig1")["echo"] == {"session": "rig1"}  # no 'rules': all of them
        assert control.arm("rig1", ["burst", "quiet"])["echo"] == {"session": "rig1", "rules": ["burst", "quiet"]}
        assert control.disarm("rig1", ("burst",))["echo"] == {"session": "rig1", "rules": ["burst"]}
        assert control.disarm("rig1", "burst")["echo"] == {"session": "rig1", "rules": ["burst"]}  # not b,u,r,s,t
        assert control.disarm("rig1")["echo"] == {"session": "rig1"}
        assert control.rules("rig1")["echo"] == {"session": "rig1"}
        with pytest.raises(DaemonError) as info:
            control.arm("rig1", ["nope"])
        assert info.value.code == "unknown_rule"
        assert [r.cmd for r in daemon.requests] == ["load_rules", "arm", "arm", "disarm", "disarm", "disarm", "rules",
                                                    "arm"]
    finally:
        control.close()
        daemon.close()


def test_client_exports():
    import rtcalm.client

    assert {"Trigger", "TriggerSubscriber"} <= set(rtcalm.client.__all__)
    assert rtcalm.client.Trigger is protocol.Trigger


def test_docs_describe_the_trigger_message_and_the_rule_commands():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    section = doc.split("### `trigger`")[1].split("\n### ")[0]
    for field in ("session", "seq", *protocol.TRIGGER_FIELDS):
        assert f"| `{field}`" in section, f"trigger field {field!r} is not in its table in docs/protocol.md"
    assert r'b"!trigger\x00rig1\x00"' in section
    rule_maps = doc.split("#### Rule maps")[1].split("\n## ")[0]
    for key in ("armed", "streak", "held", "value", "frames_since_fire", "serial_byte"):
        assert f"`{key}`" in rule_maps
    for code in ("rules_invalid", "unknown_rule"):
        assert f"| `{code}` |" in doc.split("## Error codes")[1]
