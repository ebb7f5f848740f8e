"""Helpers shared by the engine tests: small randomised models."""

from __future__ import annotations

import torch

from rtcalm.model import Calm, CalmConfig

SMALL = dict(token_window_frames=4, codebook_size=64, code_dim=4, tokenizer_hidden=16, d_model=16, n_layers=2,
             n_heads=4, mlp_hidden=32, attention_window_frames=12, n_latents=4, forecast_horizon_frames=5)


def randomised_model(seed: int = 0, **overrides) -> Calm:
    """Every parameter non-trivial (biases, position bias, latents, missing embedding, a spread-out
    codebook), so an equivalence test exercises all of them."""
    torch.manual_seed(seed)
    model = Calm(CalmConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if model.config.input_mode != "encoder":
            model.tokenizer.codebook.normal_()
    return model.eval()
