"""The daemon process: sockets, the event loop, hot swaps, metrics server.

One thread does all the work. It polls the ingest and control sockets; control requests are answered
between batches; ingest messages are drained (up to ``limits.max_backlog_frames`` at a time) and handed
to :class:`rtcalm.daemon.pipeline.Pipeline`. When the ingest queue is empty it does housekeeping
(predictable masks) and installs a hot-swapped model once its background load has finished.

Sockets (all bound by the daemon; the rig and subscribers connect):

- ingest  PULL: frames from rigs (PUSH). Errors cannot go back on a PULL socket; they are published.
- publish PUB:  predictions and errors, topic = session id + NUL.
- control REP:  commands, one reply per request.

With ``[security]`` keys all three are CurveZMQ servers, and a ZAP authenticator thread
(``zmq.auth.thread.ThreadAuthenticator``) admits only clients whose public key is in the authorized
directory; other peers fail the handshake and never deliver a message (see rtcalm/security.py).
"""

from __future__ import annotations

import gc
import threading
import time
import traceback
from dataclasses import dataclass
from functools import partial

import zmq
from zmq.auth.thread import ThreadAuthenticator

from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.control import ControlHandler
from rtcalm.daemon.engine import ModelSwap, SessionSnapshot, set_threads
from rtcalm.daemon.metrics import DaemonMetrics
from rtcalm.daemon.pipeline import Pipeline
from rtcalm.engine import StepEngine, load_engine
from rtcalm.errors import RtcalmError
from rtcalm.protocol import ProtocolError
from rtcalm.security import ServerKeys

DRAIN_TIMEOUT_S = 2.0  # at most this long answering queued frames after a stop request
# A stop request can arrive while a rig's last frames are still in flight on the wire: the drain
# ends only after the ingest socket has been quiet this long.
DRAIN_QUIET_MS = 100
# On close, predictions already handed to ZeroMQ (the drained ones) get this long to leave.
PUBLISH_LINGER_MS = 1000
POLL_INTERVAL_MS = 50  # how often an idle loop checks for stop requests and finished model loads
# ZeroMQ drops (and disconnects) a message this many times over limits.max_message_bytes before
# buffering it; up to that size the pipeline rejects it with a 'too_large' error that the rig sees.
TRANSPORT_SIZE_FACTOR = 4


@dataclass
class Sockets:
    ingest: zmq.Socket
    publish: zmq.Socket
    control: zmq.Socket
    endpoints: dict

    def close(self) -> None:
        self.ingest.close(linger=0)
        self.control.close(linger=0)
        self.publish.close(linger=PUBLISH_LINGER_MS)


def open_sockets(context: zmq.Context, config: DaemonConfig, keys: ServerKeys | None = None) -> Sockets:
    """Create and bind the three sockets (the one place socket options live), as CurveZMQ servers when
    ``keys`` are given. Raises RtcalmError naming the address if one cannot be bound."""
    limits = config.limits
    ingest = context.socket(zmq.PULL)
    ingest.setsockopt(zmq.RCVHWM, limits.ingest_hwm)
    ingest.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_SIZE_FACTOR * limits.max_message_bytes)
    publish = context.socket(zmq.PUB)
    publish.setsockopt(zmq.SNDHWM, limits.publish_hwm)
    control = context.socket(zmq.REP)
    control.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_SIZE_FACTOR * limits.max_message_bytes)
    sockets = Sockets(ingest, publish, control, {})
    for socket in (ingest, publish, control):
        socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(socket)
    try:
        for name, socket in (("ingest", ingest), ("publish", publish), ("control", control)):
            address = getattr(config.sockets, name)
            try:
                socket.bind(address)
            except zmq.ZMQError as exc:
                raise RtcalmError(f"cannot bind the {name} socket to {address}: {exc}") from None
            sockets.endpoints[name] = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    except BaseException:
        sockets.close()
        raise
    return sockets


