"""The dual-axis transformer: streaming step == full forward, shapes for any N, missing data, bounded cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.model import Calm, CalmConfig


def frames_with_gaps(n_frames: int, n_neurons: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_frames, n_neurons, generator=g).cumsum(0) * 0.3  # smooth-ish, like calcium
    x[torch.rand(n_frames, n_neurons, generator=g) < 0.03] = float("nan")  # scattered missing values
    x[n_frames // 3] = float("nan")  # a whole dropped frame
    x[:, 0] = float("inf")  # a neuron that is never valid
    return x


def run_steps(model: Calm, frames: torch.Tensor, with_code_logits: bool = True):
    state = model.new_state(frames.shape[1])
    outs = [model.step(frame, state, with_code_logits=with_code_logits)[0] for frame in frames]
    return outs, state


@pytest.mark.parametrize("input_mode, autoregressive_order",
                         [("tokens", 16), ("continuous", 16), ("tokens", 2), ("encoder", 16)])
def test_step_equals_full_forward_after_hundreds_of_steps(randomised_model, input_mode, autoregressive_order):
    # order 16 > token window 4: the raw ring buffer is the skip's; order 2 < 4: it is the tokenizer's
    model = randomised_model(input_mode=input_mode, autoregressive_order=autoregressive_order)
    frames = frames_with_gaps(400, 23)
    with torch.no_grad():
        full = model(frames, with_code_logits=True)
    outs, state = run_steps(model, frames)
    assert state.frames_seen == 400
    forecast = torch.stack([o.forecast for o in outs])
    assert forecast.shape == full.forecast.shape == (400, 23, 5)
    assert (forecast - full.forecast).abs().max().item() <= 1e-4
    assert (torch.stack([o.hidden for o in outs]) - full.hidden).abs().max().item() <= 1e-4
    if input_mode == "encoder":  # no tokens, so nothing to predict the next one of
        assert full.next_code_logits is None and outs[0].next_code_logits is None
    else:
        logits = torch.stack([o.next_code_logits for o in outs])
        assert (logits - full.next_code_logits).abs().max().item() <= 1e-4
    if input_mode == "tokens":
        assert torch.equal(torch.stack([o.codes for o in outs]), full.codes)
    else:
        assert full.codes is None and outs[0].codes is None


def test_step_many_equals_single_steps(randomised_model):
    model = randomised_model()
    frames = frames_with_gaps(80, 9)
    single, _ = run_steps(model, frames)
    state = model.new_state(9)
    first, state = model.step_many(frames[:50], state, with_code_logits=True)
    second, state = model.step_many(frames[50:], state, with_code_logits=True)
    batched = torch.cat([first.forecast, second.forecast])
    assert state.frames_seen == 80
    assert torch.equal(batched, torch.stack([o.forecast for o in single]))
    assert torch.equal(torch.cat([first.codes, second.codes]), torch.stack([o.codes for o in single]))
    assert torch.equal(torch.cat([first.next_code_logits, second.next_code_logits]),
                       torch.stack([o.next_code_logits for o in single]))


def test_output_depends_only_on_the_receptive_field(randomised_model):
    """A bounded window: the forecast at t is the same whether the history is everything before t or only
    the last receptive_field_frames frames (this is what makes the step's cost history-independent)."""
    model = randomised_model()
    rf = model.config.receptive_field_frames
    assert rf == 2 * (12 - 1) + 4
    frames = frames_with_gaps(200, 7)
    with torch.no_grad():
        long = model(frames).forecast[-1]
        exact = model(frames[-rf:]).forecast[-1]
        too_short = model(frames[-(rf - 1):]).forecast[-1]
    assert (long - exact).abs().max().item() <= 1e-5
    assert (long - too_short).abs().max().item() > 1e-4  # the field is not smaller than documented


def test_state_memory_is_fixed_and_reused(randomised_model):
    """No buffer grows or is reallocated as the stream goes on: the same storage serves step 1 and 1000."""
    model = randomised_model()
    state = model.new_state(5)
    buffers = [state.token_window, *state.keys_t, *state.values, *vars(state.scratch).values()]
    pointers = [b.data_ptr() for b in buffers]
    sizes = [b.numel() for b in buffers]
    model.step_many(torch.randn(1000, 5), state)
    assert [b.data_ptr() for b in buffers] == pointers
    assert [b.numel() for b in buffers] == sizes
    cfg = model.config
    assert state.keys_t[0].shape == (5, cfg.d_model // cfg.n_heads, cfg.attention_window_frames)


@pytest.mark.parametrize("n_neurons", [1, 2, 17, 300])
def test_shapes_for_any_population_size(randomised_model, n_neurons):
    model = randomised_model()
    frames = torch.randn(3, 20, n_neurons)
    with torch.no_grad():
        out = model(frames, with_code_logits=True)
    assert out.forecast.shape == (3, 20, n_neurons, 5)
    assert out.codes.shape == (3, 20, n_neurons) and out.codes.dtype == torch.int64
    assert out.next_code_logits.shape == (3, 20, n_neurons, 64)
    unbatched = model(frames[1]).forecast
    assert unbatched.shape == (20, n_neurons, 5)
    assert (unbatched - out.forecast[1]).abs().max().item() <= 1e-5
    state = model.new_state(n_neurons)
    step_out, _ = model.step(np.zeros(n_neurons, dtype=np.float64), state)  # numpy input of any float dtype
    assert step_out.forecast.shape == (n_neurons, 5) and step_out.codes.shape == (n_neurons,)


def test_neurons_have_no_identity_permutation_equivariance(randomised_model):
    model = randomised_model()
    frames = frames_with_gaps(40, 11)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(frames).forecast
        permuted = model(frames[:, perm]).forecast
    assert (out[:, perm] - permuted).abs().max().item() <= 1e-5


def test_cross_neuron_attention_mixes_neurons(randomised_model):
    """Changing one neuron's input changes the other neurons' forecasts (the neuron axis is used)."""
    model = randomised_model()
    frames = torch.randn(30, 6)
    other = frames.clone()
    other[:, 0] += 3.0
    with torch.no_grad():
        diff = (model(frames).forecast - model(other).forecast)[:, 1:].abs().max().item()
    assert diff > 1e-3


def test_missing_values_never_reach_the_outputs(randomised_model):
    model = randomised_model()
    frames = frames_with_gaps(60, 8)
    frames[10:20] = float("nan")  # ten dropped frames in a row
    frames[:, 3] = float("-inf")
    with torch.no_grad():
        out = model(frames, with_code_logits=True)
    assert torch.isfinite(out.forecast).all() and torch.isfinite(out.next_code_logits).all()
    outs, _ = run_steps(model, frames)
    assert all(torch.isfinite(o.forecast).all() and torch.isfinite(o.next_code_logits).all() for o in outs)


def test_missing_flag_is_not_the_same_as_a_zero_value(randomised_model):
    model = randomised_model()
    zeros = torch.zeros(30, 4)
    gaps = zeros.clone()
    gaps[-1, 0] = float("nan")
    with torch.no_grad():
        assert (model(zeros).forecast[-1, 0] - model(gaps).forecast[-1, 0]).abs().max().item() > 1e-4


def test_neuron_embedding_in_forward_and_step(randomised_model):
    model = randomised_model()
    frames = frames_with_gaps(50, 6)
    embedding = torch.randn(6, model.config.d_model)
    with torch.no_grad():
        plain = model(frames).forecast
        full = model(frames, neuron_embedding=embedding).forecast
    assert (plain - full).abs().max().item() > 1e-3
    state = model.new_state(6, neuron_embedding=embedding)
    stepped, _ = model.step_many(frames, state)
    assert (stepped.forecast - full).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="neuron_embedding"):
        model.new_state(7, neuron_embedding=embedding)


def test_step_rejects_bad_input_and_training_mode(randomised_model):
    model = randomised_model()
    state = model.new_state(4)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        model.step(torch.zeros(5), state)
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        model.step_many(torch.zeros(3, 5), state)
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.zeros(2, 3, 4, 5))
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.step(torch.zeros(4), state)


