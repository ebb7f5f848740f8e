"""The rtcalm wire protocol, version 1: building, parsing and validating every message.

Every message is one msgpack map with string keys, ``"v"`` (the protocol version) and ``"type"``.
Per-neuron vectors travel as raw little-endian bytes (float32, or uint8 for masks), never as msgpack
arrays: a 4096-neuron frame is one 16 KiB copy instead of 4096 tagged floats. docs/protocol.md is the
normative description (enough to write a client in any language); this module is its Python
implementation, shared by the daemon and :mod:`rtcalm.client`, so it must import with numpy and
msgpack only (no torch, no numba).

Sockets and message types:

- ingest (rig PUSH -> daemon PULL), one part: ``frame``
- publish (daemon PUB -> SUB), two parts ``[topic, payload]``: ``prediction`` and ``error``; the topic
  is the session id in UTF-8 followed by one NUL byte, so that ZeroMQ's prefix filtering matches one
  session exactly (``rig1`` does not receive ``rig10``). Errors that cannot be attributed to a session
  go out under the topic of the empty session, a single NUL byte. ``trigger`` messages (a rule fired)
  go out under ``!trigger`` NUL session NUL (:func:`trigger_topic`): '!' is not a session id character,
  so a session's prediction subscribers never receive them, and ``!trigger`` NUL subscribes to all.
- control (REQ -> daemon REP): ``request`` answered by ``reply`` or ``error``.

Parsing never trusts the sender: every function here either returns a fully checked value or raises
:class:`ProtocolError` with a stable ``code`` (see :data:`ERROR_CODES`) and a human-readable message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgpack
import numpy as np

from rtcalm.errors import RtcalmError

PROTOCOL_VERSION = 1
FLOAT32_LE = np.dtype("<f4")
UINT8 = np.dtype("u1")
MAX_SEQ = 2**63 - 1  # sequence numbers and timestamps are signed 64-bit in every language
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
COMMANDS = ("status", "start", "stop", "reset", "load_model", "get_stats", "load_head", "unload_head", "load_rules",
            "arm", "disarm", "rules")

# Stable error codes. The rig and control clients switch on these; the message is for humans.
ERROR_CODES = {
    "malformed": "not a msgpack map, or the wrong number of message parts",
    "unsupported_version": "the 'v' field is missing or not a protocol version this daemon speaks",
    "wrong_type": "the 'type' field is missing or not a type accepted on this socket",
    "bad_field": "a required field is missing, has the wrong type, or is out of range",
    "payload_size": "a vector's byte length does not match the neuron count (truncated or too long)",
    "non_finite": "a vector holds +-Inf (NaN is allowed and means 'missing')",
    "value_out_of_range": "a value's magnitude exceeds the daemon's bound (limits.max_abs_dff for ΔF/F, "
                          "limits.max_abs_fluorescence for raw and neuropil)",
    "too_large": "the message or its neuron count exceeds the daemon's limits",
    "neuron_count": "the neuron count differs from the one the session was started with",
    "neuron_range": "the serving model cannot run this neuron count (it was compiled for another range)",
    "duplicate": "a frame with this sequence number was already received; dropped",
    "out_of_order": "the frame is older than the last one processed (the stream is past its slot); dropped",
    "gap_too_large": "more frames were missing than the daemon fills in; the session state restarted",
    "too_many_sessions": "the daemon already serves its maximum number of sessions",
    "unknown_session": "no session with this id is running",
    "session_exists": "a session with this id is already running",
    "unknown_command": "the control command is not one of the commands of this protocol version",
    "model_loading": "a model load is already in progress",
    "model_load_failed": "the requested model could not be loaded; the previous model keeps serving",
    "head_not_found": "the decoding head's .json, or the .safetensors beside it, does not exist",
    "head_invalid": "the file is not a valid decoding head (format, config, corrupt or non-finite weights)",
    "head_mismatch": "the decoding head was fitted for another neuron count or another model width (d_model)",
    "head_conflict": "the decoding head's outputs would overwrite those of another head of the session",
    "unknown_head": "the session has no decoding head of this name",
    "rules_invalid": "the rules file does not exist, is not a valid rules file, or does not fit the session",
    "unknown_rule": "the session has no trigger rule of this name",
    "internal": "the daemon failed on this message (a bug); the session state was restarted",
}


# The codes an ingest frame can be rejected with before it reaches its session's state (counted in
# rtcalm_frames_malformed_total{code}); the others answer control commands or describe sequencing.
FRAME_REJECTION_CODES = ("malformed", "unsupported_version", "wrong_type", "bad_field", "payload_size", "non_finite",
                         "value_out_of_range", "too_large", "neuron_count")


class ProtocolError(RtcalmError, ValueError):
    """A message that does not follow the protocol. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def topic_for(session: str) -> bytes:
    """The PUB topic of a session: UTF-8 id plus a NUL terminator (exact match under prefix filtering)."""
    return session.encode("utf-8") + b"\x00"


