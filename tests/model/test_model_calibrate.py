"""Per-session neuron embeddings: fitted without touching shared weights, and they lower the loss."""

from __future__ import annotations

import torch

from rtcalm.model import Calm, CalmConfig, calibrate_neuron_embeddings
from rtcalm.model.objectives import crop_losses

CFG = CalmConfig(token_window_frames=4, codebook_size=32, code_dim=4, tokenizer_hidden=16, d_model=16, n_layers=1,
                 n_heads=2, mlp_hidden=32, attention_window_frames=8, n_latents=4, forecast_horizon_frames=4)


def session(n_frames=600, n_neurons=12, seed=0):
    """Noise around a per-neuron offset (as with lagging normalisation statistics): neuron-specific
    structure that shared weights cannot know but an embedding can absorb."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.linspace(-1.5, 1.5, n_neurons)
    return offset + 0.3 * torch.randn(n_frames, n_neurons, generator=g)


def test_calibration_fits_only_the_embedding_and_lowers_the_loss():
    torch.manual_seed(0)
    model = Calm(CFG).eval()
    with torch.no_grad():  # weights of trained magnitude, not the tiny initial ones
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frames = session()
    crops = torch.stack([frames[s:s + 40] for s in range(0, 560, 40)])
    with torch.no_grad():
        loss_plain, _, _ = crop_losses(model, crops, 36, next_code_weight=0.0)
    embedding, losses = calibrate_neuron_embeddings(model, frames, n_steps=60, context_frames=36, batch_size=4)
    assert embedding.shape == (12, 16) and not embedding.requires_grad
    with torch.no_grad():
        loss_calibrated, _, _ = crop_losses(model, crops, 36, next_code_weight=0.0, neuron_embedding=embedding)
    assert float(loss_calibrated) < 0.9 * float(loss_plain)
    assert len(losses) == 60
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} changed"
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert not model.training