@pytest.mark.parametrize("bad, message", [
    (dict(input_mode="pixels"), "input_mode"),
    (dict(d_model=30, n_heads=4), "divisible"),
    (dict(attention_window_frames=0), "attention_window_frames"),
    (dict(n_layers=2.5), "n_layers"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        CalmConfig(**bad)


def test_config_round_trip_and_unknown_keys():
    cfg = CalmConfig(d_model=48, n_heads=4)
    assert CalmConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        CalmConfig.from_dict({**cfg.to_dict(), "use_rope": True})


def test_full_forward_is_differentiable_and_tokenizer_gets_no_gradient_through_codes(randomised_model):
    model = randomised_model()
    model.train()
    out = model(torch.randn(2, 16, 5), with_code_logits=True)
    (out.forecast.square().mean() + out.next_code_logits.mean()).backward()
    assert model.blocks[0].temporal.relative_bias.grad is not None
    assert model.blocks[0].cross.latents.grad is not None
    assert model.code_embedding.weight.grad is not None
    assert all(p.grad is None for p in model.tokenizer.encoder.parameters())  # codes are discrete


def test_without_the_autoregressive_skip(randomised_model):
    model = randomised_model(autoregressive_skip=False)
    assert not hasattr(model, "forecast_skip")
    frames = frames_with_gaps(60, 5)
    with torch.no_grad():
        full = model(frames).forecast
    stepped, _ = model.step_many(frames, model.new_state(5))
    assert (stepped.forecast - full).abs().max().item() <= 1e-4



@pytest.mark.parametrize("autoregressive_order", [2, 7])
def test_the_autoregressive_skip_adds_a_linear_function_of_the_last_raw_values(randomised_model, autoregressive_order):
    model = randomised_model(autoregressive_skip=True, autoregressive_order=autoregressive_order)
    assert model.forecast_skip.in_features == 2 * autoregressive_order
    frames = frames_with_gaps(60, 5)
    with torch.no_grad():
        full = model(frames).forecast
        skip_part = model.forecast_skip(model.raw_windows(frames[None], autoregressive_order)[0])[0]  # (T, N, H)
        model.forecast_skip.weight.zero_()
        model.forecast_skip.bias.zero_()
        transformer_part = model(frames).forecast
    assert skip_part.abs().max().item() > 1e-2
    assert (transformer_part + skip_part - full).abs().max().item() <= 1e-5
