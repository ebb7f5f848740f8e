"""The per-frame pipeline, in one place: receive, validate, update statistics, step the model, publish.

:meth:`Pipeline.process` takes every message drained from the ingest socket in one go (one message
when the daemon keeps up, a backlog when it fell behind) and, per session in arrival order:

1. **validate** each message completely (:class:`rtcalm.daemon.wire.FrameDecoder`, the fast equivalent of
   :func:`rtcalm.protocol.parse_frame`); a bad one is counted,
   answered with an error on the publish socket, and touches no state;
2. **sequence**: a duplicate or an out-of-order frame is dropped (its slot is already in the past); a gap
   of k frames is filled with k missing (all-NaN) frames so the model's time axis stays the
   acquisition's; a gap longer than ``limits.max_gap_frames``, a new neuron count, or a frame flagged
   ``reset`` starts the session's stream afresh;
3. **statistics**: every frame, filled-in ones too, updates the running statistics and is normalised
   with them into the session's pending batch;
4. **model**: the whole pending batch goes through the model: all but the newest frame folded by one
   ``step_many``, then one ``step`` for the newest. No frame is lost from the statistics or the model
   state; only the newest gets its own prediction (the others count as ``batched``). A session with
   decoding heads (:mod:`rtcalm.daemon.heads`) folds its batch frame by frame instead, so that every
   consumed frame's hidden state reaches the heads' EMA pools; the newest frame's is decoded;
5. **rules**: a session with trigger rules (:mod:`rtcalm.triggers`) evaluates them on the newest frame
   (its ΔF/F, the forecast, the decoded values); a rule that fires goes out at once, before the
   prediction: its byte on the serial line, then a ``trigger`` message on the publish socket;
6. **publish** the newest frame's forecast, de-normalised to ΔF/F, and its decoded values under the
   session's topic.

Nothing here blocks: publishing is a PUB send, which drops for a slow subscriber instead of waiting.
"""

from __future__ import annotations

import logging
import time
import traceback

import numpy as np
import zmq

from rtcalm import protocol
from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.engine import WarmedStream
from rtcalm.daemon.heads import LoadedHead, SessionHeads, read_head
from rtcalm.daemon.metrics import RULES_STAGE, DaemonMetrics, RuleMetrics, StageTimes
from rtcalm.daemon.quality import observe_frames
from rtcalm.daemon.session import DUPLICATE, GAP, OUT_OF_ORDER, Session, new_quality
from rtcalm.daemon.wire import FrameDecoder, PredictionEncoder
from rtcalm.engine import StepEngine
from rtcalm.errors import RtcalmError
from rtcalm.model.heads import DecodingHead, HeadConfig, TimeResolvedConfig, TimeResolvedHead
from rtcalm.protocol import Frame, ProtocolError, Trigger
from rtcalm.triggers import kernels as rule_kernels
from rtcalm.triggers.rules import RulesError, RuleSpec, read_rules_file
from rtcalm.triggers.ruleset import RuleSet

log = logging.getLogger("rtcalm.daemon")
perf_ns = time.perf_counter_ns
WARM_UP_NEURONS = 8  # the warm-up stream's size when the engine allows it
wall_ns = time.time_ns


