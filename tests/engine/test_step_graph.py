"""StepGraph (the step as a pure function of explicit state) against Calm.step, the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.engine.step_graph import StepGraph, initial_state, input_names, output_names, state_layout
from rtcalm.engine.validate import validation_frames


def run_both(model, frames):
    """Yield (Calm.step output, its StreamState, StepGraph outputs) per frame."""
    graph = StepGraph(model)
    reference_state = model.new_state(frames.shape[1])
    state = initial_state(model.config, frames.shape[1])
    for frame in torch.from_numpy(frames):
        reference, _ = model.step(frame, reference_state)
        with torch.no_grad():
            outputs = graph(frame, *state)
        state = list(outputs[2:])
        yield reference, reference_state, outputs


@pytest.mark.parametrize("input_mode", ["tokens", "continuous", "encoder"])
@pytest.mark.parametrize("n_neurons", [1, 37])
def test_state_is_bit_identical_to_calm_step_for_hundreds_of_steps(randomised_model, input_mode, n_neurons):
    """Covers the warm-up (first window - 1 frames, unwritten slots masked), many wraps of the ring
    (300 steps, window 12), scattered NaNs, a dropped frame and a never-valid (+Inf) neuron."""
    model = randomised_model(input_mode=input_mode)
    frames = validation_frames(300, n_neurons, seed=3)
    W, R = model.config.attention_window_frames, model.config.raw_window_frames
    worst_forecast, worst_hidden = 0.0, 0.0
    for t, (reference, reference_state, outputs) in enumerate(run_both(model, frames)):
        forecast, hidden, value_window, missing_window, position, *caches = outputs
        for layer in range(model.config.n_layers):
            # the step graph keeps keys (N, W, hd), Calm.step keys_t (N, hd, W)
            assert torch.equal(caches[2 * layer], reference_state.keys_t[layer].transpose(1, 2)), (t, layer)
            assert torch.equal(caches[2 * layer + 1], reference_state.values[layer]), (t, layer)
        w = t % R  # Calm.step's mirrored raw ring: the last R frames are slots [w + 1, w + 1 + R)
        pairs = reference_state.token_window[:, w + 1:w + 1 + R]  # (N, R, [value, missing])
        assert torch.equal(value_window, pairs[..., 0]) and torch.equal(missing_window, pairs[..., 1])
        assert position.item() == (t + 1 if t + 1 < W else W + (t + 1) % W)  # the next frame's table row
        assert torch.isfinite(forecast).all()
        worst_forecast = max(worst_forecast, (forecast - reference.forecast).abs().max().item())
        worst_hidden = max(worst_hidden, (hidden - reference.hidden).abs().max().item())
    # The forecast goes through the same modules; the only difference is the autoregressive-skip matmul,
    # which Calm.step feeds a strided view of its ring buffer and BLAS rounds differently (~1e-6).
    assert worst_forecast <= 1e-5
    assert worst_hidden == 0.0


def test_position_never_grows_past_twice_the_window(randomised_model):
    model = randomised_model()
    W = model.config.attention_window_frames
    positions = [outputs[4].item() for _, _, outputs in run_both(model, validation_frames(5 * W, 3))]
    assert positions[:W] == list(range(1, W + 1))
    assert max(positions) == 2 * W - 1 and min(positions[W:]) == W


def test_layout_names_and_shapes(randomised_model):
    model = randomised_model()
    config = model.config
    layout = state_layout(config)
    assert input_names(config) == ["frame"] + [t.name for t in layout]
    assert output_names(config) == ["forecast", "hidden"] + [t.next_name for t in layout]
    state = initial_state(config, 5)
    assert [tuple(t.shape) for t in state] == [t.shape_for(5) for t in layout]
    assert state[0].eq(0).all() and state[1].eq(1).all()  # before the start: every frame missing
    assert state[2].dtype == torch.int32 and state[2].item() == 0


def test_needs_eval_mode(randomised_model):
    model = randomised_model().train()
    with pytest.raises(RuntimeError, match="eval mode"):
        StepGraph(model)


def test_missing_means_nan_or_inf_only(randomised_model):
    """The graph's "missing" test (not |x| < inf) must flag exactly what ~isfinite flags."""
    model = randomised_model()
    frame = torch.tensor([0.0, -1.5, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45], dtype=torch.float32)
    state = initial_state(model.config, frame.shape[0])
    with torch.no_grad():
        value_window, missing_window = StepGraph(model)(frame, *state)[2:4]
    assert missing_window[:, -1].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert value_window[:, -1].tolist() == torch.where(torch.isfinite(frame), frame, 0.0).tolist()
