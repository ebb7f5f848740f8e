"""The backend-neutral step-engine interface the daemon programs against.

An engine serves any number of independent *streams* (one per recording session). A stream is an
opaque object from :meth:`StepEngine.new_stream` that owns the recurrent state in buffers preallocated
for its neuron count: torch tensors (torch backend), numpy arrays bound to ONNX Runtime with IOBinding,
or CUDA memory (TensorRT, torch CUDA graphs). The daemon only passes it back to ``fold``/``step``.

Frames are float32 numpy rows of *normalised* ΔF/F (NaN/Inf = missing); forecasts come back as a
(N, horizon) float32 array in normalised units. The returned array is a buffer of the stream that the
next ``fold``/``step`` of that stream overwrites: copy it if it must outlive the next call (the daemon's
pipeline de-normalises it into its own array straight away).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rtcalm.engine.artifact import MAX_NEURONS, NeuronRange
from rtcalm.errors import RtcalmError
from rtcalm.model.calm import CalmConfig


class StepEngine:
    """A model that serves streams on one backend. Subclasses implement ``new_stream``, ``_advance``
    (consume one frame), ``_forecast`` and ``_hidden`` (outputs of the latest frame).

    Attributes: ``version`` (``<checkpoint name>@<first 12 hex digits of the weights' SHA-256>``,
    published with every prediction), ``source`` (checkpoint directory), ``backend`` (e.g.
    ``"onnxruntime-cpu"``), ``selection`` (why this backend was chosen), ``artifact`` (compiled file
    used, or None), ``neurons`` (the :class:`NeuronRange` ``new_stream`` accepts), ``horizon``,
    ``rate_hz``, ``receptive_field``, ``config``."""

    backend = "abstract"

    def __init__(self, config: CalmConfig, version: str, source: str, n_parameters: int, *,
                 selection: str = "", artifact: str | None = None, neurons: NeuronRange | None = None):
        self.config = config
        self.neurons = neurons or NeuronRange(1, MAX_NEURONS, False)
        self.version = version
        self.source = source
        self.n_parameters = n_parameters
        self.selection = selection
        self.artifact = artifact
        self.horizon = config.forecast_horizon_frames
        self.rate_hz = float(config.rate_hz)
        self.receptive_field = config.receptive_field_frames

    # --- the interface ---
    def new_stream(self, n_neurons: int):
        raise NotImplementedError

    def fold(self, frames: np.ndarray, stream) -> None:
        """Consume ``frames`` (k >= 0, N) in order without reading the outputs (catch-up, warm-up)."""
        for frame in self._check_frames(frames, stream, allow_empty=True):
            self._advance(frame, stream)

    def step(self, frames: np.ndarray, stream) -> np.ndarray:
        """Consume ``frames`` (k >= 1, N) in order; return the forecast after the last one, (N, horizon)
        float32 in normalised units (a buffer of the stream, valid until its next fold/step)."""
        frames = self._check_frames(frames, stream, allow_empty=False)
        for frame in frames:
            self._advance(frame, stream)
        return self._forecast(stream)

    def hidden(self, stream) -> np.ndarray:
        """(N, d_model) normalised final residual stream of the latest frame: what decoding heads
        (``rtcalm.model.heads``) read. A buffer of the stream, like ``step``'s forecast."""
        if stream.frames_seen == 0:
            raise ValueError("the stream has not consumed a frame yet")
        return self._hidden(stream)

    def describe(self) -> dict:
        return {"version": self.version, "source": self.source, "backend": self.backend,
                "backend_selection": self.selection, "artifact": self.artifact, "horizon": self.horizon,
                "rate_hz": self.rate_hz, "receptive_field_frames": self.receptive_field,
                "parameters": self.n_parameters, "neurons": self.neurons.to_dict()}

    # --- for subclasses ---
    def _advance(self, frame: np.ndarray, stream) -> None:
        raise NotImplementedError

    def _forecast(self, stream) -> np.ndarray:
        raise NotImplementedError

    def _hidden(self, stream) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _check_neurons(n_neurons) -> int:
        if isinstance(n_neurons, bool) or not isinstance(n_neurons, int | np.integer) or n_neurons < 1:
            raise ValueError(f"n_neurons must be a positive integer, got {n_neurons!r}")
        return int(n_neurons)

    def _check_compiled_for(self, n_neurons, graph: str, backend: str) -> int:
        """``n_neurons`` if the compiled graph (``graph`` when no artifact file was read) runs that many
        neurons; RtcalmError saying how to compile one that does otherwise."""
        n_neurons = self._check_neurons(n_neurons)
        if not self.neurons.contains(n_neurons):
            raise RtcalmError(f"a stream of {n_neurons} neurons cannot run on {self.artifact or graph}: it was "
                              f"compiled for {self.neurons.describe()} (rtcalm compile --backend {backend} "
                              "--neurons-range MIN:MAX)")
        return n_neurons

    @staticmethod
    def _check_frames(frames, stream, allow_empty: bool) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != stream.n_neurons:
            raise ValueError(f"frames must have shape (k, {stream.n_neurons}), got {frames.shape}")
        if not allow_empty and frames.shape[0] == 0:
            raise ValueError("step needs at least one frame")
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be floating point (NaN marks missing values), got {frames.dtype}")
        return frames.astype(np.float32, copy=False)


def weights_sha256(path) -> str:
    """Hex SHA-256 of a weights file, read in chunks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_version(checkpoint_dir, sha256_hex: str) -> str:
    """The version string the daemon publishes: ``<name>@<first 12 hex digits of the weights' SHA-256>``."""
    return f"{Path(checkpoint_dir).name}@{sha256_hex[:12]}"
