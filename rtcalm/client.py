"""Client side of the rtcalm daemon: send frames from a rig, receive predictions, send control commands.

Imports pyzmq, msgpack and numpy only (no torch, no numba), so it runs on an acquisition PC with a
minimal Python::

    import numpy as np
    from rtcalm.client import ErrorMessage, Prediction, PredictionSubscriber, RigSender

    with RigSender("tcp://127.0.0.1:7750", session="rig1") as rig, \\
         PredictionSubscriber("tcp://127.0.0.1:7751", sessions="rig1") as predictions:
        for dff in frames:                       # one float32 (n_neurons,) vector per frame, NaN = missing
            rig.send(dff)                        # never blocks; sequence numbers and timestamps added
            message = predictions.receive(timeout_ms=100)
            if isinstance(message, Prediction):
                message.forecast                 # (n_neurons, horizon) dF/F; [:, k] predicts frame seq + 1 + k
            elif isinstance(message, ErrorMessage):
                print(message.code, message.message)

The wire format is in docs/protocol.md. A daemon with CurveZMQ keys (``rtcalm serve --keys DIR``) only
lets in clients that give theirs: ``keys=ClientKeys.from_directory(DIR, "rig1")`` (or
``ClientKeys.load(server_public_file, client_secret_file)``) on each of the classes.

When a session's trigger rules fire (``ControlClient.load_rules`` and ``arm``; docs/triggers.md), the
daemon publishes a :class:`Trigger` per fire; :class:`TriggerSubscriber` receives them and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Self

import numpy as np
import zmq

from rtcalm import protocol
from rtcalm.errors import RtcalmError
from rtcalm.protocol import ErrorMessage, Prediction, Trigger
from rtcalm.security import ClientKeys

DEFAULT_INGEST = "tcp://127.0.0.1:7750"
DEFAULT_PUBLISH = "tcp://127.0.0.1:7751"
DEFAULT_CONTROL = "tcp://127.0.0.1:7752"

__all__ = ["ClientKeys", "ControlClient", "DaemonError", "ErrorMessage", "Prediction", "PredictionSubscriber",
           "RigSender", "Trigger", "TriggerSubscriber"]


class DaemonError(RtcalmError):
    """The daemon answered a control request with an error. ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class _SocketClient:
    """What owns one ZeroMQ socket (``_socket``): closing it closes the socket; ``with`` closes it too."""

    _socket: zmq.Socket

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RigSender(_SocketClient):
    """Sends frames to the daemon's ingest socket (PUSH). ``send`` never blocks the rig: if the daemon is
    unreachable and ``hwm`` frames are already queued, the frame is dropped, counted in ``dropped``,
    and ``send`` returns False.

    Sequence numbers count up from ``first_seq`` unless given; acquisition timestamps default to
    ``time.time_ns()`` at the call. A rig that restarts its numbering must send ``reset=True`` with the
    first frame (or use a new session id): otherwise the restarted frames look old and are dropped.
    """

    def __init__(self, address: str = DEFAULT_INGEST, session: str = "rig", *, first_seq: int = 0,
                 hwm: int = 10000, context: zmq.Context | None = None, keys: ClientKeys | None = None):
        if not protocol.SESSION_ID_PATTERN.fullmatch(session):
            raise ValueError(f"session id {session!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        self.session = session
        self.next_seq = first_seq
        self.sent = 0
        self.dropped = 0
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 1000)  # on close, give queued frames a second to leave
        if keys is not None:
            keys.apply(self._socket)
        self._socket.connect(address)

    def send(self, dff, *, seq: int | None = None, t_acq_ns: int | None = None, reset: bool = False) -> bool:
        """Send one ΔF/F frame (one float per neuron; NaN = missing)."""
        seq = self.next_seq if seq is None else int(seq)
        message = protocol.build_frame(self.session, seq, time.time_ns() if t_acq_ns is None else t_acq_ns,
                                       dff, reset=reset)
        return self._send(message, seq)

    def send_fluorescence(self, raw, neuropil, *, seq: int | None = None, t_acq_ns: int | None = None,
                          reset: bool = False) -> bool:
        """Send raw ROI fluorescence and its neuropil for the daemon to convert to ΔF/F."""
        seq = self.next_seq if seq is None else int(seq)
        message = protocol.build_frame(self.session, seq, time.time_ns() if t_acq_ns is None else t_acq_ns,
                                       raw=raw, neuropil=neuropil, reset=reset)
        return self._send(message, seq)

    def _send(self, message: bytes, seq: int) -> bool:
        self.next_seq = seq + 1
        try:
            self._socket.send(message, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True


class _Subscriber(_SocketClient):
    """A SUB socket on the daemon's publish socket, subscribed to ``topics``; what the public subscribers
    share."""

    def __init__(self, address: str, topics: Iterable[bytes], *, hwm: int, context: zmq.Context | None,
                 keys: ClientKeys | None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        if keys is not None:
            keys.apply(self._socket)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic)
        self._socket.connect(address)

    def _receive(self, timeout_ms: int | None) -> Prediction | ErrorMessage | Trigger | None:
        if timeout_ms is not None and not self._socket.poll(timeout_ms, zmq.POLLIN):
            return None
        # Zero-copy receive: msgpack reads the payload straight from ZeroMQ's buffer.
        return protocol.parse_published([part.buffer for part in self._socket.recv_multipart(copy=False)])

    def __iter__(self):
        while True:
            yield self.receive()

    @property
    def socket(self) -> zmq.Socket:
        """The underlying SUB socket, e.g. to add it to your own zmq.Poller."""
        return self._socket


def _session_list(sessions: str | Iterable[str]) -> list[str]:
    return [sessions] if isinstance(sessions, str) else list(sessions)


class PredictionSubscriber(_Subscriber):
    """Receives predictions and errors from the daemon's publish socket (SUB).

    ``sessions``: one session id, several, or None for every session (and errors that could not be
    attributed to a session). Filtering happens in ZeroMQ by exact topic. Like every ZeroMQ subscriber,
    it misses what is published before its subscription reaches the daemon (a few milliseconds after
    connecting).

    With ``sessions=None`` the subscription is to everything on the socket, so :class:`Trigger` messages
    (a trigger rule fired) arrive too, interleaved in publication order; with named sessions they arrive
    only with ``triggers=True`` (then the triggers of those sessions). Check the type of what
    :meth:`receive` returns. A program that only acts on triggers is better served by
    :class:`TriggerSubscriber`, whose queue is not shared with the much larger predictions.
    """

    def __init__(self, address: str = DEFAULT_PUBLISH, sessions: str | Iterable[str] | None = None, *,
                 hwm: int = 1000, context: zmq.Context | None = None, keys: ClientKeys | None = None,
                 triggers: bool = False):
        if sessions is None:
            topics = [b""]
        else:
            names = _session_list(sessions)
            topics = [protocol.topic_for(session) for session in names]
            if triggers:
                topics += [protocol.trigger_topic(session) for session in names]
        super().__init__(address, topics, hwm=hwm, context=context, keys=keys)

    def receive(self, timeout_ms: int | None = None) -> Prediction | ErrorMessage | Trigger | None:
        """The next prediction or error (or trigger, see the class docstring); None if nothing arrived
        within ``timeout_ms`` (None: wait). Raises :class:`rtcalm.protocol.ProtocolError` for a message
        that does not parse."""
        return self._receive(timeout_ms)

    def __iter__(self) -> Iterator[Prediction | ErrorMessage | Trigger]:
        return super().__iter__()


class TriggerSubscriber(_Subscriber):
    """Receives the daemon's ``trigger`` messages (a trigger rule fired) from its publish socket (SUB),
    and nothing else: no predictions, no errors.

    ``sessions``: one session id, several, or None for the triggers of every session. Filtering happens
    in ZeroMQ by exact topic (``!trigger`` NUL session NUL), so this socket's queue (``hwm`` messages)
    holds triggers only: a trigger never waits behind predictions, which are much larger. Like every
    ZeroMQ subscriber, it misses what is published before its subscription reaches the daemon::

        with TriggerSubscriber("tcp://127.0.0.1:7751", sessions="rig1") as triggers:
            for trigger in triggers:
                print(trigger.rule, trigger.seq, trigger.value)
    """

    def __init__(self, address: str = DEFAULT_PUBLISH, sessions: str | Iterable[str] | None = None, *,
                 hwm: int = 1000, context: zmq.Context | None = None, keys: ClientKeys | None = None):
        topics = ([protocol.trigger_topic()] if sessions is None
                  else [protocol.trigger_topic(session) for session in _session_list(sessions)])
        super().__init__(address, topics, hwm=hwm, context=context, keys=keys)

    def receive(self, timeout_ms: int | None = None) -> Trigger | None:
        """The next trigger; None if none arrived within ``timeout_ms`` (None: wait). Raises
        :class:`rtcalm.protocol.ProtocolError` for a message that does not parse or is not a trigger."""
        message = self._receive(timeout_ms)
        if message is not None and not isinstance(message, Trigger):
            # Only reachable from a publisher that is not rtcalm (a session id that is not one).
            raise protocol.ProtocolError("wrong_type", f"a {type(message).__name__} arrived under a trigger topic")
        return message

    def __iter__(self) -> Iterator[Trigger]:
        return super().__iter__()


class ControlClient(_SocketClient):
    """Control commands (REQ). Each call sends one request and waits up to ``timeout_ms`` for the reply;
    on a timeout the socket is replaced (a REQ socket cannot send again before it has a reply) and
    TimeoutError is raised. Error replies raise :class:`DaemonError`."""

    def __init__(self, address: str = DEFAULT_CONTROL, *, timeout_ms: int = 5000, context: zmq.Context | None = None,
                 keys: ClientKeys | None = None):
        self._keys = keys
        self.address = address
        self.timeout_ms = timeout_ms
        self._context = context or zmq.Context.instance()
        self._socket = self._new_socket()

    def _new_socket(self) -> zmq.Socket:
        socket = self._context.socket(zmq.REQ)
        if self._keys is not None:
            self._keys.apply(socket)
        socket.setsockopt(zmq.LINGER, 0)
        # A REQ socket without a live peer (daemon down, or a CURVE handshake the daemon refused) blocks
        # in send; bound that wait too, so a request can never hang the caller.
        socket.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        socket.connect(self.address)
        return socket

    def _timed_out(self, cmd: str) -> TimeoutError:
        self._socket.close()
        self._socket = self._new_socket()
        return TimeoutError(f"no reply to {cmd!r} from {self.address} within {self.timeout_ms} ms")

    def request(self, cmd: str, **args) -> dict:
        try:
            self._socket.send(protocol.build_request(cmd, **args))
        except zmq.Again:
            raise self._timed_out(cmd) from None
        if not self._socket.poll(self.timeout_ms, zmq.POLLIN):
            raise self._timed_out(cmd)
        reply = protocol.parse_reply(self._socket.recv())
        if isinstance(reply, ErrorMessage):
            raise DaemonError(reply.code, reply.message)
        return reply

    def status(self) -> dict:
        return self.request("status")

    def start_session(self, session: str, n_neurons: int) -> dict:
        """Start a session with a fixed neuron count (frames with another count are then rejected)."""
        return self.request("start", session=session, n_neurons=int(n_neurons))

    def stop_session(self, session: str) -> dict:
        return self.request("stop", session=session)

    def reset_session(self, session: str) -> dict:
        """Restart a session's statistics and model state; its next frame's sequence number starts anew."""
        return self.request("reset", session=session)

    def get_stats(self, session: str) -> dict:
        """Per-neuron statistics of a session: the reply with its ``vectors`` decoded to numpy arrays
        (float32; ``predictable`` as bool)."""
        reply = self.request("get_stats", session=session)
        vectors = {}
        for name, data in reply["vectors"].items():
            dtype = protocol.UINT8 if name == "predictable" else protocol.FLOAT32_LE
            vectors[name] = np.frombuffer(data, dtype=dtype)
        vectors["predictable"] = vectors["predictable"].astype(bool)
        reply["vectors"] = vectors
        return reply

    def load_model(self, model: str, *, wait: bool = True, timeout_s: float = 120.0, poll_s: float = 0.05) -> dict:
        """Hot-swap the daemon's model (a shipped name or a checkpoint directory on the daemon's machine).
        With ``wait``, block until the swap finished and return the new model's description; raises
        DaemonError('model_load_failed') if it failed (the old model keeps serving)."""
        self.request("load_model", model=model)
        if not wait:
            return {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()["model"]
            if status["loading"] is None:
                if status["last_load_error"] is not None:
                    raise DaemonError("model_load_failed", status["last_load_error"])
                return status
            time.sleep(poll_s)
        raise TimeoutError(f"model {model!r} did not finish loading within {timeout_s} s")

    def load_head(self, session: str, path: str) -> dict:
        """Load a decoding head for a running session: ``path`` is the head's ``.json`` on the daemon's
        machine (its ``.safetensors`` beside it, as ``DecodingHead.save`` writes them). A head with the
        same name is replaced. From the next frame on, the session's predictions carry its outputs in
        ``decoded``. Returns the reply (``head``, ``replaced``, ``heads``); raises DaemonError
        (``unknown_session``, ``head_not_found``, ``head_invalid``, ``head_mismatch``, ``head_conflict``,
        ``too_large``), in which case the session's heads are unchanged."""
        return self.request("load_head", session=session, path=str(path))

    def unload_head(self, session: str, name: str) -> dict:
        """Remove the session's decoding head ``name``; raises DaemonError('unknown_head') if it has none."""
        return self.request("unload_head", session=session, name=name)

    def load_rules(self, session: str, path: str) -> dict:
        """Load a trigger rules file for a running session: ``path`` is the TOML file on the daemon's
        machine (docs/triggers.md). It replaces all of the session's rules at once (an empty file clears
        them); rules start disarmed unless the file arms them. Returns the reply (``session``, ``rules``:
        each rule's fields and state, ``replaced``: how many rules it replaced); raises DaemonError
        (``unknown_session``, ``rules_invalid``), in which case the session's rules are unchanged."""
        return self.request("load_rules", session=session, path=str(path))

    def arm(self, session: str, rules: Iterable[str] | None = None) -> dict:
        """Arm the session's trigger rules named in ``rules`` (all of them when None): from the next
        frame on they fire. Returns the reply (``session``, ``changed``: the names armed, ``rules``);
        raises DaemonError (``unknown_session``, ``unknown_rule``: then no rule changed)."""
        return self.request("arm", session=session, **self._rule_names(rules))

    def disarm(self, session: str, rules: Iterable[str] | None = None) -> dict:
        """Disarm the session's trigger rules named in ``rules`` (all of them when None): they are still
        evaluated (``rules`` shows their values) but never fire. Returns the reply (``session``,
        ``changed``, ``rules``); raises DaemonError (``unknown_session``, ``unknown_rule``)."""
        return self.request("disarm", session=session, **self._rule_names(rules))

    def rules(self, session: str) -> dict:
        """The session's trigger rules with their state (``armed``, ``streak``, ``held``, ``value``,
        ``frames_since_fire``): the reply's ``session`` and ``rules``. Raises DaemonError
        (``unknown_session``)."""
        return self.request("rules", session=session)

    @staticmethod
    def _rule_names(rules: Iterable[str] | None) -> dict:
        if rules is None:
            return {}
        return {"rules": [rules] if isinstance(rules, str) else list(rules)}
