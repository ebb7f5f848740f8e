"""Training objectives shared by the pretraining trainer and per-session calibration.

A training example is a crop of ``context + horizon`` consecutive normalised frames (B, context + H, N):
the model reads the first ``context`` frames, and its forecast at position t is scored against frames
t + 1 ... t + H of the crop. Frames past the end of the crop, and missing (NaN) frames, are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtcalm.model.calm import Calm, CalmOutput
from rtcalm.model.encoder import copy_last_ratio_loss


def future_targets(crop: torch.Tensor, n_context: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """crop (B, T, N) -> (targets (B, n_context, N, horizon), mask (same shape, bool)).

    targets[b, t, n, k] = crop[b, t + 1 + k, n]; positions past the end of the crop or non-finite are
    masked (target value 0)."""
    B, T, N = crop.shape
    needed = n_context + horizon
    if T < needed:
        crop = torch.cat([crop, crop.new_full((B, needed - T, N), float("nan"))], dim=1)
    future = crop[:, 1:needed].unfold(1, horizon, 1)  # (B, n_context, N, horizon)
    mask = torch.isfinite(future)
    return torch.where(mask, future, 0.0), mask


def forecast_loss(forecast: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the unmasked (position, neuron, horizon) entries."""
    err = (forecast - targets).square() * mask
    return err.sum() / mask.sum().clamp(min=1)


def next_code_targets(model: Calm, crop: torch.Tensor, n_context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The token of the next frame for every position: (codes (B, n_context, N), mask (B, n_context, N)).
    The mask drops positions whose next frame is missing or past the end of the crop."""
    B, T, N = crop.shape
    if T < n_context + 1:
        crop = torch.cat([crop, crop.new_full((B, n_context + 1 - T, N), float("nan"))], dim=1)
    with torch.no_grad():
        windows, _ = model.token_windows(crop[:, :n_context + 1])
        codes = model.tokenizer.encode(windows)[:, 1:]  # (B, n_context, N)
    return codes, torch.isfinite(crop[:, 1:n_context + 1])


def next_code_loss(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the next token over unmasked positions."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="none")
    mask = mask.reshape(-1).to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def crop_losses(model: Calm, crop: torch.Tensor, n_context: int, next_code_weight: float,
                neuron_embedding: torch.Tensor | None = None,
                model_input: torch.Tensor | None = None, loss_kind: str = "mse", scale: torch.Tensor | None = None,
                first_scored_frame: int = 0) -> tuple[torch.Tensor, dict[str, float], CalmOutput]:
    """Total loss on one batch of crops (B, >= n_context + 1, N) and its parts as floats.

    ``model_input`` (B, n_context, N) replaces ``crop[:, :n_context]`` as what the model reads (e.g. with
    frames dropped as augmentation) while the targets still come from ``crop``. ``loss_kind``: "mse"
    (:func:`forecast_loss`) or "copy_last_ratio" (:func:`rtcalm.model.encoder.copy_last_ratio_loss`, in
    ΔF/F units when ``scale`` (N,) gives the neurons' standard deviations); either is computed on the
    positions from ``first_scored_frame`` on (``forecast_mse`` is always reported)."""
    horizon = model.config.forecast_horizon_frames
    if model_input is None:
        model_input = crop[:, :n_context]
    # positions before first_scored_frame that no scored position attends to only feed raw windows
    cfg = model.config
    window_only = max(0, first_scored_frame - cfg.n_layers * (cfg.attention_window_frames - 1))
    out = model(model_input, neuron_embedding=neuron_embedding, with_code_logits=next_code_weight > 0,
                window_only_frames=window_only)
    targets, mask = future_targets(crop, n_context, horizon)
    scored = slice(first_scored_frame, None)
    forecast, targets, mask = out.forecast[:, first_scored_frame - window_only:], targets[:, scored], mask[:, scored]
    loss_forecast = forecast_loss(forecast, targets, mask)
    parts = {"forecast_mse": float(loss_forecast.detach())}
    if loss_kind == "copy_last_ratio":
        last = crop[:, :n_context][:, scored]  # (B, scored, N): the value at each forecast origin
        mask = mask & torch.isfinite(last).unsqueeze(-1)
        loss_forecast = copy_last_ratio_loss(forecast, targets, torch.nan_to_num(last), mask, scale)
        parts["copy_last_ratio"] = float(loss_forecast.detach())
    elif loss_kind != "mse":
        raise ValueError(f"unknown forecast loss {loss_kind!r}")
    loss = loss_forecast
    if next_code_weight > 0:
        codes, code_mask = next_code_targets(model, crop, n_context)
        loss_code = next_code_loss(out.next_code_logits, codes[:, window_only:], code_mask[:, window_only:])
        parts["next_code_ce"] = float(loss_code.detach())
        loss = loss + next_code_weight * loss_code
    parts["loss"] = float(loss.detach())
    return loss, parts, out


# --- latent masked modelling (POYO-CAP) ----------------------------------------------------------------

def masked_positions(n_context: int, masked_fraction: float) -> torch.Tensor:
    """Bool (n_context,): the time steps the masked view hides, the later ``masked_fraction`` of them
    (at least one, never all: the masked view keeps the earlier steps to predict from)."""
    n_masked = min(max(round(n_context * masked_fraction), 1), n_context - 1)
    positions = torch.zeros(n_context, dtype=torch.bool)
    positions[n_context - n_masked:] = True
    return positions


def latent_masked_losses(model: Calm, crop: torch.Tensor, n_context: int, latent_weight: float,
                         masked_fraction: float, model_input: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, float], CalmOutput]:
    """POYO-CAP's latent masked objective next to the forecast MSE, on crops (B, >= n_context + 1, N).

    A twin pass of the same network: the full view reads the context as it is; the masked view reads it
    with the later ``masked_fraction`` of its time steps hidden (marked missing, so the learned missing
    embedding is the mask token and causal attention sees only the earlier steps). The masked view's
    hidden states (the per-neuron latents of each time step) at the hidden steps regress with L1 onto the
    full view's, which are the target only (no gradient). The forecast MSE is the full view's, so the
    model keeps its forecasting head. (POYO-CAP adds a 0.01-weighted classification loss where labels
    exist; the pretraining crops have none.)"""
    horizon = model.config.forecast_horizon_frames
    if model_input is None:
        model_input = crop[:, :n_context]
    full = model(model_input)
    targets, mask = future_targets(crop, n_context, horizon)
    loss_forecast = forecast_loss(full.forecast, targets, mask)
    hidden_steps = masked_positions(n_context, masked_fraction).to(crop.device)
    masked_input = model_input.masked_fill(hidden_steps[None, :, None], float("nan"))
    masked = model(masked_input)
    loss_latent = F.l1_loss(masked.hidden[:, hidden_steps], full.hidden[:, hidden_steps].detach())
    loss = loss_forecast + latent_weight * loss_latent
    parts = {"forecast_mse": float(loss_forecast.detach()), "latent_l1": float(loss_latent.detach()),
             "loss": float(loss.detach())}
    return loss, parts, full
