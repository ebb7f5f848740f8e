"""Per-neuron temporal encoder: a neuron's recent window, normalised by its own statistics, through an MLP.

Shared by the ``encoder`` input mode of CalM (:mod:`rtcalm.model.calm`) and the per-neuron forecasting
baselines (:mod:`rtcalm.model.baselines`), so "the model without its population pathway" and "the MLP
baseline" are the same code.

Window normalisation (instance normalisation, as in the POCO / per-neuron MLP forecasters): each
window is z-scored with *its own* observed mean and standard deviation, and forecasts made in those
units are mapped back with the same two numbers. This makes the forecast of a neuron equivariant to any
affine change of its scale, which is what lets one network serve neurons whose ΔF/F ranges differ by
orders of magnitude, and sessions whose running normalisation has not settled yet.

    values (..., W) oldest first, missing entries zeroed; missing (..., W) 0/1
      -> normalised = (values - mean_w) / std_w  (0 where missing)
      -> h1 = GELU(Linear(input)),  h2 = GELU(h1 + Linear(h1))          hidden (..., E)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Floor of a window's standard deviation, in the units of the input (per-neuron z-scores): a flat window
# forecasts its own mean instead of amplifying rounding noise.
WINDOW_STD_FLOOR = 1e-2


def normalise_windows(values: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """values, missing (..., W) -> (normalised (..., W), mean (..., 1), std (..., 1)).

    Statistics use the observed entries only; a window with nothing observed has mean 0 and std 1."""
    observed = 1.0 - missing
    count = observed.sum(-1, keepdim=True)
    safe_count = count.clamp(min=1.0)
    mean = (values * observed).sum(-1, keepdim=True) / safe_count
    centred = (values - mean) * observed
    variance = centred.square().sum(-1, keepdim=True) / safe_count
    std = torch.where(count > 0, (variance + WINDOW_STD_FLOOR ** 2).sqrt(), torch.ones_like(variance))
    return centred / std, mean, std


class TemporalEncoder(nn.Module):
    """Two-layer residual MLP over a per-neuron input vector: (..., n_inputs) -> (..., hidden)."""

    def __init__(self, n_inputs: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(n_inputs, hidden)
        self.fc_residual = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc_in(x))
        return F.gelu(h + self.fc_residual(h))


def copy_last_ratio_loss(forecast: torch.Tensor, targets: torch.Tensor, last: torch.Tensor,
                         mask: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The forecasting objective of the anchors and of CalM's encoder mode: for every horizon step k,
    the batch MSE of the forecast divided by the batch MSE of copy-last on the same targets, averaged
    over k. This is the evaluation's ``mse_ratio`` (rtcalm.eval.forecast) made differentiable, so short
    horizons (where copy-last is hard to beat) weigh as much as long ones.

    forecast, targets, mask: (..., N, H); last (..., N) the value at the forecast origin; scale: per-neuron
    standard deviation broadcastable to (..., N) that maps normalised units back to ΔF/F, so the loss is
    measured in ΔF/F like the metric (None: in the input's units)."""
    weight = mask.to(forecast.dtype)
    if scale is not None:
        weight = weight * scale.unsqueeze(-1).square()
    dims = tuple(range(forecast.dim() - 1))
    model_sse = ((forecast - targets).square() * weight).sum(dims)  # (H,)
    copy_sse = ((last.unsqueeze(-1) - targets).square() * weight).sum(dims)  # (H,)
    return (model_sse / copy_sse.clamp(min=1e-12)).mean()
