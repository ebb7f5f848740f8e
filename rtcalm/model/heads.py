"""Decoding heads: behaviour or stimulus read out from CalM's population state, every frame.

The backbone is permutation-equivariant and has no neuron identities, so *which* neuron carries which
stimulus preference is session-specific: a head is a per-session linear readout of the per-neuron
hidden states (``CalmOutput.hidden``, (N, D)), pooled over time with an exponential moving average whose
time constant matches the response window the head was fitted on::

    pooled_t = (1 - a) * pooled_{t-1} + a * hidden_t          a = 1 / pool_frames
    logits_t = W · vec(pooled_t) + b                          W: (outputs, N * D)
    classification: probabilities = softmax(logits); regression: value = logits[0]

Fitting (:func:`fit_head`) uses scikit-learn's logistic regression (classification) or ridge
(regression) on standardised features with a fixed L2 penalty, then folds the standardisation into
``W`` and ``b``, so the torch head returns exactly what the fitted estimator predicts. That is the
frozen-backbone path. :func:`finetune_head` trains head *and* backbone end to end with cross-entropy or
MSE, starting from the fitted head (the fine-tuned path).

Heads are saved as ``<name>.safetensors`` + ``<name>.json`` (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtcalm.errors import RtcalmError


class HeadError(RtcalmError, ValueError):
    pass


@dataclass
class HeadConfig:
    name: str  # e.g. "direction", "speed"
    kind: str  # "classification" | "regression"
    n_neurons: int
    d_model: int
    pool_frames: float  # EMA time constant in frames (the response window length it was fitted on)
    classes: list[float] = field(default_factory=list)  # class values (e.g. directions in degrees)

    def __post_init__(self):
        if self.kind not in ("classification", "regression"):
            raise HeadError(f"head kind must be 'classification' or 'regression', got {self.kind!r}")
        if self.kind == "classification" and len(self.classes) < 2:
            raise HeadError("a classification head needs at least two classes")
        if self.n_neurons < 1 or self.d_model < 1 or not self.pool_frames >= 1:
            raise HeadError("head sizes must be positive and pool_frames >= 1")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1


class DecodingHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.readout = nn.Linear(config.n_neurons * config.d_model, config.n_outputs)

    def forward(self, pooled_hidden: torch.Tensor) -> torch.Tensor:
        """pooled_hidden (..., N, D) -> logits (..., outputs)."""
        return self.readout(pooled_hidden.flatten(-2))

    # --- streaming ---
    def new_pool(self) -> torch.Tensor:
        return torch.zeros(self.config.n_neurons, self.config.d_model)

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, pool: torch.Tensor) -> dict:
        """Update the EMA ``pool`` in place with this frame's hidden (N, D); return the decoded value."""
        pool.lerp_(hidden, 1.0 / self.config.pool_frames)
        logits = self(pool)
        if self.config.kind == "regression":
            return {self.config.name: float(logits[0])}
        probabilities = torch.softmax(logits, dim=-1)
        best = int(torch.argmax(probabilities))
        return {self.config.name: self.config.classes[best],
                f"{self.config.name}_probabilities": probabilities.tolist()}

    # --- persistence ---
    def save(self, directory, name: str | None = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = name or self.config.name
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / f"{stem}.safetensors"))
        (directory / f"{stem}.json").write_text(json.dumps({"format": "rtcalm-head", "version": 1,
                                                            "config": asdict(self.config)}, indent=2))
        return directory / f"{stem}.json"

    @classmethod
    def load(cls, json_path) -> DecodingHead:
        from safetensors.torch import load_file

        json_path = Path(json_path)
        try:
            document = json.loads(json_path.read_text())
            if document.get("format") != "rtcalm-head" or document.get("version") != 1:
                raise HeadError(f"{json_path}: not an rtcalm head (format/version)")
            head = cls(HeadConfig(**document["config"]))
            head.load_state_dict(load_file(str(json_path.with_suffix(".safetensors"))))
        except HeadError:
            raise
        except Exception as exc:
            raise HeadError(f"{json_path}: cannot load head ({type(exc).__name__}: {exc})") from None
        return head.eval()


def fit_head(features: np.ndarray, targets: np.ndarray, config: HeadConfig, l2: float | None = None) -> DecodingHead:
    """Fit on pooled hidden states ``features`` (samples, N, D) with sklearn, return the equivalent head.
    Classification targets are class *values* (e.g. 0, 45, ... degrees)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    flat = features.reshape(features.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=0)
    scale = flat.std(axis=0)
    scale[scale < 1e-12] = 1.0
    standardised = (flat - mean) / scale
    head = DecodingHead(config)
    if config.kind == "classification":
        classes = np.asarray(config.classes, dtype=np.float64)
        index = np.searchsorted(classes, targets)
        if not np.allclose(classes[np.clip(index, 0, len(classes) - 1)], targets):
            raise HeadError("classification targets must be among the head's classes")
        estimator = LogisticRegression(C=0.1 if l2 is None else 1.0 / l2, max_iter=2000).fit(standardised, index)
        coef = np.zeros((len(classes), flat.shape[1]))
        intercept = np.zeros(len(classes))
        if len(estimator.classes_) == 2:  # sklearn's binary form: one logit for class 1
            coef[estimator.classes_[1]] = estimator.coef_[0]
            intercept[estimator.classes_[1]] = estimator.intercept_[0]
        else:
            coef[estimator.classes_] = estimator.coef_
            intercept[estimator.classes_] = estimator.intercept_
            intercept[np.setdiff1d(np.arange(len(classes)), estimator.classes_)] = -1e9  # never seen in training
    else:
        estimator = Ridge(alpha=10.0 if l2 is None else l2).fit(standardised, targets)
        coef, intercept = estimator.coef_[None, :], np.atleast_1d(estimator.intercept_)
    weight = coef / scale[None, :]
    bias = intercept - weight @ mean
    with torch.no_grad():
        head.readout.weight.copy_(torch.from_numpy(weight))
        head.readout.bias.copy_(torch.from_numpy(bias))
    return head.eval()


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