UNATTRIBUTED_TOPIC = topic_for("")
TRIGGER_TOPIC_PREFIX = b"!trigger\x00"


def trigger_topic(session: str | None = None) -> bytes:
    """The PUB topic of a session's triggers (every session's with None)."""
    return TRIGGER_TOPIC_PREFIX + (b"" if session is None else topic_for(session))


# --- msgpack ---------------------------------------------------------------------------------------

def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack_map(data: bytes, *, max_bytes: int | None = None) -> dict:
    """Decode one msgpack map. Raises ProtocolError('too_large' | 'malformed')."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("malformed", f"expected bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError("too_large", f"message is {len(data)} bytes, the limit is {max_bytes}")
    try:
        # strict_map_key: only str/bytes keys (no hash-flooding with nested containers as keys);
        # msgpack bounds every container and string by the buffer's own length.
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError...
        raise ProtocolError("malformed", f"not a msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed", f"expected a msgpack map, got {type(message).__name__}")
    return message


def _check_envelope(message: dict, expected_types: tuple[str, ...]) -> str:
    version = message.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError("unsupported_version",
                            f"protocol version {version!r} is not supported (this daemon speaks {PROTOCOL_VERSION})")
    kind = message.get("type")
    if kind not in expected_types:
        raise ProtocolError("wrong_type", f"message type {kind!r} is not accepted here "
                                          f"(expected {' or '.join(expected_types)})")
    return kind


def _int_field(message: dict, name: str, *, low: int = 0, high: int = MAX_SEQ, optional: bool = False,
               default: int | None = None) -> int | None:
    value = message.get(name)
    if value is None:
        if optional:
            return default
        raise ProtocolError("bad_field", f"missing field {name!r}")
    if type(value) is not int:  # bool is an int subclass in Python; it is not an integer on the wire
        raise ProtocolError("bad_field", f"field {name!r} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError("bad_field", f"field {name!r} = {value} is outside [{low}, {high}]")
    return value


def _session_field(message: dict) -> str:
    session = message.get("session")
    if type(session) is not str:
        raise ProtocolError("bad_field", f"field 'session' must be a string, got {type(session).__name__}")
    if not SESSION_ID_PATTERN.fullmatch(session):
        raise ProtocolError("bad_field", f"session id {session[:80]!r} must be 1-64 characters of "
                                         "A-Z a-z 0-9 _ . : -")
    return session


def _vector_field(message: dict, name: str, n: int, dtype: np.dtype, per_neuron: int = 1) -> np.ndarray:
    """A read-only view of a little-endian vector field (no copy)."""
    data = message.get(name)
    if type(data) is not bytes:
        raise ProtocolError("bad_field", f"field {name!r} must be msgpack bin (raw bytes), "
                                         f"got {type(data).__name__}")
    expected = n * per_neuron * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise ProtocolError("payload_size", f"field {name!r} is {len(data)} bytes, {what} for {n} neurons "
                                            f"(expected {expected})")
    return np.frombuffer(data, dtype=dtype)


def count_infinite(values: np.ndarray, scratch: np.ndarray | None = None) -> int:
    """Number of +-Inf entries. ``scratch``: an optional bool buffer at least as long (saves an allocation)."""
    mask = np.isinf(values) if scratch is None else np.isinf(values, out=scratch[:values.shape[0]])
    return int(np.count_nonzero(mask))


# --- frames (rig -> daemon) ------------------------------------------------------------------------

@dataclass(slots=True)
class Frame:
    """One validated frame. Exactly one of ``dff`` or (``raw``, ``neuropil``) is set; the arrays are
    read-only float32 views of the message bytes."""

    session: str
    seq: int
    t_acq_ns: int
    n_neurons: int
    dff: np.ndarray | None
    raw: np.ndarray | None = None
    neuropil: np.ndarray | None = None
    reset: bool = False


def build_frame(session: str, seq: int, t_acq_ns: int, dff=None, *, raw=None, neuropil=None,
                reset: bool = False) -> bytes:
    """Encode a frame message. Give ``dff`` (one value per neuron, NaN = missing), or ``raw`` and
    ``neuropil`` fluorescence for the daemon to convert."""
    message = {"v": PROTOCOL_VERSION, "type": "frame", "session": session, "seq": int(seq),
               "t_acq_ns": int(t_acq_ns)}
    if dff is not None:
        if raw is not None or neuropil is not None:
            raise ValueError("give dff, or raw and neuropil, not both")
        values = _vector_bytes(dff, "dff")
        message["n"] = len(values) // 4
        message["dff"] = values
    else:
        if raw is None or neuropil is None:
            raise ValueError("give dff, or both raw and neuropil")
        message["raw"] = _vector_bytes(raw, "raw")
        message["neuropil"] = _vector_bytes(neuropil, "neuropil")
        if len(message["raw"]) != len(message["neuropil"]):
            raise ValueError("raw and neuropil must have one value per neuron each")
        message["n"] = len(message["raw"]) // 4
    if reset:
        message["reset"] = True
    return pack(message)


def _vector_bytes(values, name: str) -> memoryview:
    array = np.ascontiguousarray(values, dtype=FLOAT32_LE)
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector (one value per neuron), got shape {array.shape}")
    return memoryview(array).cast("B")


def parse_frame(data: bytes, *, max_bytes: int | None = None, max_neurons: int | None = None,
                inf_scratch: np.ndarray | None = None, max_abs_dff: float | None = None,
                max_abs_fluorescence: float | None = None) -> Frame:
    """Validate one ingest message completely. Raises ProtocolError; never returns a partly checked frame.
    ``inf_scratch``: optional bool buffer of at least ``max_neurons`` entries for the Inf check.
    ``max_abs_dff`` / ``max_abs_fluorescence``: bounds on |value| of ``dff`` / ``raw`` and ``neuropil``
    (None: any finite value)."""
    message = unpack_map(data, max_bytes=max_bytes)
    _check_envelope(message, ("frame",))
    session = _session_field(message)
    seq = _int_field(message, "seq")
    t_acq_ns = _int_field(message, "t_acq_ns")
    n = _int_field(message, "n", low=1)
    if max_neurons is not None and n > max_neurons:
        raise ProtocolError("too_large", f"{n} neurons exceeds the limit of {max_neurons}")
    reset = message.get("reset", False)
    if type(reset) is not bool:
        raise ProtocolError("bad_field", f"field 'reset' must be a boolean, got {type(reset).__name__}")
    has_dff = "dff" in message
    has_raw = "raw" in message or "neuropil" in message
    if has_dff == has_raw:
        raise ProtocolError("bad_field", "a frame carries either 'dff', or 'raw' and 'neuropil'"
                                         + (" (it has both)" if has_dff else " (it has neither)"))
    if has_dff:
        dff = _vector_field(message, "dff", n, FLOAT32_LE)
        _check_values(dff, "dff", inf_scratch, max_abs_dff, "limits.max_abs_dff")
        return Frame(session, seq, t_acq_ns, n, dff, reset=reset)
    raw = _vector_field(message, "raw", n, FLOAT32_LE)
    neuropil = _vector_field(message, "neuropil", n, FLOAT32_LE)
    _check_values(raw, "raw", inf_scratch, max_abs_fluorescence, "limits.max_abs_fluorescence")
    _check_values(neuropil, "neuropil", inf_scratch, max_abs_fluorescence, "limits.max_abs_fluorescence")
    return Frame(session, seq, t_acq_ns, n, None, raw=raw, neuropil=neuropil, reset=reset)


def _check_values(values: np.ndarray, name: str, scratch: np.ndarray | None, max_abs: float | None,
                  bound_name: str) -> None:
    """Raise 'non_finite' for +-Inf, 'value_out_of_range' for a finite |value| above ``max_abs``.

    A finite but absurd value (3e38 is a valid float32) would otherwise enter the running statistics and
    dominate that neuron's mean and std, so its forecasts stay off by orders of magnitude for as long as
    the statistics remember it."""
    if max_abs is not None:
        # fmax/fmin skip NaN (missing values): two reductions decide the common, all-good case; Inf
        # is above any finite bound, so only a frame that fails them needs the detailed checks below.
        high, low = np.fmax.reduce(values), np.fmin.reduce(values)
        if not (high > max_abs or low < -max_abs):
            return
    bad = count_infinite(values, scratch)
    if bad:
        raise ProtocolError("non_finite", f"field {name!r} has {bad} infinite values (use NaN for missing)")
    if max_abs is not None:
        outside = np.flatnonzero(np.abs(values) > max_abs)
        first = int(outside[0])
        raise ProtocolError("value_out_of_range",
                            f"field {name!r} has {outside.size} value(s) with magnitude above {max_abs:g} "
                            f"({bound_name}; first: neuron {first}, {float(values[first]):g}); a value that "
                            "large is a unit or scaling error upstream, and would swamp the neuron's statistics")


def peek_session(data: bytes) -> tuple[str, int | None]:
    """Best-effort (session, seq) of a message that failed validation, to address the error reply.
    Returns ("", None) when they cannot be read; never raises."""
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
        session = message.get("session") if isinstance(message, dict) else None
        seq = message.get("seq")
        session = session if isinstance(session, str) and SESSION_ID_PATTERN.fullmatch(session) else ""
        return session, (seq if type(seq) is int and 0 <= seq <= MAX_SEQ else None)
    except Exception:
        return "", None


# --- predictions and errors (daemon -> subscribers) -------------------------------------------------

@dataclass
class Prediction:
    """A parsed prediction: the daemon's answer to frame ``seq`` of ``session``."""

    session: str
    seq: int
    t_acq_ns: int
    t_recv_ns: int
    t_pub_ns: int
    forecast: np.ndarray  # (neurons, horizon) float32, dF/F units; [:, k] predicts frame seq + 1 + k
    predictable: np.ndarray  # (neurons,) bool
    decoded: dict
    model_version: str
    rate_hz: float
    stream_id: int
    stream_frame: int
    folded: int
    stage_ns: dict = field(default_factory=dict)
    # Forecast intervals, when the daemon runs them (quality.interval_levels): the coverage levels, each
    # neuron's error scale at each step in ΔF/F, (neurons, horizon) float32, NaN where a neuron has no
    # band yet, and the multiplier of each level at each step, (levels, horizon) float32. The half-width
    # at level j is interval_multiplier[j] * interval_scale (interval() draws the band). Empty / None
    # otherwise.
    interval_levels: tuple = ()
    interval_scale: np.ndarray | None = None
    interval_multiplier: np.ndarray | None = None

    @property
    def n_neurons(self) -> int:
        return int(self.forecast.shape[0])

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (neurons, horizon) ΔF/F: the band at coverage ``level`` around the forecast.
        ValueError if the daemon did not send that level."""
        if level not in self.interval_levels:
            raise ValueError(f"no {level} interval in this prediction (levels: {list(self.interval_levels)}; "
                             "the daemon sends intervals with [quality] interval_levels)")
        # a float32 product, in the order the daemon computes its half-widths: bit for bit its band
        half = self.interval_multiplier[self.interval_levels.index(level)] * self.interval_scale
        return self.forecast - half, self.forecast + half

    @property
    def horizon(self) -> int:
        return int(self.forecast.shape[1])


@dataclass
class ErrorMessage:
    """A parsed error published by the daemon (or an error reply on the control socket)."""

    code: str
    message: str
    session: str = ""
    seq: int | None = None
    t_recv_ns: int | None = None


@dataclass
class Trigger:
    """A trigger rule of ``session`` fired on frame ``seq``: its ``value`` crossed ``threshold`` in
    ``direction`` ("above" or "below"). ``t_acq_ns`` is the frame's acquisition time (the rig's
    clock), ``t_fire_ns`` the daemon's wall clock when the trigger was sent; ``kind`` is the rule's
    kind (activity, forecast or decoded) and ``stream_frame`` the frame's index in its stream."""

    session: str
    seq: int
    rule: str
    kind: str
    value: float
    threshold: float
    direction: str
    t_acq_ns: int
    t_fire_ns: int
    stream_id: int
    stream_frame: int


