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

The time-resolved head (:class:`TimeResolvedHead`, :func:`fit_time_resolved_head`) reads the time
course instead of an average: every frame's hidden state is projected per neuron onto k principal axes
of the D-space (``projection_mean``, ``projection``: (D, k), fitted on the training trials), the last
``window_frames`` projected frames are averaged in ``n_bins`` contiguous time bins, and a linear readout
(shrinkage LDA for classification, ridge for regression) maps the bins x N x k values to the outputs.
At the window's end (2 s after a stimulus onset for a head fitted on the 0-2 s response) it computes
exactly what decode-eval's ``model_time_resolved`` decoder computes offline.

Streaming: because the readout is linear, each frame's contribution to every bin's logits is computed
once when the frame arrives, (n_bins, outputs) numbers, and kept in a preallocated ring buffer of the
last ``window_frames`` frames; the decoded logits are the sum, over the window, of each frame's
contribution to the bin it is in now (a gather and a sum). Per frame: one (N, D) x (D, k) projection,
one (n_bins * outputs, N * k) matrix-vector product, no Python loop over neurons or frames. Until a
stream has produced ``window_frames`` frames the missing frames count as zero contributions.

Heads are saved as ``<name>.safetensors`` + ``<name>.json`` (no pickle). The JSON is
``{"format": "rtcalm-head", "version": V, "config": {...}}``: version 1 is the EMA head (its config is
:class:`HeadConfig`); version 2 carries ``"pooling": "time_bins"`` and the time-resolved head's
:class:`TimeResolvedConfig`. :func:`load_head` reads either.
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

    def new_state(self) -> torch.Tensor:
        """The streaming state (the EMA pool); the same interface as :class:`TimeResolvedHead`'s."""
        return self.new_pool()

    @torch.inference_mode()
    def absorb(self, hidden: torch.Tensor, pool: torch.Tensor) -> None:
        """This frame's hidden (N, D) into the pool, without the readout."""
        pool.lerp_(hidden, 1.0 / self.config.pool_frames)

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, pool: torch.Tensor) -> dict:
        """Update the EMA ``pool`` in place with this frame's hidden (N, D); return the decoded value."""
        pool.lerp_(hidden, 1.0 / self.config.pool_frames)
        return _decoded(self.config, self(pool))

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
        return load_head(json_path, expected=cls)


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


# --- the time-resolved head -------------------------------------------------------------------------------


