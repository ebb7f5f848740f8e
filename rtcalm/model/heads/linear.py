"""The closed-form linear pieces a time-resolved head is fitted with and folded into (:mod:`.fitting`):

- :func:`time_binned`: a trial's per-frame features (frames, F) averaged in ``n_bins`` equal, contiguous
  time bins of the response window (or bins of given lengths) and concatenated, (n_bins * F,);
- :func:`nested_bin_sizes`: bin lengths whose edges nest when the bin count doubles;
- :func:`principal_projection`: the principal axes of the backbone's hidden states;
- :class:`ShrinkageLDA`: linear discriminant analysis with Ledoit-Wolf shrinkage, the same estimate as
  scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")`` (a test checks the
  predictions agree), solved in the dual so that thousands of features cost O(trials² · features)
  instead of O(features³).

They live with the heads, not in :mod:`rtcalm.eval.linear` (decode-eval's estimators and inner
cross-validation, which use them too), because the model does not depend on the evaluation.
"""

from __future__ import annotations

import numpy as np


def time_binned(per_frame: np.ndarray, n_bins: int, sizes=None) -> np.ndarray:
    """(trials, frames, F) -> (trials, n_bins * F): the mean of each of ``n_bins`` contiguous runs of frames,
    bin-major: as equal as possible (``np.array_split``), or of the lengths ``sizes`` (summing to frames)."""
    trials, frames = per_frame.shape[:2]
    if not 1 <= n_bins <= frames:
        raise ValueError(f"n_bins must be between 1 and the {frames} frames of the window, got {n_bins}")
    flat = per_frame.reshape(trials, frames, -1)
    if sizes is None:
        chunks = np.array_split(flat, n_bins, axis=1)
    else:
        if len(sizes) != n_bins or sum(sizes) != frames:
            raise ValueError(f"bin sizes {list(sizes)} must be {n_bins} lengths summing to the {frames} frames")
        chunks = np.split(flat, np.cumsum(sizes)[:-1], axis=1)
    return np.concatenate([chunk.mean(axis=1) for chunk in chunks], axis=1)


def nested_bin_sizes(frames: int, n_bins: int) -> list[int]:
    """Lengths of ``n_bins`` contiguous bins of ``frames``, edge k at round(k * frames / n_bins) (halves up):
    the edges of n bins are among those of 2n bins (edge 2k of 2n is edge k of n), so the average of heads of
    1, 2, 4 and 8 bins has 8 bins, where np.array_split's (60 frames: 8 8 8 8 7 7 7 7 against 15 15 15 15)
    would give 11."""
    if not 1 <= n_bins <= frames:
        raise ValueError(f"n_bins must be between 1 and the {frames} frames of the window, got {n_bins}")
    edges = [(2 * k * frames + n_bins) // (2 * n_bins) for k in range(n_bins + 1)]
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]


def principal_projection(hidden: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, components)): the principal axes of hidden states (..., D) pooled over trials,
    frames and neurons (the backbone's D-space is shared by all neurons), largest first."""
    flat = hidden.reshape(-1, hidden.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    covariance = np.atleast_2d(np.cov(flat - mean, rowvar=False))
    _, vectors = np.linalg.eigh(covariance)
    basis = vectors[:, ::-1][:, :components].copy()  # a fresh array: torch refuses negative strides
    basis *= np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(components)])  # a fixed sign per axis
    return mean, basis


def _ledoit_wolf_shrinkage(centered: np.ndarray) -> tuple[float, float]:
    """(shrinkage, mu) of scikit-learn's ``ledoit_wolf`` for centred samples (n, p), computed through the
    (n, n) Gram matrix instead of the (p, p) covariance."""
    n, p = centered.shape
    if n < 2:
        return 0.0, float(np.sum(centered ** 2) / max(n, 1) / p)
    squared = centered ** 2
    trace = squared.sum() / n  # trace of the empirical covariance
    mu = trace / p
    beta_ = np.sum(squared.sum(axis=1) ** 2)  # sum of <X2.T, X2>
    gram = centered @ centered.T
    delta_ = np.sum(gram ** 2) / n ** 2  # sum of squared <X.T, X> / n^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu ** 2) / p
    beta = min(beta, delta)
    return (0.0 if beta == 0 else float(beta / delta)), float(mu)