TRIGGER_FIELDS = ("rule", "kind", "value", "threshold", "direction", "t_acq_ns", "t_fire_ns", "stream_id",
                  "stream_frame")


def build_trigger(trigger: Trigger) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "type": "trigger", "session": trigger.session, "seq": trigger.seq,
                 **{name: getattr(trigger, name) for name in TRIGGER_FIELDS}})


def _parse_trigger_body(message: dict, session: str) -> Trigger:
    for name in ("rule", "kind", "direction"):
        if type(message.get(name)) is not str:
            raise ProtocolError("bad_field", f"field {name!r} must be a string")
    for name in ("value", "threshold"):
        if type(message.get(name)) is not float:
            raise ProtocolError("bad_field", f"field {name!r} must be a float")
    return Trigger(session=session, seq=_int_field(message, "seq"), rule=message["rule"], kind=message["kind"],
                   value=message["value"], threshold=message["threshold"], direction=message["direction"],
                   t_acq_ns=_int_field(message, "t_acq_ns"), t_fire_ns=_int_field(message, "t_fire_ns"),
                   stream_id=_int_field(message, "stream_id"), stream_frame=_int_field(message, "stream_frame"))


def build_prediction(*, session: str, seq: int, t_acq_ns: int, t_recv_ns: int, t_pub_ns: int,
                     forecast: np.ndarray, predictable: np.ndarray, decoded: dict, model_version: str,
                     rate_hz: float, stream_id: int, stream_frame: int, folded: int,
                     stage_ns: dict, interval_levels=None, interval_scale=None, interval_multiplier=None) -> bytes:
    """``forecast``: (neurons, horizon) float32; ``predictable``: (neurons,) uint8 or bool; with intervals,
    ``interval_levels`` (floats), ``interval_scale`` (neurons, horizon) and ``interval_multiplier``
    (levels, horizon), float32."""
    n, horizon = forecast.shape
    # Packed from memoryviews of the arrays (no copy when they are already little-endian and
    # contiguous): ``tobytes()`` first would copy the forecast once more, into freshly mapped pages,
    # which costs ~1 ms for 4096 neurons x 30 steps.
    forecast = memoryview(np.ascontiguousarray(forecast, dtype=FLOAT32_LE))
    predictable = memoryview(np.ascontiguousarray(predictable, dtype=UINT8))
    message = {
        "v": PROTOCOL_VERSION, "type": "prediction", "session": session, "seq": seq,
        "t_acq_ns": t_acq_ns, "t_recv_ns": t_recv_ns, "t_pub_ns": t_pub_ns,
        "n": n, "horizon": horizon, "rate_hz": rate_hz,
        "forecast": forecast, "predictable": predictable,
        "decoded": decoded, "model_version": model_version,
        "stream_id": stream_id, "stream_frame": stream_frame, "folded": folded, "stage_ns": stage_ns,
    }
    if interval_levels is not None:
        message["interval_levels"] = [float(level) for level in interval_levels]
        message["interval_scale"] = memoryview(np.ascontiguousarray(interval_scale, dtype=FLOAT32_LE))
        message["interval_multiplier"] = memoryview(np.ascontiguousarray(interval_multiplier, dtype=FLOAT32_LE))
    return pack(message)


