"""Helpers for the daemon tests: a small real CalM checkpoint, the offline reference the daemon must
match, and a harness that runs a real daemon (real sockets on 127.0.0.1, ephemeral ports) in a thread."""

from __future__ import annotations

import time
import uuid

import numpy as np
import torch
import zmq

from rtcalm import protocol
from rtcalm.client import ControlClient, ErrorMessage, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon import Daemon, DaemonConfig
from rtcalm.daemon.session import Scale, new_stats
from rtcalm.model import Calm, CalmConfig, save_checkpoint
from rtcalm.stats import OnlineDff

EPHEMERAL = "tcp://127.0.0.1:0"

# Small enough that a step costs well under a millisecond, but with every part of the architecture
# (tokenizer windows, two layers with a ring buffer that wraps, latents, a multi-step horizon).
SMALL_MODEL = dict(token_window_frames=4, codebook_size=16, code_dim=4, tokenizer_hidden=16, d_model=16, n_layers=2,
                   n_heads=2, mlp_hidden=32, attention_window_frames=6, n_latents=4, forecast_horizon_frames=5)


def make_checkpoint(directory, seed: int, **overrides) -> Calm:
    """A small CalM with random weights large enough that its forecasts depend strongly on the input:
    at the training initialisation (std 0.02) every code is the same and the forecast does not depend
    on the frames at all, which would make "equals the reference" tests pass for any input.
    ``overrides``: CalmConfig fields that differ from SMALL_MODEL (e.g. another d_model)."""
    torch.manual_seed(seed)
    model = Calm(CalmConfig(**{**SMALL_MODEL, **overrides})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.3)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    save_checkpoint(model, directory, metadata={"purpose": "daemon tests", "seed": seed})
    return model