class Pipeline:
    def __init__(self, config: DaemonConfig, engine: StepEngine, metrics: DaemonMetrics, publisher: zmq.Socket,
                 trigger_line=None):
        """``trigger_line``: a :class:`rtcalm.triggers.serial_line.SerialTriggerLine` (or None)."""
        self.config = config
        self.trigger_line = trigger_line
        self.rule_metrics: dict[str, RuleMetrics] = {}  # by session id
        self.limits = config.limits
        self.engine = engine
        self.metrics = metrics
        self.publisher = publisher
        self.sessions: dict[str, Session] = {}
        self.stage_times = StageTimes()
        self.frames = FrameDecoder(max_bytes=self.limits.max_message_bytes, max_neurons=self.limits.max_neurons,
                                   max_abs_dff=self.limits.max_abs_dff,
                                   max_abs_fluorescence=self.limits.max_abs_fluorescence)
        self.predictions = PredictionEncoder()
        self._next_stream_id = 1
        self._interval_levels = list(config.quality.interval_levels)  # as the prediction message carries them
        self._observe_acquisition = config.metrics.rig_clock_is_local

    # --- the hot path ------------------------------------------------------------------------------
    def process(self, batch: list[tuple[list[bytes], int, int]]) -> None:
        """``batch``: (message parts, receive wall-clock ns, receive perf_counter ns) per drained message."""
        # 1. validate
        start = perf_ns()
        by_session: dict[str, list[tuple[Frame, int, int]]] = {}
        for parts, t_recv_ns, t_recv in batch:
            frame = self._validate(parts, t_recv_ns)
            if frame is not None:
                by_session.setdefault(frame.session, []).append((frame, t_recv_ns, t_recv))
        validate_ns = perf_ns() - start

        for session_id, frames in by_session.items():
            try:
                self._advance(session_id, frames, validate_ns)
            except Exception as exc:  # a bug: the session's state may be half-updated, so it restarts
                traceback.print_exc()
                frame = frames[-1][0]
                self.publish_error("internal", f"{type(exc).__name__}: {exc}", session_id, frame.seq, frames[-1][1])
                if session_id in self.sessions:
                    self.restart_session(self.sessions[session_id], "internal")
        # counted after the predictions are out: a metric update is not worth a microsecond of latency
        self.metrics.frames_received.inc(len(batch))
        self.metrics.backlog.set(len(batch))

    def _advance(self, session_id: str, frames: list[tuple[Frame, int, int]], validate_ns: int) -> None:
        """Stages 2-5 for one session's validated frames, oldest first."""
        # 2. sequence and 3. statistics, frame by frame
        start = perf_ns()
        newest, accepted, newest_dff = None, 0, None
        for frame, t_recv_ns, t_recv in frames:
            session = self._session_for(frame, self.sessions.get(session_id), t_recv_ns)
            if session is None or not self._sequence(session, frame, t_recv_ns):
                continue
            session = self.sessions[session_id]  # _sequence may have restarted the stream
            newest_dff = session.dff_of(frame)  # valid until the next frame is converted: it is the last
            self._add(session, newest_dff)
            session.last_seq = frame.seq
            newest, accepted = (frame, t_recv_ns, t_recv), accepted + 1
        if newest is None:
            return
        session = self.sessions[session_id]
        session.last_frame_at = time.monotonic()  # for sessions.idle_timeout_s
        folded = accepted - 1  # received frames answered only through this prediction
        stats_ns = perf_ns() - start

        # 4. model, and the session's decoding heads
        start = perf_ns()
        forecast, decoded = step_session(self.engine, session)
        model_ns = perf_ns() - start

        # 5. rules: a trigger goes out before the prediction (a stimulus line is the time-critical output)
        start = perf_ns()
        frame, t_recv_ns, t_recv = newest
        session.scale.denormalise_into(forecast, session.forecast)
        stage_ns = {"validate": validate_ns, "stats": stats_ns, "model": model_ns}
        rules_ns = 0
        if session.rules is not None:
            rules_start = perf_ns()
            self._apply_rules(session, frame, newest_dff, forecast, decoded)
            rules_ns = stage_ns[RULES_STAGE] = perf_ns() - rules_start

        # 6. publish
        t_pub_ns = wall_ns()
        quality = session.quality
        with_intervals = quality.intervals is not None
        if with_intervals:
            quality.fill_message_intervals(session.scale.std)
        payload = self.predictions.encode(
            session=session_id, seq=frame.seq, t_acq_ns=frame.t_acq_ns, t_recv_ns=t_recv_ns, t_pub_ns=t_pub_ns,
            forecast=session.forecast, predictable=session.predictable, decoded=decoded,
            model_version=self.engine.version, rate_hz=self.engine.rate_hz, stream_id=session.stream_id,
            stream_frame=session.stream_frames - 1, folded=folded, stage_ns=stage_ns,
            interval_levels=self._interval_levels if with_intervals else None,
            interval_scale=quality.interval_scale, interval_multiplier=quality.interval_multiplier)
        # The payload is the encoder's reused buffer, so ZeroMQ must copy it (copy=True); a zero-copy send
        # would need a buffer per message in flight, and pyzmq's zero-copy hands every sent buffer back
        # through a garbage-collection thread that takes the GIL.
        self.publisher.send_multipart((session.topic, payload), copy=True)
        end = perf_ns()
        self._account(session, folded, t_pub_ns - frame.t_acq_ns, end - t_recv, validate_ns, stats_ns, model_ns,
                      end - start - rules_ns, rules_ns)
        # after the send: the mask the next frames' rules read is refreshed at the frame it is due
        fraction = refresh_due_mask(session, self.config.stats)
        if fraction is not None:
            self.metrics.predictable_ratio.labels(session=session.id).set(fraction)

    def _apply_rules(self, session: Session, frame: Frame, dff: np.ndarray, forecast_z: np.ndarray,
                     decoded: dict) -> None:
        """Evaluate the session's trigger rules on its newest frame; send what fired, count what was
        suppressed. Only rules that fired or were suppressed reach Python code here (usually none)."""
        rules = session.rules
        count = rules.evaluate(stream_frames=session.stream_frames, dff=dff, z=session.newest_normalised(),
                               forecast_dff=session.forecast, forecast_z=forecast_z, predictable=session.predictable,
                               decoded=decoded)
        if not count:
            return
        metrics = self.rule_metrics[session.id]
        for i in range(count):
            r = int(rules.events[i])
            outcome = rules.outcome[r]
            if outcome == rule_kernels.REFRACTORY:
                metrics.suppressed["refractory"][r].inc()
            elif outcome == rule_kernels.RATE_LIMIT:
                metrics.suppressed["rate_limit"][r].inc()
            else:
                self._fire(session, frame, r, metrics)

    def _fire(self, session: Session, frame: Frame, r: int, metrics: RuleMetrics) -> None:
        spec = session.rules.specs[r]
        if spec.serial_byte is not None and self.trigger_line is not None:  # the hardware line first
            if not self.trigger_line.send(spec.serial_byte):
                self.metrics.serial_failed.inc()
        t_fire_ns = wall_ns()
        self.publisher.send_multipart((protocol.trigger_topic(session.id), protocol.build_trigger(Trigger(
            session=session.id, seq=frame.seq, rule=spec.name, kind=spec.kind, value=float(session.rules.values[r]),
            threshold=spec.threshold, direction=spec.direction, t_acq_ns=frame.t_acq_ns, t_fire_ns=t_fire_ns,
            stream_id=session.stream_id, stream_frame=session.stream_frames - 1))))
        metrics.fired[r].inc()
        if self._observe_acquisition and t_fire_ns >= frame.t_acq_ns:
            metrics.latency[r].observe((t_fire_ns - frame.t_acq_ns) * 1e-9)

    def _validate(self, parts: list[bytes], t_recv_ns: int) -> Frame | None:
        try:
            if len(parts) != 1:
                raise ProtocolError("malformed", f"a frame is one message part, got {len(parts)}")
            return self.frames.parse(parts[0])
        except ProtocolError as error:
            # Address the error to the sender's session if it can be read, but never unpack more than the
            # size limit for that.
            readable = len(parts) == 1 and len(parts[0]) <= self.limits.max_message_bytes
            session_id, seq = protocol.peek_session(parts[0]) if readable else ("", None)
            self.metrics.malformed[error.code].inc()
            session = self.sessions.get(session_id)
            if session is not None:
                session.counts["rejected"] += 1
            self.publish_error(error.code, error.message, session_id, seq, t_recv_ns)
            return None

    def _session_for(self, frame: Frame, session: Session | None, t_recv_ns: int) -> Session | None:
        """The session stream this frame belongs to: starting one for a new session (auto_start),
        restarting it for a new neuron count or a reset flag; None (after an error) if it is refused."""
        if session is None:
            if not self.config.sessions.auto_start:
                self.publish_error("unknown_session", f"session {frame.session!r} is not started and "
                                   "sessions.auto_start is off: send the start command first",
                                   frame.session, frame.seq, t_recv_ns)
                return None
            if len(self.sessions) >= self.limits.max_sessions and not self.expire_idle_sessions():
                self.publish_error("too_many_sessions", f"already serving {len(self.sessions)} sessions "
                                   f"(limits.max_sessions), none idle for sessions.idle_timeout_s; stop one "
                                   "first", frame.session, frame.seq, t_recv_ns)
                return None
            try:
                session = self.start_session(frame.session, frame.n_neurons, pinned=False)
            except ProtocolError as error:
                self.publish_error(error.code, error.message, frame.session, frame.seq, t_recv_ns)
                return None
        elif frame.n_neurons != session.n_neurons:
            if session.pinned:
                session.counts["rejected"] += 1
                self.metrics.malformed["neuron_count"].inc()
                self.publish_error("neuron_count", f"frame has {frame.n_neurons} neurons, session "
                                   f"{session.id!r} was started with {session.n_neurons}",
                                   session.id, frame.seq, t_recv_ns)
                return None
            try:
                session = self.restart_session(session, "neuron_count", n_neurons=frame.n_neurons)
            except ProtocolError as error:  # the model cannot serve the new count: keep the old stream
                session.counts["rejected"] += 1
                self.publish_error(error.code, error.message, session.id, frame.seq, t_recv_ns)
                return None
        elif frame.reset:
            session = self.restart_session(session, "reset")
        if not session.accepts_kind(frame):
            session.counts["rejected"] += 1
            self.metrics.malformed["bad_field"].inc()
            self.publish_error("bad_field", f"session {session.id!r} streams {session.input_kind}; this frame "
                               "carries the other kind (reset the session to switch)", session.id, frame.seq,
                               t_recv_ns)
            return None
        return session

    def _sequence(self, session: Session, frame: Frame, t_recv_ns: int) -> bool:
        """Classify the frame's sequence number; fill a gap. False: drop the frame."""
        kind, missing = session.classify(frame.seq)
        if kind == DUPLICATE:
            session.counts["duplicates"] += 1
            self.metrics.duplicates.inc()
            self.publish_error("duplicate", f"frame {frame.seq} was already received", session.id, frame.seq,
                               t_recv_ns)
            return False
        if kind == OUT_OF_ORDER:
            session.counts["reordered"] += 1
            self.metrics.reordered.inc()
            self.publish_error("out_of_order", f"frame {frame.seq} arrived after frame {session.last_seq} was "
                               "processed; dropped, since the stream is past its slot. A rig that restarts its "
                               "sequence numbers must send reset=true or use a new session id", session.id,
                               frame.seq, t_recv_ns)
            return False
        if kind == GAP:
            session.counts["gaps"] += 1
            self.metrics.gaps.inc()
            if missing > self.limits.max_gap_frames:
                self.publish_error("gap_too_large", f"{missing} frames missing before frame {frame.seq} (more "
                                   f"than limits.max_gap_frames = {self.limits.max_gap_frames}); the session's "
                                   "statistics and model state restarted", session.id, frame.seq, t_recv_ns)
                self.restart_session(session, "gap_too_large")
                return True
            session.counts["gap_frames"] += missing
            self.metrics.gap_frames.inc(missing)
            if session.rules is not None:
                session.rules.gap(missing)
            for _ in range(missing):
                self._add(session, session.missing_dff())
        return True

    def _add(self, session: Session, values: np.ndarray) -> None:
        if session.pending_full():  # a batch longer than the buffer: fold what is there first
            fold_frames(self.engine, session, session.take_pending())
        session.add_frame(values)

    def _account(self, session: Session, folded: int, acquisition_to_publish_ns: int, receive_to_publish_ns: int,
                 validate_ns: int, stats_ns: int, model_ns: int, publish_ns: int, rules_ns: int) -> None:
        session.counts["accepted"] += folded + 1
        session.counts["published"] += 1
        session.counts["batched"] += folded
        m = self.metrics
        m.predictions_published.inc()
        if folded:
            m.batched.inc(folded)
        m.receive_to_publish.observe(receive_to_publish_ns * 1e-9)
        m.stage["validate"].observe(validate_ns * 1e-9)
        m.stage["stats"].observe(stats_ns * 1e-9)
        m.stage["model"].observe(model_ns * 1e-9)
        m.stage["publish"].observe(publish_ns * 1e-9)
        if rules_ns:
            m.stage[RULES_STAGE].observe(rules_ns * 1e-9)
        if self._observe_acquisition and acquisition_to_publish_ns >= 0:
            m.acquisition_to_publish.observe(acquisition_to_publish_ns * 1e-9)
        self.stage_times.record(receive_to_publish_ns, validate_ns, stats_ns, model_ns, publish_ns)

    # --- errors --------------------------------------------------------------------------------------
    def publish_error(self, code: str, message: str, session_id: str = "", seq: int | None = None,
                      t_recv_ns: int | None = None) -> None:
        self.metrics.errors_published[code].inc()
        self.publisher.send_multipart((protocol.topic_for(session_id),
                                       protocol.build_error(code, message, session=session_id, seq=seq,
                                                            t_recv_ns=t_recv_ns)))

    # --- session lifecycle ---------------------------------------------------------------------------
    def start_session(self, session_id: str, n_neurons: int, *, pinned: bool) -> Session:
        """Raises ProtocolError, changing nothing, when the engine cannot serve ``n_neurons`` (a compiled
        artifact's range: 'neuron_range') or the sessions would exceed limits.max_total_neurons
        ('too_large'). ``session_id``'s current stream, if any, is the one being replaced."""
        if not self.engine.neurons.contains(n_neurons):
            raise ProtocolError("neuron_range", f"{n_neurons} neurons: the serving model {self.engine.version} "
                                f"({self.engine.backend}) runs {self.engine.neurons.describe()}")
        others = sum(s.n_neurons for s in self.sessions.values() if s.id != session_id)
        if others + n_neurons > self.limits.max_total_neurons:
            raise ProtocolError("too_large", f"{n_neurons} more neurons would make {others + n_neurons} over all "
                                f"sessions, above limits.max_total_neurons = {self.limits.max_total_neurons}")
        session = Session(session_id, n_neurons, self._next_stream_id, self.engine, self.config, pinned=pinned)
        self._next_stream_id += 1
        self.sessions[session_id] = session
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.neurons.labels(session=session_id).set(n_neurons)
        self.metrics.predictable_ratio.labels(session=session_id).set(0.0)
        self.metrics.heads.labels(session=session_id).set(0)
        return session

    def restart_session(self, session: Session, reason: str, *, n_neurons: int | None = None) -> Session:
        """A fresh stream for the same session id (its counters carry over, and its decoding heads with
        zeroed pools, unless the neuron count changed: then they no longer fit and are dropped)."""
        fresh = self.start_session(session.id, n_neurons or session.n_neurons, pinned=session.pinned)
        fresh.counts.update(session.counts)
        self.metrics.session_restarts[reason].inc()
        if fresh.n_neurons == session.n_neurons:
            session.heads.reset_pools()
            fresh.heads = session.heads
            self.metrics.heads.labels(session=fresh.id).set(len(fresh.heads))
            if session.rules is not None:
                session.rules.restart(stream_frames=0)
                self._install_rules(fresh, session.rules)
        else:
            if session.heads:
                self._drop_heads(session, "neuron_count", f"the session now has {fresh.n_neurons} neurons, the "
                                                          f"heads were fitted for {session.n_neurons}")
            if session.rules is not None:
                self._drop_rules(fresh, "neuron_count", f"the session now has {fresh.n_neurons} neurons, the rules "
                                                        f"were loaded for {session.n_neurons}")
        return fresh

    def expire_idle_sessions(self, now: float | None = None) -> list[str]:
        """Stop every session that has had no frame for sessions.idle_timeout_s (0: never); returns their
        ids. Run in housekeeping, and before refusing a new session for limits.max_sessions."""
        timeout = self.config.sessions.idle_timeout_s
        if timeout <= 0:
            return []
        now = time.monotonic() if now is None else now
        expired = [s for s in self.sessions.values() if now - s.last_frame_at > timeout]
        for session in expired:
            self.stop_session(session.id)
            self.metrics.sessions_expired.inc()
            log.info("session %s expired: no frame for %.0f s (sessions.idle_timeout_s = %g); its state is freed, "
                     "its next frame starts it afresh", session.id, now - session.last_frame_at, timeout)
        return [s.id for s in expired]

    def stop_session(self, session_id: str) -> Session | None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self.metrics.sessions.set(len(self.sessions))
            self.metrics.forget_session(session_id)
            if session_id in self.rule_metrics:
                self.metrics.forget_rules(self.rule_metrics.pop(session_id))
        return session

    # --- decoding heads (control commands, between batches) -------------------------------------------
    def load_head(self, session: Session, path: str) -> dict:
        """Read and check the head at ``path`` for ``session``, then add it (or replace the head of the
        same name) at once. Raises ProtocolError, changing nothing, if it does not fit (rtcalm.daemon.heads)."""
        head = read_head(path, n_neurons=session.n_neurons, d_model=self.engine.config.d_model)
        session.heads.check_room(head)
        loaded = LoadedHead(head, path)
        replaced = session.heads.install(loaded)
        self._heads_changed(session)
        log.info("session %s: decoding head %r loaded from %s", session.id, loaded.name, path)
        return {"session": session.id, "head": loaded.describe(), "replaced": replaced,
                "heads": session.heads.describe()}

    def unload_head(self, session: Session, name: str) -> dict:
        """Raises ProtocolError('unknown_head') if ``session`` has no head ``name``."""
        session.heads.remove(name)
        self._heads_changed(session)
        return {"session": session.id, "unloaded": name, "heads": session.heads.describe()}

    def _drop_heads(self, session: Session, reason: str, why: str) -> None:
        """The session's heads no longer fit its stream or the model: drop them, count and log it."""
        names = session.heads.names()
        session.heads = SessionHeads()
        self.metrics.heads_dropped[reason].inc(len(names))
        self._heads_changed(session)
        log.warning("session %s: decoding heads %s dropped: %s; load heads that fit to decode again",
                    session.id, names, why)

    def _heads_changed(self, session: Session) -> None:
        """Decoded trigger rules read the session's heads as they are now (a rule whose head is gone reads
        nothing and cannot fire)."""
        self.metrics.heads.labels(session=session.id).set(len(session.heads))
        if session.rules is not None:
            session.rules.bind_heads(session.heads.classes())

    # --- trigger rules (control commands, between batches) ---------------------------------------------
    def load_rules(self, session: Session, path: str) -> dict:
        """Read, check and compile the rules file at ``path`` for ``session``, then replace the session's
        rules with it in one assignment (between batches: no frame sees half a rule set). Raises
        ProtocolError('rules_invalid'), changing nothing, if any rule is wrong or does not fit."""
        engine = self.engine
        try:
            rules = RuleSet(read_rules_file(path), n_neurons=session.n_neurons, horizon=engine.horizon,
                            rate_hz=engine.rate_hz, receptive_field=engine.receptive_field,
                            heads=session.heads.classes())
        except RulesError as error:
            raise ProtocolError("rules_invalid", str(error)) from None
        rules.restart(stream_frames=session.stream_frames)
        replaced = 0 if session.rules is None else len(session.rules)
        self._install_rules(session, rules)
        log.info("session %s: %d trigger rules loaded from %s (%d armed)", session.id, len(rules), path,
                 int(rules.armed.sum()))
        return {"session": session.id, "rules": rules.describe(), "replaced": replaced}

    def set_armed(self, session: Session, names: list[str] | None, armed: bool) -> dict:
        """Arm or disarm the session's rules ``names`` (all when None). Raises ProtocolError
        ('unknown_rule'), changing nothing, if a name is not a rule of the session."""
        if session.rules is None:
            raise ProtocolError("unknown_rule", f"session {session.id!r} has no trigger rules; load_rules first")
        try:
            changed = session.rules.set_armed(names, armed)
        except KeyError as error:
            raise ProtocolError("unknown_rule", f"no trigger rule(s) {error.args[0]} in session {session.id!r} "
                                f"(rules: {', '.join(session.rules.names) or 'none'})") from None
        self.metrics.rules_armed.labels(session=session.id).set(int(session.rules.armed.sum()))
        log.info("session %s: rules %s %s", session.id, changed, "armed" if armed else "disarmed")
        return {"session": session.id, "changed": changed, "rules": session.rules.describe()}

    def _install_rules(self, session: Session, rules: RuleSet) -> None:
        previous = self.rule_metrics.pop(session.id, None)
        if previous is not None and previous.names != rules.names:
            self.metrics.forget_rules(previous)
            previous = None
        self.rule_metrics[session.id] = previous or RuleMetrics(self.metrics, session.id, rules.names)
        session.rules = rules if len(rules) else None
        self.metrics.rules_armed.labels(session=session.id).set(int(rules.armed.sum()))

    def _drop_rules(self, session: Session, reason: str, why: str) -> None:
        """The session's rules no longer fit its stream or the model: drop them (nothing can fire), count
        and log it."""
        session.rules = None
        self.metrics.rules_dropped[reason].inc()
        self.metrics.rules_armed.labels(session=session.id).set(0)
        log.warning("session %s: trigger rules dropped: %s; load rules that fit to trigger again", session.id, why)

    # --- between batches -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run every per-frame piece once on a throw-away stream of a few neurons, so that the first real
        frame does not pay for loading numba kernels or the backend's first calls (hundreds of
        milliseconds). The count is one the engine serves (a compiled artifact may be for a fixed range)."""
        neurons = self.engine.neurons
        n_probe = min(max(WARM_UP_NEURONS, neurons.min), neurons.max)
        frame = np.linspace(-1.0, 1.0, n_probe, dtype=np.float32)
        self.frames.parse(protocol.build_frame("warm-up", 0, 0, frame))
        self.frames.parse(protocol.build_frame("warm-up", 0, 0, raw=frame + 2.0, neuropil=frame + 1.0))
        d_model = self.engine.config.d_model
        # one head of each family: their kernels' argument types do not depend on the head's kind or features
        warm_heads = [DecodingHead(HeadConfig("warm-up", "classification", n_probe, d_model, pool_frames=2.0,
                                              classes=[0.0, 1.0])),
                      TimeResolvedHead(TimeResolvedConfig("warm-up-bins", "classification", n_probe, d_model,
                                                          window_frames=4, n_bins=2, components=1,
                                                          classes=[0.0, 1.0], features="both"))]
        for kind in ("dff", "fluorescence"):
            session = Session("warm-up", frame.shape[0], 0, self.engine, self.config, pinned=False)
            if kind == "dff":  # the decoding heads' state updates and readouts too
                for warm_head in warm_heads:
                    session.heads.install(LoadedHead(warm_head, "warm-up"))
            probe = Frame("warm-up", 0, 0, n_probe, frame if kind == "dff" else None,
                          raw=None if kind == "dff" else frame + 2.0, neuropil=None if kind == "dff" else frame + 1.0)
            session.accepts_kind(probe)
            for step in range(3):
                session.add_frame(session.dff_of(probe) * np.float32(step + 1))
            session.add_frame(session.missing_dff())
            forecast, decoded = step_session(self.engine, session)
            session.scale.denormalise_into(forecast, session.forecast)
            if session.quality.intervals is not None:
                session.quality.fill_message_intervals(session.scale.std)
            if kind == "dff":  # the rule kernels, whose first call would otherwise load them mid-experiment
                rules = RuleSet(_warm_up_rules(self.engine.horizon), n_neurons=n_probe, horizon=self.engine.horizon,
                                rate_hz=self.engine.rate_hz, receptive_field=0, heads={})
                rules.evaluate(stream_frames=session.stream_frames, dff=frame, z=session.newest_normalised(),
                               forecast_dff=session.forecast, forecast_z=forecast, predictable=session.predictable,
                               decoded=decoded)
            session.refresh_predictable(self.config.stats.predictable_method,
                                        self.config.stats.thresholds_refresh_frames)

    def housekeeping(self) -> None:
        """Expire idle sessions and refresh the predictable masks still due: those whose knee thresholds
        must be re-chosen first (too slow for the per-frame path, :func:`refresh_due_mask`). Called when
        the ingest queue is empty."""
        stats = self.config.stats
        self.expire_idle_sessions()
        for session in list(self.sessions.values()):
            if session.stream_frames - session.frames_at_mask >= stats.predictable_refresh_frames:
                try:
                    fraction = session.refresh_predictable(stats.predictable_method, stats.thresholds_refresh_frames)
                except Exception:  # a bug: keep the previous mask and keep serving
                    traceback.print_exc()
                    session.frames_at_mask = session.stream_frames
                    continue
                self.metrics.predictable_ratio.labels(session=session.id).set(fraction)
            if session.stream_frames - session.frames_at_quality >= stats.predictable_refresh_frames:
                session.frames_at_quality = session.stream_frames
                self.metrics.set_quality(session.id, session.quality)

    def install_engine(self, engine: StepEngine, warmed: dict[int, WarmedStream]) -> None:
        """Switch every session to ``engine`` (between batches: nothing is pending). A session warmed by
        the swap catches up on the frames that arrived since its snapshot; any other (started during
        the load, or too far ahead) is warmed here from its history. Raises RtcalmError, changing
        nothing, if ``engine`` cannot serve a running session's neuron count."""
        unservable = sorted(s.id for s in self.sessions.values() if not engine.neurons.contains(s.n_neurons))
        if unservable:
            raise RtcalmError(f"model {engine.version} ({engine.backend}) runs {engine.neurons.describe()}, "
                              f"which does not fit running session(s) {unservable}")
        for session in self.sessions.values():
            ready = warmed.get(session.stream_id)
            behind = None if ready is None else session.stream_frames - ready.frames_at_snapshot
            if ready is not None and behind <= session.history.shape[0]:
                state = ready.state
                engine.fold(session.history_tail(behind), state)
            else:
                state = engine.new_stream(session.n_neurons)
                engine.fold(session.history_tail(engine.receptive_field), state)
            session.model_state = state
            session.quality = new_quality(session.n_neurons, engine.horizon, self.config)  # the new model's own
            if session.forecast.shape[1] != engine.horizon:
                session.forecast = np.empty((session.n_neurons, engine.horizon), dtype=np.float32)
        # A head reads the hidden state of the backbone it was fitted on; another model's hidden state means
        # something else even at the same width, and a closed loop must not act on such a readout.
        for session in self.sessions.values():
            if session.heads:
                self._drop_heads(session, "model_swap", f"model {engine.version} replaced {self.engine.version}, "
                                 "which the heads were fitted on")
            if session.rules is None:
                continue
            if session.rules.fits(n_neurons=session.n_neurons, horizon=engine.horizon):
                session.rules.receptive_field = engine.receptive_field
                session.rules.restart(stream_frames=session.stream_frames)  # forecasts from a new model: held
            else:
                self._drop_rules(session, "model_swap", f"model {engine.version} forecasts {engine.horizon} frames, "
                                 "fewer than a forecast rule looks ahead")
        self.engine = engine


