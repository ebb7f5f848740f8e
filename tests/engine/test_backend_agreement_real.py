"""Torch and ONNX engines on a whole real recording at 512 neurons, with the shipped models.

The claim in docs/daemon.md and docs/backends.md: for the default model the two backends give the same
forecasts within 1e-4 (normalised units) at every frame of a 900-frame real recording. The tokenized
model (``tokens``) quantises its inputs: a code that flips on a near tie feeds back through the cache, so
for it only the frames before the first flip are held to that bound (docs/backends.md)."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import load_recording
from rtcalm.engine.validate import FP32_TOLERANCE
from rtcalm.model import load_model

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
N_NEURONS, N_FRAMES = 512, 900


@pytest.fixture(scope="module")
def real_frames(neurodio_files) -> np.ndarray:
    """(900, 512) z-scored frames: the natural_movie_one excerpts of several experiments side by side
    (each is one ~30 s repeat at 30 Hz), so one stream carries 512 real neurons."""
    pieces, total = [], 0
    for path in neurodio_files:
        if "natural_movie_one" not in str(path):
            continue
        dff = load_recording(path).dff[:N_FRAMES]
        pieces.append((dff - dff.mean(0)) / np.where(dff.std(0) > 1e-6, dff.std(0), 1.0))
        total += dff.shape[1]
        if total >= N_NEURONS:
            break
    frames = np.concatenate(pieces, axis=1)[:, :N_NEURONS].astype(np.float32)
    assert frames.shape == (N_FRAMES, N_NEURONS)
    return frames


def stream(engine, frames: np.ndarray) -> np.ndarray:
    handle = engine.new_stream(frames.shape[1])
    return np.stack([engine.step(frames[t:t + 1], handle).copy() for t in range(frames.shape[0])])


def test_default_model_torch_and_onnx_agree_on_every_frame(real_frames):
    from rtcalm.engine.artifact import NeuronRange
    from rtcalm.engine.export import export_onnx
    from rtcalm.engine.onnx_backend import OnnxEngine
    from rtcalm.engine.torch_backend import TorchEngine

    model = load_model("default")
    assert model.config.input_mode != "tokens", "the default model reads continuous inputs (no code flips)"
    neurons = NeuronRange(1, 4096, False)
    reference = stream(TorchEngine(model, "default@test"), real_frames)
    onnx = stream(OnnxEngine(export_onnx(model, neurons), model.config, neurons, "default@test", "default",
                             model.n_parameters()), real_frames)
    worst_per_frame = np.abs(onnx - reference).reshape(N_FRAMES, -1).max(axis=1)
    assert np.isfinite(reference).all()
    assert worst_per_frame.max() <= FP32_TOLERANCE, f"frame {worst_per_frame.argmax()}: {worst_per_frame.max():.2e}"


def test_tokens_model_differs_by_code_flips_but_stays_bounded(real_frames):
    """What holds for the tokenized model: code flips (near ties between two codes that the backends
    round differently) start within the first frames at 512 neurons and feed back through the cache and
    the cross-neuron attention, so 1e-4 does not hold frame by frame; the difference stays bounded (no
    divergence) and most (frame, neuron) forecasts still agree within 1e-4. Measured over 900 frames:
    first flip at frame 6, 14 % of (frame, neuron) entries off by more than 1e-4, at most 0.084."""
    from rtcalm.engine.artifact import NeuronRange
    from rtcalm.engine.export import export_onnx
    from rtcalm.engine.onnx_backend import OnnxEngine
    from rtcalm.engine.torch_backend import TorchEngine

    model = load_model("tokens")
    neurons = NeuronRange(1, 4096, False)
    frames = real_frames[:300]
    reference = stream(TorchEngine(model, "tokens@test"), frames)
    onnx = stream(OnnxEngine(export_onnx(model, neurons), model.config, neurons, "tokens@test", "tokens",
                             model.n_parameters()), frames)
    worst = np.abs(onnx - reference).max(axis=-1)  # (frames, neurons)
    assert worst[:3].max() <= FP32_TOLERANCE  # before any token can differ much
    assert worst.max() <= 0.2
    assert (worst > FP32_TOLERANCE).mean() < 0.3
