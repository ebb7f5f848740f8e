"""The one optimizer set-up of every trained model (nanoGPT's ``configure_optimizers``).

Each trained model class (:class:`~rtcalm.model.Calm`, :class:`~rtcalm.model.tokenizer.TraceTokenizer`,
:class:`~rtcalm.model.baselines.BaselineForecaster`, :class:`~rtcalm.model.movie_decoder.MovieDecodingModel`)
has a ``configure_optimizers(weight_decay, lr, betas)`` method; they share no base class but nn.Module, so
each is one call of :func:`configure_adamw` with the names that model keeps free of weight decay.
"""

from __future__ import annotations

import torch
from torch import nn


def configure_adamw(model: nn.Module, weight_decay: float, lr: float, betas: tuple[float, float],
                    no_decay_prefixes: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW over the parameters of ``model`` that require gradients (freeze a part with
    ``requires_grad_(False)`` before calling), in two groups, in ``named_parameters`` order: weight decay
    on matrices and kernels (2 or more dimensions), none on biases, norms, embedding vectors and the
    parameters whose names start with one of ``no_decay_prefixes``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and not name.startswith(no_decay_prefixes) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