def build_error(code: str, message: str, *, session: str = "", seq: int | None = None,
                t_recv_ns: int | None = None, cmd: str | None = None) -> bytes:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown protocol error code {code!r}")
    body = {"v": PROTOCOL_VERSION, "type": "error", "ok": False, "code": code, "message": message,
            "session": session, "seq": seq, "t_recv_ns": t_recv_ns}
    if cmd is not None:
        body["cmd"] = cmd
    return pack(body)


def parse_published(parts: list[bytes]) -> Prediction | ErrorMessage | Trigger:
    """Parse a two-part message from the publish socket. Raises ProtocolError.
    ``parts``: bytes or buffers (e.g. the ``.buffer`` of zero-copy ZeroMQ frames)."""
    if len(parts) != 2:
        raise ProtocolError("malformed", f"expected 2 parts [topic, payload], got {len(parts)}")
    topic, payload = parts
    message = unpack_map(payload)
    kind = _check_envelope(message, ("prediction", "error", "trigger"))
    session = message.get("session")
    expected_topic = trigger_topic(session) if kind == "trigger" and type(session) is str else None
    if type(session) is not str or (expected_topic or topic_for(session)) != bytes(topic):
        raise ProtocolError("bad_field", "the topic does not match the message's session")
    if kind == "trigger":
        return _parse_trigger_body(message, session)
    if kind == "error":
        return _parse_error_body(message)
    seq = _int_field(message, "seq")
    n = _int_field(message, "n", low=1)
    horizon = _int_field(message, "horizon", low=1)
    forecast = _vector_field(message, "forecast", n, FLOAT32_LE, per_neuron=horizon).reshape(n, horizon)
    predictable = _vector_field(message, "predictable", n, UINT8).astype(bool)
    decoded = message.get("decoded")
    if not isinstance(decoded, dict):
        raise ProtocolError("bad_field", "field 'decoded' must be a map")
    model_version = message.get("model_version")
    if type(model_version) is not str:
        raise ProtocolError("bad_field", "field 'model_version' must be a string")
    rate_hz = message.get("rate_hz")
    if type(rate_hz) is not float:
        raise ProtocolError("bad_field", "field 'rate_hz' must be a float")
    stage_ns = message.get("stage_ns", {})
    if not isinstance(stage_ns, dict):
        raise ProtocolError("bad_field", "field 'stage_ns' must be a map")
    levels, scale, multiplier = _interval_fields(message, n, horizon)
    return Prediction(session=session, seq=seq, t_acq_ns=_int_field(message, "t_acq_ns"),
                      t_recv_ns=_int_field(message, "t_recv_ns"), t_pub_ns=_int_field(message, "t_pub_ns"),
                      forecast=forecast, predictable=predictable, decoded=decoded, model_version=model_version,
                      rate_hz=rate_hz, stream_id=_int_field(message, "stream_id"),
                      stream_frame=_int_field(message, "stream_frame"), folded=_int_field(message, "folded"),
                      stage_ns=stage_ns, interval_levels=levels, interval_scale=scale,
                      interval_multiplier=multiplier)


