"""The model behind the daemon: a loaded CalM with its version, and the hot swap to a new one.

:class:`Engine` is the only place the daemon touches torch. Frames come in as float32 numpy rows of
*normalised* ΔF/F; ``torch.from_numpy`` shares their memory, so no copy is made on the way in, and the
forecast comes back as a numpy view of the model's output tensor.

Hot swap (the ``load_model`` control command): :class:`ModelSwap` loads the new checkpoint in a
background thread *and* warms a stream state for every running session from the session's recent
normalised frames, while the old model keeps serving. The daemon's loop polls it between batches; when
it is ready, the loop folds the few frames that arrived meanwhile into the warmed states and switches,
all at once. A load that fails leaves the old model in place and is reported in ``status``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtcalm.errors import RtcalmError
from rtcalm.model import Calm, StreamState
from rtcalm.model.checkpoint import WEIGHTS_FILE, read_checkpoint_config, resolve_model
from rtcalm.model.checkpoint import load_model as load_checkpoint_model

BACKEND = "torch-cpu"


class Engine:
    """A model in eval mode that serves streams. ``version`` identifies the weights (published with every
    prediction); ``source`` says where they came from."""

    def __init__(self, model: Calm, version: str, source: str = ""):
        self.model = model.eval()
        self.version = version
        self.source = source
        self.backend = BACKEND
        config = model.config
        self.horizon = config.forecast_horizon_frames
        self.rate_hz = float(config.rate_hz)
        self.receptive_field = config.receptive_field_frames

    def new_stream(self, n_neurons: int) -> StreamState:
        return self.model.new_state(n_neurons)

    def fold(self, frames: np.ndarray, state: StreamState) -> None:
        """Consume ``frames`` (k, N) without looking at the outputs (catch-up, warm-up)."""
        if frames.shape[0]:
            self.model.step_many(torch.from_numpy(frames), state)

    def step(self, frames: np.ndarray, state: StreamState) -> np.ndarray:
        """Consume ``frames`` (k >= 1, N) in order and return the forecast after the last one: a (N, horizon)
        float32 numpy view of the output tensor, in normalised units. All but the last frame are folded
        with one batched ``step_many`` call (equal to k single steps)."""
        self.fold(frames[:-1], state)
        output, _ = self.model.step(torch.from_numpy(frames[-1]), state)
        return output.forecast.numpy()

    def decoded_outputs(self) -> dict:
        """Behaviour readouts of the latest step, by name. CalM has no decoding heads yet (a later issue
        adds them), so this is the empty map the protocol sends for such models."""
        return {}

    def describe(self) -> dict:
        return {"version": self.version, "source": self.source, "backend": self.backend, "horizon": self.horizon,
                "rate_hz": self.rate_hz, "receptive_field_frames": self.receptive_field,
                "parameters": self.model.n_parameters()}


def load_engine(name_or_path: str) -> Engine:
    """Load a shipped model by name or a checkpoint directory. The version is ``<name>@<first 12 hex
    digits of the weights file's SHA-256>``, so two different weights never share a version."""
    directory = resolve_model(name_or_path)
    read_checkpoint_config(directory)  # fail on a bad config.json before hashing a large weights file
    model = load_checkpoint_model(directory)
    digest = hashlib.sha256(Path(directory, WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    return Engine(model, version=f"{Path(directory).name}@{digest}", source=str(directory))


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


@dataclass
class SessionSnapshot:
    """What a swap needs to warm one session: its recent normalised frames, oldest first, and how many
    frames the session had consumed when they were copied."""

    stream_id: int
    n_neurons: int
    history: np.ndarray  # (k, N) float32
    frames_at_snapshot: int


@dataclass
class WarmedStream:
    state: StreamState
    frames_at_snapshot: int


class ModelSwap:
    """A model load (plus warm-up of the given sessions) running in a background thread."""

    def __init__(self, spec: str, loader, snapshots: list[SessionSnapshot]):
        self.spec = spec
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtcalm-model-load")
        self._future: Future = self._executor.submit(self._load_and_warm, loader, spec, snapshots)
        self._executor.shutdown(wait=False)

    @staticmethod
    def _load_and_warm(loader, spec: str, snapshots: list[SessionSnapshot]):
        engine = loader(spec)
        if not isinstance(engine, Engine):
            raise RtcalmError(f"model loader returned {type(engine).__name__}, not an Engine")
        warmed = {}
        for snapshot in snapshots:
            state = engine.new_stream(snapshot.n_neurons)
            engine.fold(snapshot.history[-engine.receptive_field:], state)
            warmed[snapshot.stream_id] = WarmedStream(state, snapshot.frames_at_snapshot)
        return engine, warmed

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> tuple[Engine, dict[int, WarmedStream]]:
        """The loaded engine and warmed states; re-raises the load's exception if it failed."""
        return self._future.result()

    def wait(self, timeout: float | None = None) -> None:
        self._future.exception(timeout=timeout)