def _warm_up_rules(horizon: int) -> list[RuleSpec]:
    """One rule of each neuron-reading kind, every neuron-set mode and reduction among them."""
    return [RuleSpec("warm-activity", "activity", threshold=0.0, neurons="all", reduce="mean", armed=True),
            RuleSpec("warm-forecast", "forecast", threshold=0.0, neurons="predictable", reduce="count_above",
                     level=0.0, frames=(1, horizon), armed=True),
            RuleSpec("warm-indices", "activity", threshold=0.0, neurons=(0,), reduce="max", units="dff")]


# --- stepping a session's model and heads: the daemon's and the offline replay's (rtcalm.daemon.offline) ---
def refresh_due_mask(session: Session, stats) -> float | None:
    """Refresh the session's predictable mask if it is due (``stats.predictable_refresh_frames`` frames
    since the last), from the statistics as they stand after the frame that made it due; return the
    predictable fraction, or None if nothing was done. Called between frames by the daemon (right after
    a prediction is sent) and by the offline replay, so rules on ``predictable`` neurons read the same
    mask in both whatever the daemon's load (with no frame folded). Applying thresholds to the current
    skewness and kurtosis costs microseconds; re-choosing knee thresholds (``stats.predictable_method =
    "knee"``, hundreds of ms at thousands of neurons) does not belong on the per-frame path, so a mask
    whose thresholds are due is left to housekeeping (None)."""
    if session.stream_frames - session.frames_at_mask < stats.predictable_refresh_frames:
        return None
    if session.thresholds_due(stats.predictable_method, stats.thresholds_refresh_frames):
        return None
    return session.refresh_predictable(stats.predictable_method, stats.thresholds_refresh_frames)


