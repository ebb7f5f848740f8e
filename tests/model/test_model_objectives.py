"""Training objectives: the latent masked objective's masking and its twin pass."""

from __future__ import annotations

import pytest
import torch

from rtcalm.model.objectives import crop_losses, latent_masked_losses, masked_positions

OBJECTIVE_MODEL = dict(attention_window_frames=8, autoregressive_order=6)


@pytest.mark.parametrize("n_context, fraction, first_masked", [(10, 0.5, 5), (96, 0.5, 48), (9, 0.5, 5),
                                                                (10, 0.25, 8), (4, 0.01, 3), (4, 0.99, 1)])
def test_masked_positions_are_the_later_fraction_of_the_context(n_context, fraction, first_masked):
    positions = masked_positions(n_context, fraction)
    assert positions.dtype == torch.bool and positions.shape == (n_context,)
    assert positions.nonzero().squeeze(1).tolist() == list(range(first_masked, n_context))  # a suffix, >= 1, < all


def crops(seed=0, batch=2, frames=30, neurons=7):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, neurons, generator=generator).cumsum(1) * 0.3


def test_the_masked_view_sees_the_unmasked_steps_only_and_regresses_onto_the_full_view(randomised_model):
    model = randomised_model(0, **OBJECTIVE_MODEL).eval()  # no dropout: the views differ only by the mask
    crop, context = crops(), 20
    hidden_steps = masked_positions(context, 0.5)
    full = model(crop[:, :context]).hidden
    masked = model(crop[:, :context].masked_fill(hidden_steps[None, :, None], float("nan"))).hidden
    # causal: before the mask both views are the same; from the mask on they differ
    assert torch.allclose(masked[:, ~hidden_steps], full[:, ~hidden_steps], atol=1e-6)
    assert (masked[:, hidden_steps] - full[:, hidden_steps]).abs().amax(dim=(0, 2, 3)).min() > 1e-4
    loss, parts, out = latent_masked_losses(model, crop, context, latent_weight=1.0, masked_fraction=0.5)
    expected = (masked[:, hidden_steps] - full[:, hidden_steps]).abs().mean()
    assert parts["latent_l1"] == pytest.approx(float(expected.detach()), rel=1e-5)
    forecast_only, forecast_parts, _ = crop_losses(model, crop, context, next_code_weight=0.0)
    assert parts["forecast_mse"] == pytest.approx(forecast_parts["forecast_mse"], rel=1e-6)
    assert float(loss.detach()) == pytest.approx(parts["forecast_mse"] + parts["latent_l1"], rel=1e-5)


def test_the_full_view_is_a_target_only(randomised_model):
    """Gradients reach the weights through the masked view and the forecast, never through the target:
    with the forecast loss removed (head and skip frozen) the L1 still trains the blocks."""
    model = randomised_model(1, **OBJECTIVE_MODEL).train()
    crop, context = crops(seed=2), 20
    loss, _, out = latent_masked_losses(model, crop, context, latent_weight=1.0, masked_fraction=0.5)
    loss.backward()
    assert model.blocks[0].temporal.qkv.weight.grad.abs().sum() > 0
    assert out.forecast.shape == (2, context, 7, 5)
    model.zero_grad()
    _, parts, _ = latent_masked_losses(model, crop, context, latent_weight=0.0, masked_fraction=0.5)
    assert parts["loss"] == pytest.approx(parts["forecast_mse"])