@dataclass
class TimeResolvedConfig:
    name: str
    kind: str  # "classification" | "regression"
    n_neurons: int
    d_model: int
    window_frames: int  # frames read (the response window the head was fitted on, at the model's rate)
    n_bins: int  # contiguous time bins of the window (np.array_split sizes)
    components: int  # principal axes of the hidden state kept per neuron
    classes: list[float] = field(default_factory=list)
    pooling: str = "time_bins"

    def __post_init__(self):
        if self.pooling != "time_bins":
            raise HeadError(f"a time-resolved head has pooling 'time_bins', got {self.pooling!r}")
        if self.kind not in ("classification", "regression"):
            raise HeadError(f"head kind must be 'classification' or 'regression', got {self.kind!r}")
        if self.kind == "classification" and len(self.classes) < 2:
            raise HeadError("a classification head needs at least two classes")
        for key in ("n_neurons", "d_model", "window_frames", "n_bins", "components"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 1:
                raise HeadError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.n_bins > self.window_frames:
            raise HeadError(f"n_bins ({self.n_bins}) cannot exceed window_frames ({self.window_frames})")
        if self.components > self.d_model:
            raise HeadError(f"components ({self.components}) cannot exceed d_model ({self.d_model})")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    @property
    def n_features(self) -> int:
        return self.n_bins * self.n_neurons * self.components

    def bin_of_frame(self) -> np.ndarray:
        """(window_frames,) the bin of each frame of the window, oldest first (np.array_split's sizes)."""
        sizes = [len(chunk) for chunk in np.array_split(np.arange(self.window_frames), self.n_bins)]
        return np.repeat(np.arange(self.n_bins), sizes)


class RingState:
    """A stream's state for one time-resolved head: per frame of the last window, its contribution to every
    bin's logits, in a doubled ring buffer (each frame written at ``slot`` and ``slot + window``, so the
    window is always the contiguous view ``[slot + 1, slot + 1 + window)``). Preallocated; reset() zeroes."""

    def __init__(self, config: TimeResolvedConfig):
        self.window = config.window_frames
        self.contributions = torch.zeros(2 * self.window, config.n_bins, config.n_outputs)
        self.slot = self.window - 1  # the slot of the newest frame
        self.frames = 0

    def reset(self) -> None:
        self.contributions.zero_()
        self.slot = self.window - 1
        self.frames = 0


class TimeResolvedHead(nn.Module):
    def __init__(self, config: TimeResolvedConfig):
        super().__init__()
        self.config = config
        self.register_buffer("projection_mean", torch.zeros(config.d_model))
        self.register_buffer("projection", torch.zeros(config.d_model, config.components))
        self.readout = nn.Linear(config.n_features, config.n_outputs)
        bins = config.bin_of_frame()
        self.register_buffer("bin_of_frame", torch.from_numpy(bins), persistent=False)
        self.register_buffer("bin_sizes", torch.from_numpy(np.bincount(bins)).float(), persistent=False)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., N, D) -> (..., N, k)."""
        return (hidden - self.projection_mean) @ self.projection

    def forward(self, hidden_frames: torch.Tensor) -> torch.Tensor:
        """hidden_frames (..., window_frames, N, D) -> logits (..., outputs): project, bin, read out."""
        projected = self.project(hidden_frames).flatten(-2)  # (..., window, N * k)
        index = self.bin_of_frame.to(projected.device)
        sums = projected.new_zeros(*projected.shape[:-2], self.config.n_bins, projected.shape[-1])
        sums.index_add_(sums.dim() - 2, index, projected)
        binned = sums / self.bin_sizes[:, None]
        return self.readout(binned.flatten(-2))  # bin-major, as rtcalm.eval.linear.time_binned

    # --- streaming ---
    def new_state(self) -> RingState:
        self._prepare_streaming()
        return RingState(self.config)

    def _prepare_streaming(self) -> None:
        """Per-bin readout weights divided by the bin's size: (n_bins * outputs, N * k)."""
        c = self.config
        weight = self.readout.weight.detach().reshape(c.n_outputs, c.n_bins, c.n_neurons * c.components)
        self._bin_weights = (weight / self.bin_sizes[None, :, None]).transpose(0, 1).reshape(
            c.n_bins * c.n_outputs, -1).contiguous()
        self._window_index = torch.arange(c.window_frames)

    @torch.inference_mode()
    def absorb(self, hidden: torch.Tensor, state: RingState) -> None:
        """Add this frame's hidden (N, D) to the window, without the readout."""
        contribution = (self._bin_weights @ self.project(hidden).reshape(-1)).reshape(self.config.n_bins, -1)
        slot = (state.slot + 1) % state.window
        state.contributions[slot] = contribution
        state.contributions[slot + state.window] = contribution
        state.slot = slot
        state.frames += 1

    @torch.inference_mode()
    def logits_of(self, state: RingState) -> torch.Tensor:
        window = state.contributions[state.slot + 1:state.slot + 1 + state.window]  # (window, bins, outputs), oldest first
        return window[self._window_index, self.bin_of_frame].sum(dim=0) + self.readout.bias

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, state: RingState) -> dict:
        """Take this frame's hidden (N, D) into the window and return the decoded value."""
        self.absorb(hidden, state)
        return _decoded(self.config, self.logits_of(state))

    # --- persistence ---
    def save(self, directory, name: str | None = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = name or self.config.name
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / f"{stem}.safetensors"))
        (directory / f"{stem}.json").write_text(json.dumps({"format": "rtcalm-head", "version": 2,
                                                            "config": asdict(self.config)}, indent=2))
        return directory / f"{stem}.json"

    @classmethod
    def load(cls, json_path) -> TimeResolvedHead:
        return load_head(json_path, expected=cls)


TIME_RESOLVED_TENSORS = ("projection_mean", "projection", "readout.weight", "readout.bias")


def _decoded(config, logits: torch.Tensor) -> dict:
    if config.kind == "regression":
        return {config.name: float(logits[0])}
    probabilities = torch.softmax(logits, dim=-1)
    return {config.name: config.classes[int(torch.argmax(probabilities))],
            f"{config.name}_probabilities": probabilities.tolist()}


