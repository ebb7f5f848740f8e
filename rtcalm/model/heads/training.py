"""Training a head and its backbone together (the fine-tuned path of decode-eval's ``model_finetuned``):
gradient descent with cross-entropy (classification) or MSE (regression) on trial epochs, starting from a
head fitted on the frozen backbone (:func:`rtcalm.model.heads.fitting.fit_head`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rtcalm.model.heads.modules import DecodingHead


def finetune_head(model, head: DecodingHead, epochs: torch.Tensor, targets: np.ndarray, response_frames: np.ndarray,
                  steps: int = 100, lr: float = 1e-3, seed: int = 0, batch_trials: int | None = None) -> DecodingHead:
    """Train head and backbone together on trial epochs (trials, frames, N) (normalised ΔF/F), pooling the
    hidden states over ``response_frames`` (bool, frames). Cross-entropy for classification, MSE for
    regression; each step on ``batch_trials`` random trials (all when None). Returns the head; ``model`` is
    updated in place (copy it first to keep the original)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = head.config
    if config.kind == "classification":
        labels = torch.from_numpy(np.searchsorted(np.asarray(config.classes), targets)).long()
        loss_fn = nn.CrossEntropyLoss()
    else:
        labels = torch.as_tensor(targets, dtype=torch.float32)[:, None]
        loss_fn = nn.MSELoss()
    mask = torch.from_numpy(response_frames)
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    model.train()
    head.train()
    n_trials = epochs.shape[0]
    for _ in range(steps):
        batch = (torch.arange(n_trials) if batch_trials is None or batch_trials >= n_trials
                 else torch.randperm(n_trials, generator=generator)[:batch_trials])
        hidden = model(epochs[batch]).hidden  # (batch, frames, N, D)
        loss = loss_fn(head(hidden[:, mask].mean(dim=1)), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return head.eval()
