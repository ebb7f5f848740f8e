"""The daemon's side of the wire against the reference in rtcalm.protocol: the fast frame decoder (the same
frame for every good message, the same error code and message for every bad one) and the prediction
encoder (the same bytes)."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtcalm import protocol
from rtcalm.daemon.wire import FrameDecoder, PredictionEncoder
from rtcalm.protocol import MAX_SEQ, ProtocolError

LIMITS = dict(max_bytes=4096, max_neurons=64, max_abs_dff=100.0, max_abs_fluorescence=1e6)
SCRATCH = np.empty(LIMITS["max_neurons"], dtype=bool)


def outcome(parse, data):
    try:
        frame = parse(data)
    except ProtocolError as error:
        return ("error", error.code, error.message)
    vectors = [None if v is None else (v.dtype.str, v.tobytes()) for v in (frame.dff, frame.raw, frame.neuropil)]
    return ("ok", frame.session, frame.seq, frame.t_acq_ns, frame.n_neurons, frame.reset, vectors)


def reference(data):
    return protocol.parse_frame(data, inf_scratch=SCRATCH, **LIMITS)


def assert_same(data):
    fast = outcome(FrameDecoder(**LIMITS).parse, data)
    assert fast == outcome(reference, data)
    return fast


def vector(*values):
    return np.asarray(values, dtype="<f4").tobytes()


GOOD = {"v": 1, "type": "frame", "session": "rig1", "seq": 7, "t_acq_ns": 123, "n": 3, "dff": vector(0.5, np.nan, -2)}
RAW = {**{k: v for k, v in GOOD.items() if k != "dff"}, "raw": vector(10, 20, 30), "neuropil": vector(1, 2, np.nan)}


def with_(base=GOOD, drop=(), **changes):
    message = {k: v for k, v in base.items() if k not in drop}
    message.update(changes)
    return msgpack.packb(message, use_bin_type=True)


GOOD_CASES = {
    "dff": with_(),
    "fluorescence": with_(RAW),
    "reset": with_(reset=True),
    "reset false": with_(reset=False),
    "all missing": with_(dff=vector(np.nan, np.nan, np.nan)),
    "at the bound": with_(dff=vector(100, -100, 0)),
    "largest seq": with_(seq=MAX_SEQ, t_acq_ns=MAX_SEQ),
    "one neuron": with_(n=1, dff=vector(1)),
    "most neurons": with_(n=64, dff=np.ones(64, "<f4").tobytes()),
}

BAD_CASES = {
    "above the bound": with_(dff=vector(100.5, 0, 0)),
    "below the bound": with_(dff=vector(0, -1e30, 0)),
    "inf": with_(dff=vector(np.inf, 0, 0)),
    "-inf fluorescence": with_(RAW, neuropil=vector(0, -np.inf, 0)),
    "fluorescence above its bound": with_(RAW, raw=vector(0, 2e6, 0)),
    "no version": with_(drop=("v",)),
    "version 2": with_(v=2),
    "version true": with_(v=True),
    "version float": with_(v=1.0),
    "wrong type": with_(type="prediction"),
    "type not a string": with_(type=3),
    "session with newline": with_(session="rig1\n"),
    "empty session": with_(session=""),
    "long session": with_(session="x" * 65),
    "session bytes": with_(session=b"rig1"),
    "negative seq": with_(seq=-1),
    "seq past int64": with_(seq=2**64 - 1),
    "seq bool": with_(seq=True),
    "seq float": with_(seq=7.0),
    "seq missing": with_(drop=("seq",)),
    "n zero": with_(n=0, dff=b""),
    "too many neurons": with_(n=65, dff=np.ones(65, "<f4").tobytes()),
    "n disagrees": with_(n=4),
    "truncated vector": with_(dff=vector(1, 2)),
    "dff nil": with_(dff=None),
    "dff a string": with_(dff="abcdefghijkl"),
    "dff a list": with_(dff=[0.5, 0.0, 1.0]),
    "reset nil": with_(reset=None),
    "reset int": with_(reset=1),
    "both kinds": with_(RAW, dff=vector(1, 2, 3)),
    "raw without neuropil": with_(RAW, drop=("neuropil",)),
    "neither kind": with_(drop=("dff",)),
    "raw truncated": with_(RAW, raw=vector(1, 2)),
    # unknown fields go to the reference: accepted there unless they hold what msgpack-python refuses
    "unknown field": with_(note="hello"),
    "unknown field with an int-keyed map": with_(note={1: 2}),
    "not a map": msgpack.packb([1, 2, 3]),
    "a string": msgpack.packb("frame"),
    "trailing bytes": with_() + b"\x00",
    "truncated message": with_()[:-3],
    "empty": b"",
    "over max_bytes": with_(pad="x" * 5000),
    "bytes keys": msgpack.packb({k.encode(): v for k, v in GOOD.items()}, use_bin_type=True),
}


@pytest.mark.parametrize("name", sorted(GOOD_CASES))
def test_good_frames_decode_to_the_reference_frame(name):
    assert assert_same(GOOD_CASES[name])[0] == "ok"
    assert FrameDecoder(**LIMITS)._fast(GOOD_CASES[name]) is not None  # on the fast path, not the fallback


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_frames_get_the_reference_error_word_for_word(name):
    result = assert_same(BAD_CASES[name])
    assert result[0] == "error" or name == "unknown field", result
    assert FrameDecoder(**LIMITS)._fast(BAD_CASES[name]) is None


def test_a_duplicate_key_means_what_it_means_to_the_reference():
    """msgpack-python keeps the last of two equal keys; the fast path must not take the first."""
    good = msgpack.packb(GOOD, use_bin_type=True)
    header, count = good[:1], good[0] & 0x0F
    assert header[0] & 0xF0 == 0x80  # a fixmap
    later_seq = msgpack.packb("seq") + msgpack.packb(99)
    duplicated = bytes([0x80 | (count + 1)]) + good[1:] + later_seq
    assert assert_same(duplicated)[2] == 99
    bad_later = bytes([0x80 | (count + 1)]) + good[1:] + msgpack.packb("seq") + msgpack.packb(-5)
    assert assert_same(bad_later)[0] == "error"


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(GOOD_CASES)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                      min_size=1, max_size=4))
def test_corrupted_frames_get_the_same_outcome(name, flips):
    data = bytearray(GOOD_CASES[name])
    for position, value in flips:
        data[position % len(data)] = value
    assert_same(bytes(data))


@pytest.mark.parametrize("decoded", [{}, {"direction": {"value": 45.0, "probabilities": [0.25, 0.75]}},
                                     {"speed": {"value": float("nan")}}])
@pytest.mark.parametrize("shape", [(1, 1), (3, 30), (700, 30)])
def test_predictions_are_byte_for_byte_the_reference_message(shape, decoded):
    rng = np.random.default_rng(shape[0])
    forecast = rng.standard_normal(shape).astype(np.float32)
    forecast[0, 0] = np.nan
    fields = dict(session="rig.1:a", seq=2**40, t_acq_ns=MAX_SEQ, t_recv_ns=0, t_pub_ns=1_700_000_000_000_000_000,
                  forecast=forecast, predictable=rng.integers(0, 2, shape[0]).astype(np.uint8), decoded=decoded,
                  model_version="default@01bbfdfcc4d5", rate_hz=30.0, stream_id=3, stream_frame=12345, folded=2,
                  stage_ns={"validate": 120_000, "stats": 60_000, "model": 1_900_000})
    encoder = PredictionEncoder()
    first = bytes(encoder.encode(**fields))
    assert first == protocol.build_prediction(**fields)
    smaller = dict(fields, forecast=forecast[:1], predictable=fields["predictable"][:1])  # the buffer is reused
    assert bytes(encoder.encode(**smaller)) == protocol.build_prediction(**smaller)
    parsed = protocol.parse_published([protocol.topic_for("rig.1:a"), first])
    assert np.array_equal(parsed.forecast, forecast, equal_nan=True) and parsed.seq == 2**40


@pytest.mark.parametrize("levels", [[0.8], [0.8, 0.95]])
def test_predictions_with_intervals_are_the_reference_message(levels):
    rng = np.random.default_rng(len(levels))
    n, horizon = 5, 4
    scale = rng.random((n, horizon)).astype(np.float32)
    scale[0, :] = np.nan  # a neuron without a band yet
    multiplier = np.sort(rng.random((len(levels), horizon)), axis=0).astype(np.float32) + np.float32(1.0)
    fields = dict(session="rig1", seq=9, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3,
                  forecast=rng.standard_normal((n, horizon)).astype(np.float32),
                  predictable=np.ones(n, np.uint8), decoded={}, model_version="m", rate_hz=30.0, stream_id=1,
                  stream_frame=8, folded=0, stage_ns={"validate": 1}, interval_levels=levels,
                  interval_scale=scale, interval_multiplier=multiplier)
    encoder = PredictionEncoder()
    encoded = bytes(encoder.encode(**fields))
    assert encoded == protocol.build_prediction(**fields)
    without = {k: v for k, v in fields.items() if not k.startswith("interval_")}  # the reused buffer shrinks
    assert bytes(encoder.encode(**without)) == protocol.build_prediction(**without)
    parsed = protocol.parse_published([protocol.topic_for("rig1"), encoded])
    assert parsed.interval_levels == tuple(levels)
    np.testing.assert_array_equal(parsed.interval_scale, scale)
    np.testing.assert_array_equal(parsed.interval_multiplier, multiplier)
    for j, level in enumerate(levels):
        lower, upper = parsed.interval(level)
        half = multiplier[j] * scale
        np.testing.assert_array_equal(upper, fields["forecast"] + half)
        np.testing.assert_array_equal(lower, fields["forecast"] - half)
        assert np.isnan(lower[0]).all() and np.isfinite(lower[1:]).all()


def test_a_prediction_without_intervals_is_the_same_bytes_as_before_them():
    """The bytes of a message without intervals, pinned (sha256 of the message as built before intervals
    existed): a daemon without [quality] interval_levels sends exactly what older clients parse."""
    forecast = (np.arange(12, dtype=np.float32).reshape(4, 3) / np.float32(7)).astype(np.float32)
    forecast[1, 2] = np.nan
    fields = dict(session="rig1", seq=41, t_acq_ns=1_000, t_recv_ns=2_000, t_pub_ns=3_000, forecast=forecast,
                  predictable=np.array([1, 0, 1, 1], np.uint8), decoded={"speed": 0.5},
                  model_version="default@01bbfdfcc4d5", rate_hz=30.0, stream_id=2, stream_frame=40, folded=1,
                  stage_ns={"validate": 10, "stats": 20, "model": 30})
    reference = protocol.build_prediction(**fields)
    assert len(reference) == 309
    assert hashlib.sha256(reference).hexdigest() == "ce0707962516a4de9ab13d9f9db13ca0aba6d059f08857c6105b1aeddff43245"
    assert bytes(PredictionEncoder().encode(**fields)) == reference
    assert b"interval" not in reference
