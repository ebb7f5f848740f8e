"""The wire protocol without any socket: round trips, every validation rule, fuzzing, and that
docs/protocol.md documents what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtcalm import protocol
from rtcalm.protocol import ErrorMessage, Prediction, ProtocolError

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_frame_round_trip_and_byte_layout():
    dff = np.array([0.5, np.nan, -1.25], dtype=np.float32)
    data = protocol.build_frame("rig-1", 7, 123456789, dff)
    frame = protocol.parse_frame(data)
    assert (frame.session, frame.seq, frame.t_acq_ns, frame.n_neurons, frame.reset) == ("rig-1", 7, 123456789, 3, False)
    np.testing.assert_array_equal(frame.dff, dff)
    raw = msgpack.unpackb(data, raw=False)
    assert raw["dff"] == b"\x00\x00\x00\x3f" + np.float32(np.nan).tobytes() + b"\x00\x00\xa0\xbf"  # little-endian
    assert raw == {"v": 1, "type": "frame", "session": "rig-1", "seq": 7, "t_acq_ns": 123456789, "n": 3,
                   "dff": raw["dff"]}


def test_big_endian_input_is_sent_little_endian():
    dff = np.array([1.0, 2.0], dtype=">f4")
    frame = protocol.parse_frame(protocol.build_frame("r", 0, 0, dff))
    np.testing.assert_array_equal(frame.dff, [1.0, 2.0])


def test_fluorescence_frame_and_reset_flag():
    frame = protocol.parse_frame(protocol.build_frame("r", 0, 0, raw=[1, 2], neuropil=[3, 4], reset=True))
    assert frame.dff is None and frame.reset
    np.testing.assert_array_equal(frame.raw, [1, 2])
    np.testing.assert_array_equal(frame.neuropil, [3, 4])


def message(**changes) -> bytes:
    body = {"v": 1, "type": "frame", "session": "s", "seq": 1, "t_acq_ns": 2, "n": 2,
            "dff": np.zeros(2, "<f4").tobytes()}
    body.update(changes)
    return msgpack.packb({k: v for k, v in body.items() if v is not None}, use_bin_type=True)


@pytest.mark.parametrize("data, code", [
    (b"", "malformed"),
    (b"\xc1", "malformed"),
    (msgpack.packb(3), "malformed"),
    (msgpack.packb({1: 2}, use_bin_type=True), "malformed"),  # non-string key
    (message() + b"\x00", "malformed"),  # trailing bytes
    (message(v=None), "unsupported_version"),
    (message(v=True), "unsupported_version"),
    (message(v=0), "unsupported_version"),
    (message(type=None), "wrong_type"),
    (message(type="request"), "wrong_type"),
    (message(session=""), "bad_field"),
    (message(session="x" * 65), "bad_field"),
    (message(session="a/b"), "bad_field"),
    (message(session=b"s"), "bad_field"),
    (message(seq=2**63), "bad_field"),
    (message(seq=-5), "bad_field"),
    (message(seq="1"), "bad_field"),
    (message(t_acq_ns=None), "bad_field"),
    (message(n=True), "bad_field"),
    (message(reset=1), "bad_field"),
    (message(dff=None), "bad_field"),
    (message(dff="text"), "bad_field"),
    (message(dff=b"\x00" * 7), "payload_size"),
    (message(dff=b"\x00" * 12), "payload_size"),
    (message(dff=np.array([1, -np.inf], "<f4").tobytes()), "non_finite"),
    (message(dff=None, raw=np.zeros(2, "<f4").tobytes()), "bad_field"),  # raw without neuropil
    (message(dff=None, raw=np.zeros(2, "<f4").tobytes(), neuropil=np.array([np.inf, 0], "<f4").tobytes()),
     "non_finite"),
])
def test_frame_validation(data, code):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame(data)
    assert info.value.code == code and info.value.message


def test_limits():
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame(message(), max_bytes=10)
    assert info.value.code == "too_large"
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame(message(), max_neurons=1)
    assert info.value.code == "too_large"


def test_nan_is_allowed_and_the_view_is_read_only():
    frame = protocol.parse_frame(message(dff=np.array([np.nan, 1], "<f4").tobytes()))
    assert np.isnan(frame.dff[0]) and not frame.dff.flags.writeable


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parser(data):
    try:
        protocol.parse_frame(data, max_bytes=1000, max_neurons=100)
    except ProtocolError as error:
        assert error.code in protocol.ERROR_CODES


values = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8) | \
    st.binary(max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "session", "seq", "t_acq_ns", "n", "dff", "raw", "neuropil",
                                        "reset"]), values))
def test_arbitrary_maps_never_crash_the_parser(fields):
    try:
        frame = protocol.parse_frame(msgpack.packb(fields, use_bin_type=True))
    except ProtocolError as error:
        assert error.code in protocol.ERROR_CODES
    else:
        assert frame.n_neurons >= 1


def test_peek_session_never_raises():
    assert protocol.peek_session(b"\xc1") == ("", None)
    assert protocol.peek_session(message(session="ok", seq=4)) == ("ok", 4)
    assert protocol.peek_session(message(session="not ok!", seq=-1)) == ("", None)


def test_prediction_round_trip_and_topic():
    forecast = np.arange(12, dtype=np.float32).reshape(4, 3)
    payload = protocol.build_prediction(
        session="rig1", seq=9, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3, forecast=forecast,
        predictable=np.array([1, 0, 1, 0], np.uint8), decoded={"speed": 0.5}, model_version="m@1", rate_hz=30.0,
        stream_id=2, stream_frame=8, folded=1, stage_ns={"model": 10})
    parsed = protocol.parse_published([protocol.topic_for("rig1"), payload])
    assert isinstance(parsed, Prediction)
    np.testing.assert_array_equal(parsed.forecast, forecast)
    assert parsed.forecast[1, 2] == 5.0  # row-major: neuron 1, step 2
    assert parsed.predictable.tolist() == [True, False, True, False]
    assert (parsed.seq, parsed.decoded, parsed.model_version, parsed.folded) == (9, {"speed": 0.5}, "m@1", 1)
    assert protocol.topic_for("rig1") == b"rig1\x00"
    assert not protocol.topic_for("rig10").startswith(protocol.topic_for("rig1"))
    with pytest.raises(ProtocolError):
        protocol.parse_published([protocol.topic_for("rig2"), payload])
    with pytest.raises(ProtocolError):
        protocol.parse_published([payload])


def test_error_messages():
    data = protocol.build_error("duplicate", "again", session="r", seq=3, t_recv_ns=5)
    parsed = protocol.parse_published([protocol.topic_for("r"), data])
    assert isinstance(parsed, ErrorMessage) and (parsed.code, parsed.seq, parsed.session) == ("duplicate", 3, "r")
    unattributed = protocol.build_error("malformed", "?")
    assert protocol.parse_published([protocol.UNATTRIBUTED_TOPIC, unattributed]).session == ""
    with pytest.raises(ValueError):
        protocol.build_error("no_such_code", "x")


def test_control_messages():
    request = protocol.parse_request(protocol.build_request("start", session="a", n_neurons=3))
    assert request.cmd == "start" and request.session() == "a" and request.optional_int("n_neurons", 1, 10) == 3
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(protocol.build_request("explode"))
    assert info.value.code == "unknown_command"
    assert protocol.parse_reply(protocol.build_reply("status", x=1)) == {"ok": True, "cmd": "status", "x": 1}
    error = protocol.parse_reply(protocol.build_error("unknown_session", "no", cmd="stop"))
    assert isinstance(error, ErrorMessage) and error.code == "unknown_session"


def test_docs_describe_every_code_command_and_field():
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in DOC, f"error code {code!r} is missing from docs/protocol.md"
    for command in protocol.COMMANDS:
        assert f"`{command}`" in DOC, f"command {command!r} is missing from docs/protocol.md"
    for field in ("v", "type", "session", "seq", "t_acq_ns", "n", "dff", "raw", "neuropil", "reset", "t_recv_ns",
                  "t_pub_ns", "horizon", "rate_hz", "forecast", "predictable", "decoded", "model_version",
                  "stream_id", "stream_frame", "folded", "stage_ns", "code", "message", "cmd", "ok"):
        assert re.search(rf"`{field}`", DOC), f"field {field!r} is missing from docs/protocol.md"
    assert f"version {protocol.PROTOCOL_VERSION}" in DOC


def test_the_documented_example_bytes():
    expected = bytes.fromhex("".join(
        line.split("  ")[0].replace(" ", "") for line in DOC.split("## Example: a frame in bytes")[1]
        .split("```")[1].strip().splitlines()))
    actual = protocol.build_frame("rig1", 0, 1700000000000000000, np.array([0.5, np.nan], np.float32))
    assert actual == expected
