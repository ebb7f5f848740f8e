"""Per-session neuron embeddings: calibrated on a few minutes of a new session, shared weights untouched.

The pretrained model knows no neuron identities (that is what lets it run on any population). When a
session is long-lived, a per-neuron vector added to that neuron's input token at every frame lets the
model pick up neuron-specific regularities (baseline shape, typical transients, functional group). Only
that (N, d_model) tensor is fitted; every shared weight is frozen (requires_grad off during the fit and
restored afterwards, never updated).

    embedding = calibrate_neuron_embeddings(model, frames[: 3 * 60 * 30])   # 3 min at 30 Hz
    state = model.new_state(n_neurons, neuron_embedding=embedding)
"""

from __future__ import annotations

import torch

from rtcalm.model.calm import Calm
from rtcalm.model.objectives import crop_losses


def calibrate_neuron_embeddings(model: Calm, frames, *, n_steps: int = 200, context_frames: int = 64,
                                batch_size: int = 8, lr: float = 3e-2, l2: float = 1e-3, seed: int = 0,
                                initial: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """Fit a neuron embedding (N, d_model) to normalised frames (T, N) of one session by minimising the
    forecast MSE on random crops, with the model's weights frozen.

    Returns (embedding, loss per step). ``l2`` pulls embeddings towards 0 (the pretrained behaviour), so
    neurons with little data stay close to it."""
    frames = torch.as_tensor(frames, dtype=torch.float32)
    if frames.dim() != 2:
        raise ValueError(f"frames must be (T, N), got shape {tuple(frames.shape)}")
    T, N = frames.shape
    horizon = model.config.forecast_horizon_frames
    crop_len = min(T, context_frames + horizon)
    n_context = min(context_frames, T - 1)
    if n_context < 1:
        raise ValueError(f"need at least 2 frames to calibrate, got {T}")
    generator = torch.Generator().manual_seed(seed)
    embedding = (torch.zeros(N, model.config.d_model) if initial is None else initial.detach().clone().float())
    embedding.requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=lr)
    was_training = model.training
    saved_flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    try:
        for _ in range(n_steps):
            starts = torch.randint(0, T - crop_len + 1, (batch_size,), generator=generator)
            crop = torch.stack([frames[s:s + crop_len] for s in starts.tolist()])  # (B, crop_len, N)
            loss, _, _ = crop_losses(model, crop, n_context, next_code_weight=0.0, neuron_embedding=embedding)
            total = loss + l2 * embedding.square().mean()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for p, flag in zip(model.parameters(), saved_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return embedding.detach(), losses