_INTERVAL_MATRICES = ("interval_scale", "interval_multiplier")


def _interval_fields(message: dict, n: int, horizon: int) -> tuple[tuple, np.ndarray | None, np.ndarray | None]:
    """The forecast intervals of a prediction, checked: (levels, scale (n, horizon), multiplier (levels,
    horizon)), or ((), None, None) when the message has none. Raises ProtocolError('bad_field')."""
    levels = message.get("interval_levels")
    if levels is None:
        for name in _INTERVAL_MATRICES:
            if name in message:
                raise ProtocolError("bad_field", f"field {name!r} needs 'interval_levels'")
        return (), None, None
    if (not isinstance(levels, list) or not levels or len(levels) > 8
            or not all(type(level) is float and 0.0 < level < 1.0 for level in levels)
            or levels != sorted(set(levels))):  # strictly increasing
        raise ProtocolError("bad_field", "field 'interval_levels' must be an array of 1-8 increasing floats in (0, 1)")
    scale = _float32_matrix(message, "interval_scale", n, horizon, "neurons")
    multiplier = _float32_matrix(message, "interval_multiplier", len(levels), horizon, "levels")
    # The daemon's scales are >= 0 or NaN (no band yet) and its multipliers finite and >= 0: anything
    # else would draw a band with its lower bound above its upper one.
    if np.count_nonzero(scale < 0):
        raise ProtocolError("bad_field", "field 'interval_scale' has negative values (only >= 0 or NaN are valid)")
    if not (np.isfinite(multiplier).all() and (multiplier >= 0).all()):
        raise ProtocolError("bad_field", "field 'interval_multiplier' must hold finite values >= 0")
    return tuple(levels), scale, multiplier


