"""Control commands (the REQ/REP socket): status, start, stop, reset, load_model, get_stats, load_head,
unload_head, load_rules, arm, disarm, rules.

Every request gets exactly one reply (REP requires it): a ``reply`` with ``ok: true`` or an ``error``
with a code from :data:`rtcalm.protocol.ERROR_CODES`. A command either completes or changes nothing.
``load_model`` only *starts* a hot swap and replies at once; ``status`` reports its progress
(``model.loading``) and outcome (``model.version`` or ``model.last_load_error``). ``load_head`` reads a
decoding head synchronously (a small file: milliseconds, during which frames wait in the ingest queue)
and checks it fully before the session's heads change; ``load_rules`` does the same for a trigger rules
file, and replaces the session's rules in one step.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Protocol

from rtcalm import __version__, protocol
from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.engine import ModelSwap
from rtcalm.daemon.metrics import DaemonMetrics
from rtcalm.daemon.pipeline import Pipeline
from rtcalm.protocol import ControlRequest, ProtocolError

DEFAULT_LATENCY_FRAMES = 3000  # 100 s at 30 Hz


class ControlledDaemon(Protocol):
    """What the commands read and call on the daemon (:class:`rtcalm.daemon.server.Daemon` has it). A
    protocol, so that this module needs nothing from the server, which imports it."""

    config: DaemonConfig
    metrics: DaemonMetrics
    pipeline: Pipeline
    endpoints: dict
    swap: ModelSwap | None
    last_load_error: str | None

    def begin_model_swap(self, spec: str) -> None: ...


class ControlHandler:
    def __init__(self, daemon: ControlledDaemon):
        self.daemon = daemon
        self.started_at = time.time()

    def handle(self, parts: list[bytes]) -> bytes:
        cmd = None
        try:
            if len(parts) != 1:
                raise ProtocolError("malformed", f"a request is one message part, got {len(parts)}")
            request = protocol.parse_request(parts[0], max_bytes=self.daemon.config.limits.max_message_bytes)
            cmd = request.cmd
            reply = getattr(self, f"cmd_{request.cmd}")(request)
            self.daemon.metrics.control_requests.labels(cmd=cmd, result="ok").inc()
            return protocol.build_reply(cmd, **reply)
        except ProtocolError as error:
            return self._error(parts, cmd, error.code, error.message)
        except Exception as exc:  # a bug: answer (REP must) and keep serving
            traceback.print_exc()
            return self._error(parts, cmd, "internal", f"{type(exc).__name__}: {exc}")

    def _error(self, parts: list[bytes], cmd: str | None, code: str, message: str) -> bytes:
        """An error reply, counted like a published error, addressed to the request's session when its
        id can be read (the same best-effort reading as for a rejected frame, within the size limit)."""
        metrics = self.daemon.metrics
        metrics.control_requests.labels(cmd=cmd or "invalid", result=code).inc()
        metrics.errors_published[code].inc()
        readable = len(parts) == 1 and len(parts[0]) <= self.daemon.config.limits.max_message_bytes
        session, _seq = protocol.peek_session(parts[0]) if readable else ("", None)
        return protocol.build_error(code, message, session=session, cmd=cmd)

    # --- commands ------------------------------------------------------------------------------------
    def cmd_status(self, request: ControlRequest) -> dict:
        daemon, pipeline = self.daemon, self.daemon.pipeline
        model = pipeline.engine.describe()
        model["loading"] = daemon.swap.spec if daemon.swap is not None else None
        model["last_load_error"] = daemon.last_load_error
        # Percentiles over the most recent frames only by default: sorting the whole 65536-frame buffer
        # takes ~20 ms, which would stall frames each time a client polls status.
        latency_frames = request.optional_int("latency_frames", 1, 1 << 30) or DEFAULT_LATENCY_FRAMES
        return {"daemon": {"version": __version__, "pid": os.getpid(),
                           "uptime_s": time.time() - self.started_at, "protocol": protocol.PROTOCOL_VERSION},
                "endpoints": daemon.endpoints, "model": model,
                "sessions": [s.describe() for s in pipeline.sessions.values()],
                "latency": pipeline.stage_times.summary(latency_frames), "config": daemon.config.to_dict()}

    def cmd_start(self, request: ControlRequest) -> dict:
        session_id = request.session()
        n_neurons = request.optional_int("n_neurons", 1, self.daemon.config.limits.max_neurons)
        if n_neurons is None:
            raise ProtocolError("bad_field", "start needs 'n_neurons' (frames of another count are then "
                                             "rejected); without a start, the first frame starts a session")
        pipeline = self.daemon.pipeline
        if session_id in pipeline.sessions:
            raise ProtocolError("session_exists", f"session {session_id!r} is already running; "
                                                  "reset or stop it first")
        if len(pipeline.sessions) >= self.daemon.config.limits.max_sessions and not pipeline.expire_idle_sessions():
            raise ProtocolError("too_many_sessions", f"already serving {len(pipeline.sessions)} sessions "
                                                     "(limits.max_sessions), none idle for sessions.idle_timeout_s")
        return pipeline.start_session(session_id, n_neurons, pinned=True).describe()

    def cmd_stop(self, request: ControlRequest) -> dict:
        session = self.daemon.pipeline.stop_session(self._existing(request).id)
        return session.describe()

    def cmd_reset(self, request: ControlRequest) -> dict:
        return self.daemon.pipeline.restart_session(self._existing(request), "reset").describe()

    def cmd_get_stats(self, request: ControlRequest) -> dict:
        return self._existing(request).statistics()

    def cmd_load_model(self, request: ControlRequest) -> dict:
        spec = request.string("model")
        self.daemon.begin_model_swap(spec)
        return {"loading": spec, "serving": self.daemon.pipeline.engine.version}

    def cmd_load_head(self, request: ControlRequest) -> dict:
        session = self._existing(request)
        return self.daemon.pipeline.load_head(session, request.string("path"))

    def cmd_unload_head(self, request: ControlRequest) -> dict:
        session = self._existing(request)
        return self.daemon.pipeline.unload_head(session, request.string("name"))

    def cmd_load_rules(self, request: ControlRequest) -> dict:
        session = self._existing(request)
        return self.daemon.pipeline.load_rules(session, request.string("path"))

    def cmd_arm(self, request: ControlRequest) -> dict:
        return self.daemon.pipeline.set_armed(self._existing(request), _rule_names(request), True)

    def cmd_disarm(self, request: ControlRequest) -> dict:
        return self.daemon.pipeline.set_armed(self._existing(request), _rule_names(request), False)

    def cmd_rules(self, request: ControlRequest) -> dict:
        session = self._existing(request)
        return {"session": session.id, "rules": [] if session.rules is None else session.rules.describe()}

    def _existing(self, request: ControlRequest):
        session_id = request.session()
        session = self.daemon.pipeline.sessions.get(session_id)
        if session is None:
            raise ProtocolError("unknown_session", f"no session {session_id!r} is running")
        return session


def _rule_names(request: ControlRequest) -> list[str] | None:
    """The optional ``rules`` field of arm / disarm: a non-empty list of rule names (None: every rule)."""
    names = request.args.get("rules")
    if names is None:
        return None
    if not isinstance(names, list) or not names or not all(type(name) is str and name for name in names):
        raise ProtocolError("bad_field", "field 'rules' must be a non-empty list of rule names (leave it out for all)")
    return names