class Daemon:
    """The real-time daemon. ``engine``: a loaded model (default: ``config.model.name`` on
    ``config.model.backend``, from ``config.model.artifact`` when set); ``model_loader``: how ``load_model``
    turns a name or path into a StepEngine (default: :func:`rtcalm.engine.load_engine` on the configured
    backend; a hot-swapped checkpoint's compiled artifacts are found in its ``compiled/`` directory).

        daemon = Daemon(config)
        daemon.start()          # bind sockets, start the metrics server
        daemon.run()            # until stop() (from another thread or a signal handler)
        daemon.close()
    """

    def __init__(self, config: DaemonConfig, *, engine: StepEngine | None = None, model_loader=None):
        self.config = config
        model = config.model
        self.model_loader = model_loader or partial(load_engine, backend=model.backend, threads=model.threads)
        set_threads(model.threads)
        self.metrics = DaemonMetrics()
        initial = engine if engine is not None else load_engine(model.name, backend=model.backend,
                                                                 artifact=model.artifact, threads=model.threads)
        self.metrics.set_model(initial.version, initial.backend)
        self._initial_engine = initial
        self.swap: ModelSwap | None = None
        self.last_load_error: str | None = None
        self.context: zmq.Context | None = None
        self.authenticator: ThreadAuthenticator | None = None
        self.sockets: Sockets | None = None
        self.pipeline: Pipeline | None = None
        self.control: ControlHandler | None = None
        self.endpoints: dict = {}
        self.trigger_line = None  # the serial trigger line ([triggers] serial_port), opened by start()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> dict:
        """Bind the sockets and start the metrics server. Returns the bound endpoints (with the actual
        ports when ephemeral ones were asked for)."""
        self.context = zmq.Context()
        try:
            keys = self._start_authenticator() if self.config.security.enabled else None
            self.sockets = open_sockets(self.context, self.config, keys)
            self.endpoints = dict(self.sockets.endpoints)
            metrics = self.config.metrics
            if metrics.enabled:
                try:
                    port = self.metrics.serve(metrics.host, metrics.port)
                except OSError as exc:
                    raise RtcalmError(f"cannot serve metrics on {metrics.host}:{metrics.port}: {exc}") from None
                self.endpoints["metrics"] = f"http://{metrics.host}:{port}/metrics"
            triggers = self.config.triggers
            if triggers.serial_port is not None:
                from rtcalm.triggers.serial_line import SerialTriggerLine

                self.trigger_line = SerialTriggerLine(triggers.serial_port, triggers.serial_baudrate)
                self.endpoints["serial_trigger_line"] = triggers.serial_port
        except BaseException:
            self.close()
            raise
        self.pipeline = Pipeline(self.config, self._initial_engine, self.metrics, self.sockets.publish,
                                 trigger_line=self.trigger_line)
        self.pipeline.warm_up()
        self.control = ControlHandler(self)
        # Everything allocated so far (torch, numba, the model) lives as long as the process. Moving it
        # out of the garbage collector's view turns a full collection from ~0.1 s (a quarter of a
        # million objects) into almost nothing, so one can never stall a frame by several periods.
        gc.collect()
        gc.freeze()
        return self.endpoints

    def _start_authenticator(self) -> ServerKeys:
        """Load the keys (RtcalmError if they are missing or bad) and start the ZAP handler that checks
        every connecting client's public key against the authorized directory."""
        security = self.config.security
        keys = ServerKeys.load(security.server_secret_key, security.authorized_clients)
        self.authenticator = ThreadAuthenticator(self.context)
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=str(keys.authorized_clients))
        return keys

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe; returns at once)."""
        self._stop.set()

    def close(self) -> None:
        if self.trigger_line is not None:
            self.trigger_line.close()
            self.trigger_line = None
        if self.sockets is not None:
            self.sockets.close()
            self.sockets = None
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        if self.context is not None:
            self.context.term()
            self.context = None
        self.metrics.close()

    def start_in_thread(self) -> dict:
        """start() and run() in a background thread (tests, the demo). Stop with stop_thread()."""
        endpoints = self.start()
        self._thread = threading.Thread(target=self.run, name="rtcalm-daemon", daemon=True)
        self._thread.start()
        return endpoints

    def stop_thread(self, timeout: float = 10.0) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        sockets, pipeline = self.sockets, self.pipeline
        poller = zmq.Poller()
        poller.register(sockets.ingest, zmq.POLLIN)
        poller.register(sockets.control, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(POLL_INTERVAL_MS))
            if sockets.control in events:
                self._serve_control()
            if sockets.ingest in events:
                pipeline.process(self._receive_batch())
            if not sockets.ingest.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # idle: nothing waiting
                if self.swap is not None and self.swap.done():
                    self._finish_model_swap()
                pipeline.housekeeping()
        self._drain()

    def _receive_batch(self) -> list:
        """Up to limits.max_backlog_frames messages already waiting on the ingest socket (none blocks)."""
        ingest, batch = self.sockets.ingest, []
        # Ask ZeroMQ whether a message is waiting instead of letting a receive fail: a raised zmq.Again on
        # every frame costs tens of microseconds with the cold caches of a 30 Hz loop.
        while len(batch) < self.config.limits.max_backlog_frames and ingest.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                parts = ingest.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            batch.append((parts, time.time_ns(), time.perf_counter_ns()))
        return batch

    def _drain(self) -> None:
        """On stop (SIGTERM): answer the frames already queued, so a rig's last frames before a shutdown
        get their predictions; bounded in time, since a rig may keep sending."""
        ingest, deadline = self.sockets.ingest, time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and ingest.poll(DRAIN_QUIET_MS, zmq.POLLIN):
            self.pipeline.process(self._receive_batch())

    def _serve_control(self) -> None:
        control = self.sockets.control
        while True:
            try:
                parts = control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            control.send(self.control.handle(parts))

    # --- hot swap ------------------------------------------------------------------------------------
    def begin_model_swap(self, spec: str) -> None:
        """Start loading ``spec`` in the background (the ``load_model`` command)."""
        if self.swap is not None:
            raise ProtocolError("model_loading", f"model {self.swap.spec!r} is still loading")
        snapshots = [SessionSnapshot(s.stream_id, s.n_neurons, s.history_tail(self.config.limits.history_frames),
                                     s.stream_frames) for s in self.pipeline.sessions.values()]
        self.swap = ModelSwap(spec, self.model_loader, snapshots)
        self.metrics.model_loading.set(1)

    def _finish_model_swap(self) -> None:
        swap, self.swap = self.swap, None
        self.metrics.model_loading.set(0)
        try:
            engine, warmed = swap.result()
            self.pipeline.install_engine(engine, warmed)
        except Exception as exc:
            self.last_load_error = f"{swap.spec}: {exc}"
            self.metrics.model_loads.labels(result="failed").inc()
            if not isinstance(exc, RtcalmError):
                traceback.print_exception(exc)
            return
        self.last_load_error = None
        self.metrics.set_model(engine.version, engine.backend)
        self.metrics.model_loads.labels(result="ok").inc()