def _float32_matrix(message: dict, name: str, rows: int, horizon: int, what: str) -> np.ndarray:
    """A read-only (rows, horizon) view of a little-endian float32 matrix field (no copy); every error is
    'bad_field' (the field comes with 'interval_levels')."""
    if name not in message:
        raise ProtocolError("bad_field", f"field {name!r} is missing (it comes with 'interval_levels')")
    data = message[name]
    if type(data) is not bytes:
        raise ProtocolError("bad_field", f"field {name!r} must be msgpack bin (float32 bytes), got {type(data).__name__}")
    expected = rows * horizon * FLOAT32_LE.itemsize
    if len(data) != expected:
        raise ProtocolError("bad_field", f"field {name!r} is {len(data)} bytes, expected {expected} "
                                         f"({rows} {what} x {horizon} steps, float32)")
    return np.frombuffer(data, dtype=FLOAT32_LE).reshape(rows, horizon)


def _parse_error_body(message: dict) -> ErrorMessage:
    code, text = message.get("code"), message.get("message")
    if type(code) is not str or type(text) is not str:
        raise ProtocolError("bad_field", "an error needs string fields 'code' and 'message'")
    session = message.get("session") or ""
    seq = message.get("seq")
    t_recv_ns = message.get("t_recv_ns")
    return ErrorMessage(code=code, message=text, session=session if isinstance(session, str) else "",
                        seq=seq if type(seq) is int else None,
                        t_recv_ns=t_recv_ns if type(t_recv_ns) is int else None)


