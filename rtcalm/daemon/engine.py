"""The model behind the daemon: the hot swap to a new one, and what a swap carries per session.

The model itself is a :class:`rtcalm.engine.StepEngine` (torch, ONNX Runtime or TensorRT, chosen by
:func:`rtcalm.engine.load_engine`); the daemon only passes frames to it and holds its stream states as
opaque objects.

Hot swap (the ``load_model`` control command): :class:`ModelSwap` loads the new checkpoint in a
background thread *and* warms a stream state for every running session from the session's recent
normalised frames, while the old model keeps serving. The daemon's loop polls it between batches; when
it is ready, the loop folds the few frames that arrived meanwhile into the warmed states and switches,
all at once. A load that fails (including a new engine that cannot serve a running session's neuron
count) leaves the old model in place and is reported in ``status``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from rtcalm.engine import StepEngine, load_engine
from rtcalm.errors import RtcalmError

__all__ = ["ModelSwap", "SessionSnapshot", "StepEngine", "WarmedStream", "load_engine", "set_threads"]


def set_threads(threads: int) -> None:
    """torch's intra-op threads are process-wide (ONNX Runtime's are per engine: load_engine's ``threads``)."""
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
    state: object  # the engine's opaque stream
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
        if not isinstance(engine, StepEngine):
            raise RtcalmError(f"model loader returned {type(engine).__name__}, not a StepEngine")
        warmed = {}
        for snapshot in snapshots:
            state = engine.new_stream(snapshot.n_neurons)
            engine.fold(snapshot.history[-engine.receptive_field:], state)
            warmed[snapshot.stream_id] = WarmedStream(state, snapshot.frames_at_snapshot)
        return engine, warmed

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> tuple[StepEngine, dict[int, WarmedStream]]:
        """The loaded engine and warmed states; re-raises the load's exception if it failed."""
        return self._future.result()

    def wait(self, timeout: float | None = None) -> None:
        self._future.exception(timeout=timeout)
