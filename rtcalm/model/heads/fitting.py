"""Fitting a head: closed-form linear estimators (scikit-learn's, or their exact equivalents in
:mod:`.linear`) whose solution is folded into the head's tensors, so that the head computes
exactly the estimator's decision values. No training loop (that is :mod:`.training`), no choice of
hyperparameters (inner cross-validation: :mod:`rtcalm.eval.served`).

- :func:`fit_head`: the EMA head on pooled hidden states (samples, N, D): logistic regression
  (classification) or ridge (regression) on standardised features with a fixed L2 penalty.
- :func:`fit_time_resolved_head`: the time-resolved head on per-frame windows: the frame features of
  :meth:`TimeResolvedHead.frame_features` (the principal axes of the hidden state fitted on the given
  trials, label-free), averaged in time bins, then Ledoit-Wolf shrinkage LDA (classification) or ridge of
  ``alpha`` on standardised features (regression).
"""

from __future__ import annotations

import numpy as np
import torch

from rtcalm.model.heads.config import HeadConfig, HeadError, TimeResolvedConfig
from rtcalm.model.heads.modules import DecodingHead, TimeResolvedHead


def class_indices(classes, targets: np.ndarray) -> np.ndarray:
    """Targets given as class values -> indices into the sorted ``classes``; HeadError for another value."""
    classes = np.asarray(classes, dtype=np.float64)
    index = np.searchsorted(classes, targets)
    if not np.allclose(classes[np.clip(index, 0, len(classes) - 1)], targets):
        raise HeadError("classification targets must be among the head's classes")
    return index


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
        index = class_indices(classes, targets)
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
    _set_readout(head, weight, bias)
    return head.eval()


def linear_readout(features: np.ndarray, targets: np.ndarray, config, alpha: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight (outputs, F), bias (outputs,)) of shrinkage LDA (classification; targets are class values)
    or ridge of ``alpha`` on standardised features (regression), on (samples, F) features."""
    from sklearn.linear_model import Ridge

    from rtcalm.model.heads.linear import ShrinkageLDA

    if config.kind == "classification":
        index = class_indices(config.classes, targets)
        lda = ShrinkageLDA().fit(features, index)
        weight = np.zeros((len(config.classes), features.shape[1]))
        bias = np.full(len(config.classes), -1e9)  # a class never seen in training is never decoded
        weight[lda.classes_], bias[lda.classes_] = lda.coef_, lda.intercept_
        return weight, bias
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale < 1e-12] = 1.0
    ridge = Ridge(alpha=100.0 if alpha is None else alpha).fit((features - mean) / scale, targets)
    weight = ridge.coef_[None, :] / scale[None, :]
    return weight, np.atleast_1d(ridge.intercept_) - weight @ mean


def window_features(head: TimeResolvedHead, dff: np.ndarray | None, hidden: np.ndarray | None) -> np.ndarray:
    """The head's frame features of windows (trials, window, ...): float64 (trials, window, N * width)."""
    with torch.inference_mode():
        features = head.frame_features(None if dff is None else torch.from_numpy(np.ascontiguousarray(dff, np.float32)),
                                       None if hidden is None else torch.from_numpy(np.ascontiguousarray(hidden, np.float32)))
    return features.numpy().astype(np.float64)


def fit_time_resolved_head(config: TimeResolvedConfig, targets: np.ndarray, *, dff: np.ndarray | None = None,
                           hidden: np.ndarray | None = None, alpha: float | None = None,
                           projection: tuple[np.ndarray, np.ndarray] | None = None) -> TimeResolvedHead:
    """Fit on the training trials' windows: ``dff`` (trials, window_frames, N), the frames' ΔF/F as the
    daemon received them (raw and both heads), ``hidden`` (trials, window_frames, N, D), their hidden states
    (backbone and both heads). ``projection``: (mean (D,), basis (D, >= components)) to use instead of the
    principal axes of ``hidden`` (e.g. those of a larger set of unlabelled frames)."""
    from rtcalm.model.heads.linear import principal_projection, time_binned

    expected = (config.window_frames, config.n_neurons)
    for name, values, needed in (("dff", dff, config.uses_raw), ("hidden", hidden, config.uses_backbone)):
        if needed and values is None:
            raise HeadError(f"a {config.features} head is fitted on {name}")
        if needed and values.shape[1:3] != expected:
            raise HeadError(f"{name} windows {values.shape[1:]} do not match the config's (window_frames, n_neurons) "
                            f"= {expected}")
    if config.uses_backbone and hidden.shape[-1] != config.d_model:
        raise HeadError(f"hidden states of width {hidden.shape[-1]}, the config's d_model is {config.d_model}")
    head = TimeResolvedHead(config)
    if config.uses_backbone:
        mean, basis = projection if projection is not None else principal_projection(hidden, config.components)
        with torch.no_grad():
            head.projection_mean.copy_(torch.from_numpy(np.asarray(mean, np.float64)))
            head.projection.copy_(torch.from_numpy(np.asarray(basis, np.float64)[:, :config.components]))
    per_frame = window_features(head, dff if config.uses_raw else None, hidden if config.uses_backbone else None)
    binned = time_binned(per_frame, config.n_bins, config.bin_sizes)
    weight, bias = linear_readout(binned, np.asarray(targets, np.float64), config, alpha)
    _set_readout(head, weight, bias)
    return head.eval()


def _set_readout(head, weight: np.ndarray, bias: np.ndarray) -> None:
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise HeadError("the fitted readout is not finite: the features do not vary across the trials")
    with torch.no_grad():
        head.readout.weight.copy_(torch.from_numpy(weight))
        head.readout.bias.copy_(torch.from_numpy(bias))