def step_session(engine: StepEngine, session: Session) -> tuple[np.ndarray, dict]:
    """The session's pending frames through the model: the newest frame's forecast (normalised, an
    engine buffer) and its decoded values. Decoding heads take *every* consumed frame (its hidden state
    and its ΔF/F as received), and an engine only exposes the latest frame's hidden state, so a session
    with heads folds its batch one frame at a time (the engines step frame by frame anyway: only the
    hidden readout is extra)."""
    frames = session.take_pending()
    if not session.heads:
        forecast = engine.step(frames, session.model_state)
        observe_frames(session.quality, frames, forecast)
        return forecast, {}
    fold_frames(engine, session, frames[:-1])
    forecast = engine.step(frames[-1:], session.model_state)
    observe_frames(session.quality, frames[-1:], forecast)
    return forecast, session.heads.decode(engine.hidden(session.model_state), session.pending_dff[frames.shape[0] - 1])


def fold_frames(engine: StepEngine, session: Session, frames: np.ndarray) -> None:
    """Consume ``frames`` (the session's pending rows from row 0, normalised) without a prediction; with
    heads, each frame's hidden state and ΔF/F (``session.pending_dff``, row for row) still enter their
    states, and each frame is scored against the forecasts made for it (forecast quality)."""
    observe_frames(session.quality, frames, None)
    if not session.heads:
        engine.fold(frames, session.model_state)
        return
    for i in range(frames.shape[0]):
        engine.fold(frames[i:i + 1], session.model_state)
        session.heads.absorb(engine.hidden(session.model_state), session.pending_dff[i])
