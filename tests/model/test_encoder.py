"""Window normalisation, the copy-last ratio loss, and CalM's encoder input mode."""

from __future__ import annotations

import math

import torch

from rtcalm.model import Calm, CalmConfig
from rtcalm.model.encoder import WINDOW_STD_FLOOR, copy_last_ratio_loss, normalise_windows

ENCODER = dict(input_mode="encoder", token_window_frames=16, encoder_hidden=24, d_model=16, n_layers=2, n_heads=4,
               mlp_hidden=32, attention_window_frames=6, n_latents=4, forecast_horizon_frames=5,
               autoregressive_skip=False)


def test_normalise_windows_uses_observed_values_only():
    values = torch.tensor([[1.0, 3.0, 0.0, 5.0]])
    missing = torch.tensor([[0.0, 0.0, 1.0, 0.0]])  # the 0 is a missing entry
    normalised, mean, std = normalise_windows(values, missing)
    expected_std = math.sqrt(8 / 3 + WINDOW_STD_FLOOR ** 2)
    assert torch.allclose(mean, torch.tensor([[3.0]]))
    assert torch.allclose(std, torch.tensor([[expected_std]]))
    assert torch.allclose(normalised, torch.tensor([[-2.0, 0.0, 0.0, 2.0]]) / expected_std)
    _, mean_empty, std_empty = normalise_windows(torch.zeros(1, 4), torch.ones(1, 4))
    assert mean_empty.item() == 0.0 and std_empty.item() == 1.0


def test_copy_last_ratio_loss_is_one_for_copy_last_and_zero_for_the_truth():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(3, 7, 4, generator=g)
    last = torch.randn(3, 7, generator=g)
    mask = torch.ones_like(targets, dtype=torch.bool)
    scale = torch.rand(7, generator=g) + 0.1
    copy = last.unsqueeze(-1).expand_as(targets)
    assert abs(copy_last_ratio_loss(copy, targets, last, mask, scale).item() - 1.0) < 1e-6
    assert copy_last_ratio_loss(targets, targets, last, mask, scale).item() == 0.0
    # in ΔF/F units a neuron with 10x the scale weighs 100x: an error on it alone dominates
    worse = targets.clone()
    worse[..., 0, :] += 1.0
    big = torch.ones(7)
    big[0] = 10.0
    assert copy_last_ratio_loss(worse, targets, last, mask, big) > copy_last_ratio_loss(worse, targets, last, mask)


def test_encoder_mode_starts_per_neuron_and_is_affine_equivariant():
    torch.manual_seed(0)
    model = Calm(CalmConfig(**ENCODER)).eval()
    frames = torch.randn(1, 40, 9).cumsum(1)
    with torch.no_grad():
        out = model(frames).forecast[0, -1]  # (N, H)
        # FiLM starts at zero: a neuron's forecast does not depend on the other neurons yet
        shuffled = frames.clone()
        shuffled[..., 1:] = torch.randn(1, 40, 8)
        assert torch.allclose(model(shuffled).forecast[0, -1, 0], out[0], atol=1e-6)
        assert not torch.allclose(model(shuffled).forecast[0, -1, 1], out[1], atol=1e-3)
        for p in model.parameters():  # FiLM and transformer active too
            p.add_(torch.randn_like(p) * 0.1)
        out = model(frames).forecast[0, -1]
        # a neuron's forecast follows an affine change of its units exactly (up to the std floor):
        # window normalisation leaves nothing in the caller's units
        scale, shift = torch.rand(9) * 3 + 0.5, torch.randn(9) * 5
        moved = model(frames * scale + shift).forecast[0, -1]
    assert torch.allclose(moved, out * scale[:, None] + shift[:, None], atol=1e-3, rtol=1e-4)


def test_window_only_frames_give_the_same_outputs_at_the_positions_they_keep():
    torch.manual_seed(1)
    model = Calm(CalmConfig(**ENCODER)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        frames = torch.randn(2, 60, 5)
        full = model(frames)
        reach = model.config.n_layers * (model.config.attention_window_frames - 1)
        skipped = model(frames, window_only_frames=20)
        assert skipped.forecast.shape[1] == 40
        # a position at least `reach` frames after the cut attends only to kept positions
        assert torch.allclose(skipped.forecast[:, reach:], full.forecast[:, 20 + reach:], atol=1e-5)
