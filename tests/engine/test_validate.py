"""The agreement check used by rtcalm compile: near ties, code-flip accounting, torch graph mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rtcalm.engine.validate as validate
from rtcalm.engine.torch_backend import TorchEngine
from rtcalm.engine.validate import compare_with_reference, near_tie_neurons, validation_frames


def test_near_tie_neurons_flags_windows_between_two_codes(randomised_model):
    model = randomised_model()
    window = torch.randn(1, 2 * model.config.token_window_frames)
    latent = model.tokenizer.encode_latent(window).detach()[0]

    def ties_with(first_offset, second_offset, margin):
        with torch.no_grad():
            codebook = model.tokenizer.codebook
            codebook.fill_(100.0)  # every other code far away
            codebook[0] = latent + torch.tensor(first_offset)
            codebook[1] = latent + torch.tensor(second_offset)
        return bool(near_tie_neurons(model, window, margin)[0])

    assert ties_with([1.0, 0, 0, 0], [-1.0, 0, 0, 0], 1e-5)  # exactly between two codes
    assert not ties_with([0.1, 0, 0, 0], [-2.0, 0, 0, 0], 1e-3)  # one code much nearer
    # squared distances 0.25 and 0.2499: a tie at margin 1e-3, not at 1e-5
    assert ties_with([0.5, 0, 0, 0], [0, -0.4999, 0, 0], 1e-3)
    assert not ties_with([0.5, 0, 0, 0], [0, -0.4999, 0, 0], 1e-5)
    continuous = randomised_model(input_mode="continuous")
    assert not near_tie_neurons(continuous, window, margin=1.0).any()


class OffByOneNeuron(TorchEngine):
    """The exact step graph, except that the forecast of neuron 2 is 1.0 too high at stream frame 10."""

    def step(self, frames, stream):
        forecast = super().step(frames, stream).copy()
        if stream.frames_seen == 10:
            forecast[2] += 1.0
        return forecast


@pytest.mark.parametrize("tie", [True, False])
def test_a_large_error_counts_as_a_code_flip_only_at_a_near_tie(randomised_model, monkeypatch, tie):
    model = randomised_model()
    engine = OffByOneNeuron(model, "test@0", mode="graph")
    monkeypatch.setattr(validate, "near_tie_neurons", lambda m, w, margin: np.arange(w.shape[0]) == 2 if tie
                        else np.zeros(w.shape[0], dtype=bool))
    result = compare_with_reference(engine, model, 5, 40, tolerance=1e-4, tie_margin=1e-4)
    assert (result.code_flip_steps, result.unexplained_steps) == ((1, 0) if tie else (0, 1))
    assert result.compared_steps == (39 if tie else 40)
    assert result.passed == tie
    assert result.max_abs_error == (0.0 if tie else pytest.approx(1.0))


def test_torch_graph_mode_equals_eager_calm_step(randomised_model):
    """The CPU run of the code the CUDA-graph path captures (pure graph + copy back into the stream)."""
    model = randomised_model()
    eager, graph = TorchEngine(model, "test@0"), TorchEngine(model, "test@0", mode="graph")
    assert (eager.backend, graph.backend) == ("torch-cpu", "torch-cpu")
    frames = validation_frames(120, 11)
    a, b = eager.new_stream(11), graph.new_stream(11)
    worst = 0.0
    for t in range(0, 120, 2):
        worst = max(worst, float(np.abs(eager.step(frames[t:t + 2], a) - graph.step(frames[t:t + 2], b)).max()))
    assert worst <= 1e-5 and a.frames_seen == b.frames_seen == 120
    assert np.array_equal(eager.hidden(a), graph.hidden(b))
    assert compare_with_reference(graph, model, 11, 60, tolerance=1e-5, tie_margin=1e-4).passed


@pytest.mark.parametrize("neurons, steps, flips, passed", [
    (512, 200, 9, True),  # the shipped default model's measured rate at 512 neurons
    (4096, 200, 53, True),
    (512, 200, 150, False),  # > 1 per 1,000 neuron-steps: the engine's tokenizer is not the model's
    (5, 40, 1, True),  # at least one flip is always allowed
    (5, 40, 2, False),
])
def test_allowed_code_flips_scale_with_the_tokens_compared(neurons, steps, flips, passed):
    from rtcalm.engine.validate import Agreement

    result = Agreement(n_neurons=neurons, steps=steps, compared_steps=steps - flips, max_abs_error=1e-6,
                       mean_abs_error=1e-7, code_flip_steps=flips, unexplained_steps=0, tolerance=1e-4)
    assert result.passed == passed
