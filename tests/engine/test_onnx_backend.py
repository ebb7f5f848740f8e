"""ONNX Runtime engine against the torch reference over hundreds of incremental steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.engine.artifact import NeuronRange
from rtcalm.engine.export import export_onnx
from rtcalm.engine.onnx_backend import OnnxEngine, in_place_state_names
from rtcalm.engine.torch_backend import TorchEngine
from rtcalm.engine.validate import FP32_TIE_MARGIN, FP32_TOLERANCE, compare_with_reference, validation_frames
from rtcalm.errors import RtcalmError

DYNAMIC = NeuronRange(1, 4096, False)


def onnx_engine(model, neurons=DYNAMIC, **kwargs) -> OnnxEngine:
    return OnnxEngine(export_onnx(model, neurons), model.config, neurons, "test@0", "test", model.n_parameters(),
                      **kwargs)


@pytest.fixture(scope="module")
def tokens_model(randomised_model):
    return randomised_model(seed=0)


@pytest.fixture(scope="module")
def tokens_engine(tokens_model):
    return onnx_engine(tokens_model)


@pytest.fixture(scope="module", params=["continuous", "encoder"])
def continuous_model(randomised_model, request):
    return randomised_model(seed=1, input_mode=request.param)


@pytest.mark.parametrize("n_neurons", [1, 37, 512])
def test_continuous_mode_matches_calm_step_at_every_step(continuous_model, n_neurons):
    """No quantiser, so no code can flip (continuous and encoder modes): every forecast of every step
    must be within the tolerance of the reference Calm.step (through the engines' public API, folds and
    multi-frame steps included)."""
    torch.manual_seed(0)
    reference = TorchEngine(continuous_model, "test@0")
    engine = onnx_engine(continuous_model)
    frames = validation_frames(300, n_neurons, seed=n_neurons)
    ref_stream, stream = reference.new_stream(n_neurons), engine.new_stream(n_neurons)
    worst, t = 0.0, 0
    while t < len(frames):
        k = 1 + t % 3  # steps of 1, 2 and 3 frames (the daemon's catch-up batches)
        expected = reference.step(frames[t:t + k], ref_stream).copy()
        got = engine.step(frames[t:t + k], stream)
        worst = max(worst, float(np.abs(got - expected).max()))
        t += k
    assert stream.frames_seen == ref_stream.frames_seen == 300
    assert worst <= FP32_TOLERANCE
    assert np.abs(engine.hidden(stream) - reference.hidden(ref_stream)).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("n_neurons", [1, 37, 512])
def test_tokens_mode_matches_torch_over_hundreds_of_steps(tokens_model, tokens_engine, n_neurons):
    """Tokens mode can flip a code where two codebook entries are within rounding of each other; such
    steps must be rare and explained by a near tie, and every other step within the tolerance."""
    result = compare_with_reference(tokens_engine, tokens_model, n_neurons, 300, tolerance=FP32_TOLERANCE,
                                    tie_margin=FP32_TIE_MARGIN, seed=n_neurons)
    assert result.unexplained_steps == 0
    assert result.max_abs_error <= FP32_TOLERANCE
    assert result.code_flip_steps <= 3
    assert result.compared_steps >= 297 and result.passed


def test_validation_catches_a_wrong_model(randomised_model, tokens_model):
    """The comparison is not vacuous: an engine of slightly different weights fails it."""
    other = randomised_model(seed=0)
    with torch.no_grad():
        other.forecast_head.bias.add_(1e-3)
    result = compare_with_reference(onnx_engine(other), tokens_model, 37, 50, tolerance=FP32_TOLERANCE,
                                    tie_margin=FP32_TIE_MARGIN)
    assert not result.passed and result.unexplained_steps == 50


def test_key_value_caches_are_updated_in_place_and_equal_the_two_buffer_engine(tokens_model, tokens_engine):
    names = in_place_state_names(export_onnx(tokens_model, DYNAMIC), tokens_model.config)
    assert names == {"keys_0", "values_0", "keys_1", "values_1"} == tokens_engine.in_place
    two_buffers = onnx_engine(tokens_model, in_place_caches=False)
    assert two_buffers.in_place == set()
    frames = validation_frames(100, 23)
    a, b = tokens_engine.new_stream(23), two_buffers.new_stream(23)
    keys = [tensor.name for tensor in a.layout].index("keys_0")
    assert a.buffers[0][keys] is a.buffers[1][keys] and b.buffers[0][keys] is not b.buffers[1][keys]
    for t in range(100):
        assert np.array_equal(tokens_engine.step(frames[t:t + 1], a), two_buffers.step(frames[t:t + 1], b))
    for x, y in zip(tokens_engine.state_arrays(a), two_buffers.state_arrays(b), strict=True):
        assert np.array_equal(x, y)


def test_streams_are_independent(tokens_engine):
    frames = validation_frames(60, 9, seed=5)
    alone = tokens_engine.new_stream(9)
    for t in range(60):
        expected = tokens_engine.step(frames[t:t + 1], alone).copy()
    first, second = tokens_engine.new_stream(9), tokens_engine.new_stream(9)
    other = validation_frames(60, 9, seed=6)
    for t in range(60):
        tokens_engine.step(other[t:t + 1], second)
        got = tokens_engine.step(frames[t:t + 1], first)
    assert np.array_equal(got, expected)


def test_no_state_buffer_is_reallocated(tokens_engine):
    stream = tokens_engine.new_stream(5)
    pointers = [[a.ctypes.data for a in buffers] for buffers in stream.buffers]
    tokens_engine.fold(validation_frames(50, 5), stream)
    assert [[a.ctypes.data for a in buffers] for buffers in stream.buffers] == pointers


def test_static_shape_export_serves_exactly_its_neuron_count(tokens_model):
    engine = onnx_engine(tokens_model, NeuronRange.exactly(16))
    result = compare_with_reference(engine, tokens_model, 16, 80, tolerance=FP32_TOLERANCE,
                                    tie_margin=FP32_TIE_MARGIN)
    assert result.passed
    with pytest.raises(RtcalmError, match="compiled for exactly 16 neurons"):
        engine.new_stream(17)


def test_dynamic_range_is_enforced(tokens_model):
    engine = onnx_engine(tokens_model, NeuronRange(4, 8, False))
    engine.new_stream(4), engine.new_stream(8)
    for n in (3, 9):
        with pytest.raises(RtcalmError, match="4 to 8 neurons"):
            engine.new_stream(n)


def test_bad_frames_and_counts_are_refused(tokens_engine):
    stream = tokens_engine.new_stream(4)
    with pytest.raises(ValueError, match=r"shape \(k, 4\)"):
        tokens_engine.step(np.zeros((1, 5), np.float32), stream)
    with pytest.raises(ValueError, match=r"shape \(k, 4\)"):
        tokens_engine.step(np.zeros(4, np.float32), stream)
    with pytest.raises(ValueError, match="at least one frame"):
        tokens_engine.step(np.zeros((0, 4), np.float32), stream)
    with pytest.raises(ValueError, match="floating point"):
        tokens_engine.step(np.zeros((1, 4), np.int64), stream)
    with pytest.raises(ValueError, match="not consumed a frame"):
        tokens_engine.hidden(stream)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            tokens_engine.new_stream(bad)
    tokens_engine.fold(np.zeros((0, 4), np.float32), stream)  # folding nothing is fine
    assert stream.frames_seen == 0
    assert tokens_engine.step(np.zeros((1, 4), np.float64), stream).dtype == np.float32  # float64 is converted


def test_describe(tokens_engine):
    info = tokens_engine.describe()
    assert info["backend"] == "onnxruntime-cpu" and info["threads"] == 1 and info["horizon"] == 5
    assert info["neurons"] == {"min": 1, "max": 4096, "static": False, "opt": 512}
