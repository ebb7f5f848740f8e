"""Linear decoders on time-binned responses, with hyperparameters chosen by inner cross-validation.

The estimators of decode-eval's strong baselines (:mod:`rtcalm.eval.decode`) and of the choice of a
head's hyperparameters (:mod:`rtcalm.eval.served`); the time binning, principal projection and shrinkage
LDA they share with the time-resolved head are :mod:`rtcalm.model.heads.linear`:

- :func:`make_estimator`: ``lda`` (no penalty to choose), ``logistic`` (L2, C chosen) and ``ridge``
  (alpha chosen), the last two on standardised features;
- :func:`score` and its :func:`standard_error` over trials;
- :func:`select_by_inner_cv`: the candidate (bins, penalty, ...) with the best inner-CV score on the
  *training* trials of an outer fold. The outer test trials are never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rtcalm.model.heads.linear import MIN_TRIALS_PER_CLASS, ShrinkageLDA

LOGISTIC_C = (0.001, 0.01, 0.1, 1.0)
RIDGE_ALPHA = (1.0, 10.0, 100.0, 1000.0, 10000.0)
BIN_COUNTS = (1, 2, 4, 8)
INNER_FOLDS = 4
LEAVE_ONE_OUT_MAX_TRIALS = 64  # a smallest class under MIN_TRIALS_PER_CLASS: leave-one-out up to this many trials


def make_estimator(kind: str, penalty: float | None = None):
    """A fresh estimator: ``lda`` (penalty unused), ``logistic`` (penalty = C), ``ridge`` (penalty = alpha)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "lda":
        return ShrinkageLDA()
    if kind == "logistic":
        # newton-cg: the same L2 optimum as the default lbfgs, ~10x faster on these small problems
        return make_pipeline(StandardScaler(), LogisticRegression(C=penalty, solver="newton-cg", max_iter=2000))
    if kind == "ridge":
        return make_pipeline(StandardScaler(), Ridge(alpha=penalty))
    raise ValueError(f"unknown estimator {kind!r}; choose lda, logistic or ridge")


def penalties(kind: str) -> Sequence[float | None]:
    return {"lda": (None,), "logistic": LOGISTIC_C, "ridge": RIDGE_ALPHA}[kind]


def score(predictions: np.ndarray, targets: np.ndarray, metric: str) -> float:
    """accuracy, or R² = 1 - SSE/SST over the given trials."""
    if metric == "accuracy":
        return float(np.mean(predictions == targets))
    total = float(np.sum((targets - targets.mean()) ** 2))
    return 1.0 - float(np.sum((targets - predictions) ** 2)) / total if total > 0 else float("nan")


def standard_error(predictions: np.ndarray, targets: np.ndarray, metric: str, resamples: int = 1000,
                   seed: int = 0) -> float:
    """Standard error over trials of one pooled held-out score. Accuracy: binomial, sqrt(p (1 - p) / n).
    R²: a bootstrap over trials of the mean squared error, each divided by the targets' variance over
    all trials (a resample's own variance can be near zero when the behaviour is rare, e.g. running in a
    few trials, which would make its R² meaningless)."""
    n = targets.shape[0]
    if metric == "accuracy":
        accuracy = float(np.mean(predictions == targets))
        return float(np.sqrt(accuracy * (1.0 - accuracy) / n))
    variance = float(np.mean((targets - targets.mean()) ** 2))
    if variance <= 0:
        return float("nan")
    squared_errors = (targets - predictions) ** 2
    samples = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return float(np.std(squared_errors[samples].mean(axis=1), ddof=1) / variance)


def inner_splits(targets: np.ndarray, metric: str, folds: int = INNER_FOLDS, seed: int = 0):
    """(train, validation) positions *within* the given training trials."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = targets.shape[0]
    if metric == "accuracy":
        smallest = int(np.bincount(targets).min())
        if smallest < MIN_TRIALS_PER_CLASS and n <= LEAVE_ONE_OUT_MAX_TRIALS:
            # stratified folds would train on at most one trial of the smallest class (on 2 per direction,
            # one of each: no spread within any class); leaving one trial out keeps all but one class whole
            return [(np.delete(np.arange(n), i), np.array([i])) for i in range(n)]
        folds = max(2, min(folds, smallest))
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), targets))
    return list(KFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(np.zeros(n)))


def select_by_inner_cv(candidates: Sequence, fit_predict: Callable[[object, np.ndarray, np.ndarray], np.ndarray],
                       targets: np.ndarray, metric: str, seed: int = 0):
    """The candidate with the best pooled inner-CV score over ``targets`` (the outer training trials only);
    ``fit_predict(candidate, train_positions, validation_positions)`` returns validation predictions.
    Ties go to the earlier candidate (list the simpler ones first)."""
    splits = inner_splits(targets, metric, seed=seed)
    best, best_score = candidates[0], -np.inf
    for candidate in candidates:
        predictions = np.empty(targets.shape[0], dtype=np.float64)
        for train, validation in splits:
            predictions[validation] = fit_predict(candidate, train, validation)
        candidate_score = score(predictions, targets, metric)
        if candidate_score > best_score + 1e-12:
            best, best_score = candidate, candidate_score
    return best