MIN_TRIALS_PER_CLASS = 3  # fewer, and a class's own Ledoit-Wolf estimate degenerates (ShrinkageLDA)


def _shrunk_within_class(x: np.ndarray, means: np.ndarray, index: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """(diagonal (p,), u (rows, p)): the within-class covariance diag(diagonal) + u.T @ u as the weighted
    sum over ``groups`` ((row mask, weight) each) of their residuals' Ledoit-Wolf estimate: standardise,
    shrink the correlation matrix towards mu * I, scale back."""
    diagonal = np.zeros(x.shape[1])
    low_rank = []
    for rows, weight in groups:
        centered = x[rows] - means[index[rows]]
        scale = centered.std(axis=0)
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # StandardScaler's rule for constant features
        standardised = centered / scale
        shrinkage, mu = _ledoit_wolf_shrinkage(standardised)
        diagonal += weight * shrinkage * mu * scale ** 2
        low_rank.append(np.sqrt(weight * (1.0 - shrinkage) / centered.shape[0]) * standardised * scale)
    return diagonal, np.concatenate(low_rank)


class ShrinkageLDA:
    """Ledoit-Wolf shrinkage LDA: scikit-learn's ``solver="lsqr", shrinkage="auto"`` estimate.

    Per class: standardise that class's centred trials, shrink their correlation matrix towards mu * I
    with the Ledoit-Wolf weight, scale back; the within-class covariance is the prior-weighted sum of
    these. It is a diagonal plus a rank-(trials) matrix, so (Woodbury) the discriminant weights
    covariance⁻¹ · means need only a (trials, trials) solve.

    With fewer than ``MIN_TRIALS_PER_CLASS`` trials in some class that estimate degenerates: on two
    standardised trials (+x and -x) the Ledoit-Wolf weight is exactly 0, on one it is undefined, and with
    every class like that the covariance has no diagonal part and the weights overflow to NaN (scikit-learn's
    too). Then, and whenever the per-class estimate has no diagonal part, the shrinkage is estimated once,
    on all classes' residuals pooled, which small calibration sets and the inner folds of a small one still
    support; with no spread within any class at all (one trial each, or identical trials) the covariance is
    the identity, and the rule is the nearest class mean."""

    def fit(self, features: np.ndarray, targets: np.ndarray) -> ShrinkageLDA:
        x = np.asarray(features, dtype=np.float64)
        self.classes_, index = np.unique(targets, return_inverse=True)
        n, p = x.shape
        counts = np.bincount(index)
        priors = counts / n
        means = np.stack([x[index == g].mean(axis=0) for g in range(len(counts))])
        diagonal, u = None, None
        if counts.min() >= MIN_TRIALS_PER_CLASS:
            diagonal, u = _shrunk_within_class(x, means, index, [(index == g, priors[g]) for g in range(len(counts))])
        if diagonal is None or not diagonal.max() > 0:  # pooled residuals
            diagonal, u = _shrunk_within_class(x, means, index, [(np.ones(n, dtype=bool), 1.0)])
        if not diagonal.max() > 0:  # no spread within any class: the identity, a nearest-class-mean rule
            diagonal, u = np.ones(p), np.zeros((0, p))
        diagonal = np.maximum(diagonal, 1e-12 * diagonal.max())  # covariance = diag(diagonal) + u.T @ u
        scaled_means = means.T / diagonal[:, None]  # (p, classes)
        scaled_u = u / diagonal[None, :]
        inner = np.eye(u.shape[0]) + scaled_u @ u.T
        weights = scaled_means - scaled_u.T @ np.linalg.solve(inner, u @ scaled_means)  # covariance^-1 means
        self.coef_ = weights.T
        self.intercept_ = -0.5 * np.sum(means * self.coef_, axis=1) + np.log(priors)
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(features), axis=1)]