def make_config(**sections) -> DaemonConfig:
    """Ephemeral loopback ports, metrics on a free port, a 10-frame warm-up, the torch backend (the
    offline reference's own step, so forecasts match to float32 rounding); overrides per section."""
    base = {"sockets": {"ingest": EPHEMERAL, "publish": EPHEMERAL, "control": EPHEMERAL},
            "metrics": {"port": 0}, "stats": {"warmup_frames": 10}, "model": {"backend": "torch"}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return DaemonConfig().replace(**base)


class OfflineReference:
    """What the daemon must publish, computed without it: the same statistics update, normalisation,
    model step and de-normalisation, one frame at a time. NaN rows stand for filled-in gaps. ``hidden``:
    the latest frame's per-neuron hidden state (``CalmOutput.hidden``, (N, d_model)), what decoding
    heads read."""

    def __init__(self, model: Calm, n_neurons: int, config: DaemonConfig, *, fluorescence: bool = False):
        self.model = model
        self.stats = new_stats(n_neurons, config)
        self.scale = Scale(n_neurons, config.stats.warmup_frames)
        self.state = model.new_state(n_neurons)
        self.converter = OnlineDff(n_neurons, **config.to_dict()["dff"]) if fluorescence else None
        self.z = np.empty(n_neurons, dtype=np.float32)
        self.z_history: list[np.ndarray] = []
        self.hidden: torch.Tensor | None = None

    def step(self, frame: np.ndarray, neuropil: np.ndarray | None = None) -> np.ndarray:
        if self.converter is not None:
            frame = self.converter.update(frame, neuropil).copy()
        self.stats.update(frame)
        self.scale.update(self.stats)
        self.scale.normalise_into(frame, self.z)
        self.z_history.append(self.z.copy())
        out, _ = self.model.step(torch.from_numpy(self.z), self.state)
        self.hidden = out.hidden.clone()
        forecast = np.empty(tuple(out.forecast.shape), dtype=np.float32)
        self.scale.denormalise_into(out.forecast.numpy(), forecast)
        return forecast

    def run(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([self.step(frame) for frame in frames])


class Harness:
    """A daemon in a background thread plus connected clients. ``subscriber`` sees every session."""

    def __init__(self, config: DaemonConfig, model_spec: str, **daemon_kwargs):
        from rtcalm.engine import load_engine

        engine = load_engine(model_spec, backend=config.model.backend, threads=config.model.threads)
        self.daemon = Daemon(config, engine=engine, **daemon_kwargs)
        self.endpoints = self.daemon.start_in_thread()
        self.context = zmq.Context()
        self.control = ControlClient(self.endpoints["control"], timeout_ms=20000, context=self.context)
        self.subscriber = PredictionSubscriber(self.endpoints["publish"], context=self.context)
        self.wait_subscribed(self.subscriber)
        self._senders = []

    def wait_subscribed(self, subscriber: PredictionSubscriber, timeout_s: float = 10.0) -> None:
        """Block until ``subscriber``'s subscription has reached the daemon: send frames of a throw-away
        probe session until their predictions arrive, then stop that session."""
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        subscriber.socket.setsockopt(zmq.SUBSCRIBE, protocol.topic_for(probe))
        n_probe = max(2, self.daemon.pipeline.engine.neurons.min)  # a count the (compiled) model serves
        self.control.start_session(probe, n_probe)  # explicitly: works with sessions.auto_start off too
        sender = RigSender(self.endpoints["ingest"], session=probe, context=self.context)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                sender.send(np.zeros(n_probe, np.float32))
                message = subscriber.receive(timeout_ms=50)
                while message is not None:
                    # Only the answer to the last probe frame sent proves that none is still in flight
                    # (one would otherwise start the probe session again after it was stopped).
                    if message.session == probe and message.seq == sender.next_seq - 1:
                        self.control.stop_session(probe)
                        self.drain(subscriber)
                        return
                    message = subscriber.receive(timeout_ms=50)
            raise TimeoutError("the subscription did not reach the daemon")
        finally:
            subscriber.socket.setsockopt(zmq.UNSUBSCRIBE, protocol.topic_for(probe))
            sender.close()

    @staticmethod
    def drain(subscriber: PredictionSubscriber, quiet_ms: int = 100) -> list:
        messages = []
        while (message := subscriber.receive(timeout_ms=quiet_ms)) is not None:
            messages.append(message)
        return messages

    def sender(self, session: str) -> RigSender:
        sender = RigSender(self.endpoints["ingest"], session=session, context=self.context)
        self._senders.append(sender)
        return sender

    def push_raw(self, *parts: bytes) -> None:
        """Send arbitrary bytes to the ingest socket (malformed-input tests)."""
        socket = self.context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 2000)
        socket.connect(self.endpoints["ingest"])
        socket.send_multipart(list(parts))
        socket.close()

    def receive(self, session: str | None = None, timeout_s: float = 20.0, kind=None):
        """The next message (of ``kind``: Prediction or ErrorMessage) for ``session``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.subscriber.receive(timeout_ms=100)
            if message is None:
                continue
            if session is not None and message.session != session:
                continue
            if kind is None or isinstance(message, kind):
                return message
        raise TimeoutError(f"no {kind.__name__ if kind else 'message'} for session {session!r}")

    def prediction(self, session: str, timeout_s: float = 20.0) -> Prediction:
        return self.receive(session, timeout_s, Prediction)

    def error(self, session: str | None = None, timeout_s: float = 20.0) -> ErrorMessage:
        return self.receive(session, timeout_s, ErrorMessage)

    def send_lockstep(self, sender: RigSender, frames: np.ndarray, seqs=None) -> list[Prediction]:
        """Send each frame and wait for its prediction (no batching)."""
        out = []
        for i, frame in enumerate(frames):
            seq = None if seqs is None else seqs[i]
            sender.send(frame, seq=seq)
            out.append(self.prediction(sender.session))
        return out

    def session_status(self, session: str) -> dict:
        return {s["session"]: s for s in self.control.status()["sessions"]}[session]

    def close(self) -> None:
        for sender in self._senders:
            sender.close()
        self.subscriber.close()
        self.control.close()
        self.daemon.stop_thread()
        self.context.term()