# --- control (REQ -> REP) ---------------------------------------------------------------------------

@dataclass
class ControlRequest:
    cmd: str
    args: dict

    def session(self) -> str:
        return _session_field(self.args)

    def optional_int(self, name: str, low: int, high: int) -> int | None:
        return _int_field(self.args, name, low=low, high=high, optional=True)

    def string(self, name: str) -> str:
        value = self.args.get(name)
        if type(value) is not str or not value:
            raise ProtocolError("bad_field", f"field {name!r} must be a non-empty string")
        return value


def build_request(cmd: str, **args) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "type": "request", "cmd": cmd, **args})


def parse_request(data: bytes, *, max_bytes: int | None = None) -> ControlRequest:
    message = unpack_map(data, max_bytes=max_bytes)
    _check_envelope(message, ("request",))
    cmd = message.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError("unknown_command", f"unknown command {cmd!r}; commands are {', '.join(COMMANDS)}")
    args = {k: v for k, v in message.items() if k not in ("v", "type", "cmd")}
    return ControlRequest(cmd, args)


def build_reply(cmd: str, **results) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "type": "reply", "ok": True, "cmd": cmd, **results})


def parse_reply(data: bytes) -> dict | ErrorMessage:
    """The fields of a control reply (without the envelope), or an :class:`ErrorMessage` for an error reply."""
    message = unpack_map(data)
    kind = _check_envelope(message, ("reply", "error"))
    if kind == "error":
        return _parse_error_body(message)
    return {k: v for k, v in message.items() if k not in ("v", "type")}
