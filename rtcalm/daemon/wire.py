"""The daemon's side of the wire, on the per-frame path: frames in (:class:`FrameDecoder`), predictions out
(:class:`PredictionEncoder`), both with msgspec; :mod:`rtcalm.protocol` stays the reference (and all the
client needs: the client installs without msgspec).

**Frames**: msgspec decodes the message into a typed struct in one C pass and one numba pass checks the
values, instead of :func:`rtcalm.protocol.parse_frame`.

At 512 neurons, one frame per 33 ms (cold caches, as in the daemon), this path takes about two thirds
of the reference's time (``python tools/bench_wire.py`` measures both, interleaved). Most of the
reference's cost is the ~15 Python calls and the two numpy reductions it makes per frame, each of which
runs cold at 30 Hz.

Equivalence, by construction: the fast path *accepts* a frame only when every check of the reference
passes, and returns the same :class:`~rtcalm.protocol.Frame`; anything else (a decode error, a type or
range error, unknown fields, a value out of bounds) goes to the reference, whose ProtocolError, code and
message, the rig then gets. So the daemon's errors are the reference's, word for word, and only good
frames take the fast path. Unknown fields are left to the reference on purpose: msgpack-python rejects a
non-string map key anywhere in the message, msgspec would skip over it inside a field it does not know.
tests/daemon/test_wire.py holds the two to the same outcome on a corpus of malformed messages.

**Predictions**: :func:`rtcalm.protocol.build_prediction` packs a fresh ``bytes`` per frame (62 KB at 512
neurons, a new allocation every time); :class:`PredictionEncoder` encodes the same map into one
preallocated buffer, byte for byte the same message (tested), in about three quarters of the time cold
(tools/bench_wire.py).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from rtcalm import protocol
from rtcalm.daemon.kernels import count_outside
from rtcalm.protocol import FLOAT32_LE, MAX_SEQ, PROTOCOL_VERSION, SESSION_ID_PATTERN, UINT8, Frame

_UNSET = msgspec.UNSET


class _FrameMessage(msgspec.Struct, forbid_unknown_fields=True):
    """The fields of a frame message (docs/protocol.md); ranges and the either-or of the vectors are
    checked in :meth:`FrameDecoder.parse`."""

    v: int
    type: str
    session: str
    seq: int
    t_acq_ns: int
    n: int
    dff: bytes | msgspec.UnsetType = _UNSET
    raw: bytes | msgspec.UnsetType = _UNSET
    neuropil: bytes | msgspec.UnsetType = _UNSET
    reset: bool = False


class FrameDecoder:
    """``parse(data)`` is :func:`rtcalm.protocol.parse_frame` with the daemon's limits, faster on good frames."""

    def __init__(self, *, max_bytes: int, max_neurons: int, max_abs_dff: float, max_abs_fluorescence: float):
        self.max_bytes, self.max_neurons = max_bytes, max_neurons
        self.max_abs_dff, self.max_abs_fluorescence = max_abs_dff, max_abs_fluorescence
        self._decoder = msgspec.msgpack.Decoder(_FrameMessage)
        self._inf_scratch = np.empty(max_neurons, dtype=bool)

    def parse(self, data: bytes) -> Frame:
        """A validated frame, or ProtocolError exactly as the reference raises it."""
        frame = self._fast(data) if len(data) <= self.max_bytes else None
        if frame is not None:
            return frame
        return protocol.parse_frame(data, max_bytes=self.max_bytes, max_neurons=self.max_neurons,
                                    inf_scratch=self._inf_scratch, max_abs_dff=self.max_abs_dff,
                                    max_abs_fluorescence=self.max_abs_fluorescence)

    def _fast(self, data: bytes) -> Frame | None:
        """The frame if it passes every check of the reference, else None (the reference then says why)."""
        try:
            m = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if (m.v != PROTOCOL_VERSION or m.type != "frame" or not SESSION_ID_PATTERN.fullmatch(m.session)
                or not 0 <= m.seq <= MAX_SEQ or not 0 <= m.t_acq_ns <= MAX_SEQ or not 1 <= m.n <= self.max_neurons):
            return None
        size = 4 * m.n
        if m.dff is not _UNSET:
            if m.raw is not _UNSET or m.neuropil is not _UNSET or len(m.dff) != size:
                return None
            dff = np.frombuffer(m.dff, dtype=FLOAT32_LE)
            if count_outside(dff, self._bound(self.max_abs_dff)):
                return None
            return Frame(m.session, m.seq, m.t_acq_ns, m.n, dff, reset=m.reset)
        if m.raw is _UNSET or m.neuropil is _UNSET or len(m.raw) != size or len(m.neuropil) != size:
            return None
        raw, neuropil = np.frombuffer(m.raw, dtype=FLOAT32_LE), np.frombuffer(m.neuropil, dtype=FLOAT32_LE)
        bound = self._bound(self.max_abs_fluorescence)
        if count_outside(raw, bound) or count_outside(neuropil, bound):
            return None
        return Frame(m.session, m.seq, m.t_acq_ns, m.n, None, raw=raw, neuropil=neuropil, reset=m.reset)

    @staticmethod
    def _bound(max_abs: float | None) -> float:
        return math.inf if max_abs is None else float(max_abs)


class PredictionEncoder:
    """``encode(...)``: the bytes of :func:`rtcalm.protocol.build_prediction` with the same arguments, in a
    buffer this encoder owns and overwrites on the next call (send it before encoding the next one;
    ZeroMQ copies it on send)."""

    def __init__(self):
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()

    def encode(self, *, session: str, seq: int, t_acq_ns: int, t_recv_ns: int, t_pub_ns: int, forecast: np.ndarray,
               predictable: np.ndarray, decoded: dict, model_version: str, rate_hz: float, stream_id: int,
               stream_frame: int, folded: int, stage_ns: dict, interval_levels=None, interval_scale=None,
               interval_multiplier=None) -> bytearray:
        """With intervals: ``interval_levels`` a list of floats, ``interval_scale`` (neurons, horizon) and
        ``interval_multiplier`` (levels, horizon), both C-contiguous little-endian float32 (the daemon's
        preallocated buffers, sent without a conversion)."""
        n, horizon = forecast.shape
        # the same map, key order and vectors as rtcalm.protocol.build_prediction
        message = {
            "v": PROTOCOL_VERSION, "type": "prediction", "session": session, "seq": seq,
            "t_acq_ns": t_acq_ns, "t_recv_ns": t_recv_ns, "t_pub_ns": t_pub_ns,
            "n": n, "horizon": horizon, "rate_hz": rate_hz,
            "forecast": memoryview(np.ascontiguousarray(forecast, dtype=FLOAT32_LE)).cast("B"),
            "predictable": memoryview(np.ascontiguousarray(predictable, dtype=UINT8)).cast("B"),
            "decoded": decoded, "model_version": model_version,
            "stream_id": stream_id, "stream_frame": stream_frame, "folded": folded, "stage_ns": stage_ns,
        }
        if interval_levels is not None:  # only with [quality] interval_levels: otherwise the bytes are as before
            message["interval_levels"] = interval_levels
            message["interval_scale"] = memoryview(interval_scale).cast("B")
            message["interval_multiplier"] = memoryview(interval_multiplier).cast("B")
        self._encoder.encode_into(message, self._buffer)  # resizes the buffer to the message
        return self._buffer