def load_head(json_path, expected: type | None = None) -> DecodingHead | TimeResolvedHead:
    """Either kind of head from its ``.json`` (the ``.safetensors`` beside it): version 1, the EMA
    :class:`DecodingHead`; version 2 with ``pooling: "time_bins"``, the :class:`TimeResolvedHead`.
    Every tensor must be present with its exact shape, and finite. HeadError otherwise, with the reason."""
    from safetensors.torch import load_file

    json_path = Path(json_path)
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise HeadError(f"{json_path}: cannot load head ({type(exc).__name__}: {exc})") from None
    if not isinstance(document, dict) or document.get("format") != "rtcalm-head" or document.get("version") not in (1, 2):
        raise HeadError(f"{json_path}: not an rtcalm head (format 'rtcalm-head', version 1 or 2)")
    config = document.get("config")
    if not isinstance(config, dict):
        raise HeadError(f"{json_path}: no 'config' map")
    if document["version"] == 1:
        cls, config_cls = DecodingHead, HeadConfig
    elif config.get("pooling") == "time_bins":
        cls, config_cls = TimeResolvedHead, TimeResolvedConfig
    else:
        raise HeadError(f"{json_path}: a version 2 head needs pooling 'time_bins', got {config.get('pooling')!r}")
    if expected is not None and cls is not expected:
        raise HeadError(f"{json_path}: a {cls.__name__}, not a {expected.__name__}")
    try:
        head = cls(config_cls(**config))
    except HeadError as error:
        raise HeadError(f"{json_path}: {error}") from None
    except TypeError as exc:
        raise HeadError(f"{json_path}: bad head config ({exc})") from None
    weights_path = json_path.with_suffix(".safetensors")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise HeadError(f"{weights_path}: cannot load head weights ({type(exc).__name__}: {exc})") from None
    expected_shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    if set(tensors) != set(expected_shapes):
        raise HeadError(f"{weights_path}: tensors {sorted(tensors)}, expected {sorted(expected_shapes)}")
    for key, shape in expected_shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise HeadError(f"{weights_path}: {key} has shape {tuple(tensors[key].shape)}, the config needs {shape}")
        if not bool(torch.isfinite(tensors[key]).all()):
            raise HeadError(f"{weights_path}: {key} holds NaN or Inf")
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    return head.eval()


def fit_time_resolved_head(hidden_frames: np.ndarray, targets: np.ndarray, config: TimeResolvedConfig,
                           alpha: float = 100.0) -> TimeResolvedHead:
    """Fit on per-frame hidden states ``hidden_frames`` (trials, window_frames, N, D) of the training trials:
    principal axes of their D-vectors (label-free), time bins, then Ledoit-Wolf shrinkage LDA
    (classification; targets are class values) or ridge of ``alpha`` on standardised features
    (regression); the result folded into the head's tensors, so ``head(hidden_frames)`` gives the
    estimator's decision values."""
    from sklearn.linear_model import Ridge

    from rtcalm.eval.linear import ShrinkageLDA, principal_projection, time_binned

    trials, frames, neurons, width = hidden_frames.shape
    if (frames, neurons, width) != (config.window_frames, config.n_neurons, config.d_model):
        raise HeadError(f"hidden frames {hidden_frames.shape[1:]} do not match the config's (window_frames, "
                        f"n_neurons, d_model) = {(config.window_frames, config.n_neurons, config.d_model)}")
    mean, basis = principal_projection(hidden_frames, config.components)
    projected = ((hidden_frames - mean) @ basis).reshape(trials, frames, neurons * config.components)
    features = time_binned(projected, config.n_bins)
    if config.kind == "classification":
        classes = np.asarray(config.classes, dtype=np.float64)
        index = np.searchsorted(classes, targets)
        if not np.allclose(classes[np.clip(index, 0, len(classes) - 1)], targets):
            raise HeadError("classification targets must be among the head's classes")
        lda = ShrinkageLDA().fit(features, index)
        weight = np.zeros((len(classes), features.shape[1]))
        bias = np.full(len(classes), -1e9)  # a class never seen in training is never decoded
        weight[lda.classes_], bias[lda.classes_] = lda.coef_, lda.intercept_
    else:
        feature_mean, scale = features.mean(axis=0), features.std(axis=0)
        scale[scale < 1e-12] = 1.0
        ridge = Ridge(alpha=alpha).fit((features - feature_mean) / scale, targets)
        weight = ridge.coef_[None, :] / scale[None, :]
        bias = np.atleast_1d(ridge.intercept_) - weight @ feature_mean
    head = TimeResolvedHead(config)
    with torch.no_grad():
        head.projection_mean.copy_(torch.from_numpy(mean))
        head.projection.copy_(torch.from_numpy(basis))
        head.readout.weight.copy_(torch.from_numpy(weight))
        head.readout.bias.copy_(torch.from_numpy(bias))
    return head.eval()
