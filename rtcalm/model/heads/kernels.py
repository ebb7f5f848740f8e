"""Numba kernels of the heads' per-frame readout (:mod:`rtcalm.model.heads.streaming`): a time-resolved
head's frame into its ring buffer, its window read out, and the softmax both head kinds publish.

One compiled pass for a frame's state update and one for its readout, instead of a chain of a dozen small
torch ops: at these sizes (a few hundred kB of weights) each op's dispatch costs more than its arithmetic,
and at 30 Hz every frame's code runs with cold caches, where the cost grows with the amount of code a
frame touches (rtcalm.daemon.kernels says the same of the normalisation).

Inputs are float32, as the engines give them and as the head's weights are stored; features, the ring
buffer's contributions and the logits are float64, so the readout equals the head's forward in float64
(on the same float32 inputs and weights) to rounding (~1e-15), whatever the summation order, and the
float32 forward to float32 rounding. Plain IEEE arithmetic in a fixed order, except the per-neuron
projection's sum (:func:`_centred_dot`), whose float64 rounding may differ between machines.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, error_model="numpy")


@njit(**_JIT)
def absorb_frame(dff, hidden, projection_mean, projection_t, read_raw, features, weights_t, contributions, slot,
                 window):
    """One frame into a time-resolved head's doubled ring buffer.

    ``features`` (F,) float64 takes the frame's features in :meth:`TimeResolvedHead.frame_features`'s
    layout: when ``read_raw``, ``dff`` (N,) with non-finite values as 0; then, when ``projection_t``
    (k, D), the transposed projection, has k > 0 rows, ``hidden`` (N, D) centred by ``projection_mean``
    (D,) and projected, neuron-major.
    Then every bin's contribution, ``weights_t`` (F, bins * outputs) transposed readout times the
    features, goes to ring rows ``slot`` and ``slot + window`` of ``contributions``
    (2 * window, bins * outputs)."""
    offset = 0
    if read_raw:
        for i in range(dff.shape[0]):
            value = dff[i]
            features[i] = value if np.isfinite(value) else 0.0
        offset = dff.shape[0]
    components = projection_t.shape[0]
    for i in range(hidden.shape[0]):
        for c in range(components):
            features[offset + i * components + c] = _centred_dot(hidden, i, projection_mean, projection_t, c)
    row = contributions[slot]
    _contributions(weights_t, features, row)
    for r in range(row.shape[0]):
        contributions[slot + window, r] = row[r]


# Reassociated: the sum over D runs in vector lanes. Its rounding (float64, ~1e-16) then depends on the
# machine's vector width, as the BLAS product it replaces did; in the strict order the sum is one chain of
# dependent additions, three times slower.
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _centred_dot(hidden, i, mean, projection_t, c):
    """(hidden[i] - mean) . projection_t[c] in float64."""
    total = 0.0
    for d in range(hidden.shape[1]):
        total += (np.float64(hidden[i, d]) - mean[d]) * projection_t[c, d]
    return total


@njit(inline="always", **_JIT)
def _contributions(weights_t, features, row):
    """row = weights_t.T @ features as axpys over the contiguous row (they vectorise without reordering
    any sum; a dot product per output would need fast-math to), four features per pass over the row, each
    element's sum still taken in feature order, so the row is loaded and stored a quarter as often."""
    n_features = weights_t.shape[0]
    stop = n_features - n_features % 4
    row[:] = 0.0
    for j in range(0, stop, 4):
        f0, f1, f2, f3 = features[j], features[j + 1], features[j + 2], features[j + 3]
        for r in range(row.shape[0]):
            row[r] = (((row[r] + weights_t[j, r] * f0) + weights_t[j + 1, r] * f1) + weights_t[j + 2, r] * f2) \
                + weights_t[j + 3, r] * f3
    for j in range(stop, n_features):
        value = features[j]
        for r in range(row.shape[0]):
            row[r] += weights_t[j, r] * value


@njit(inline="always", **_JIT)
def _softmax_argmax(logits, probabilities):
    """``probabilities`` = softmax(``logits``) (shifted by the largest, so exp cannot overflow); returns
    the index of the largest probability (the first, on ties)."""
    best = 0
    for o in range(1, logits.shape[0]):
        if logits[o] > logits[best]:
            best = o
    largest = np.float64(logits[best])
    total = 0.0
    for o in range(logits.shape[0]):
        probabilities[o] = np.exp(np.float64(logits[o]) - largest)
        total += probabilities[o]
    for o in range(logits.shape[0]):
        probabilities[o] /= total
    return best


@njit(**_JIT)
def window_readout(contributions, slot, window, bin_edges, bias, logits, probabilities):
    """A time-resolved head's output from its ring buffer (the newest frame at ``slot``): ``logits``
    (outputs,) = ``bias`` + per bin, the mean over the window's frames in it (frames ``bin_edges[b]`` to
    ``bin_edges[b + 1]``, oldest first) of their contributions to it. With a ``probabilities`` buffer as
    long as ``logits`` (a classification head) also their softmax, and returns its argmax; otherwise
    (pass an empty one) returns 0."""
    n_outputs = logits.shape[0]
    oldest = slot + 1
    for o in range(n_outputs):
        logits[o] = bias[o]
    for b in range(bin_edges.shape[0] - 1):
        first, end = bin_edges[b], bin_edges[b + 1]
        for o in range(n_outputs):
            total = 0.0
            for t in range(oldest + first, oldest + end):
                total += contributions[t, b * n_outputs + o]
            logits[o] += total / (end - first)
    if probabilities.shape[0] == 0:
        return 0
    return _softmax_argmax(logits, probabilities)


@njit(**_JIT)
def ema_absorb(hidden, rate, pool):
    """An EMA head's pool (N, D) float32 takes ``hidden`` (N, D) at ``rate`` (float32), in torch.lerp's
    two-sided form, the one the EMA head was first served with (exact at rate 1)."""
    keep = np.float32(1.0) - rate
    for i in range(pool.shape[0]):
        for d in range(pool.shape[1]):
            if rate < 0.5:
                pool[i, d] = pool[i, d] + rate * (hidden[i, d] - pool[i, d])
            else:
                pool[i, d] = hidden[i, d] - (hidden[i, d] - pool[i, d]) * keep


@njit(**_JIT)
def add_bias_softmax(products, bias, logits, probabilities):
    """An EMA head's outputs from its readout's products (outputs,) float32: ``logits`` (float64) =
    ``products`` + ``bias``, and as :func:`window_readout` their softmax when ``probabilities`` is not
    empty, returning its argmax (else 0)."""
    for o in range(logits.shape[0]):
        logits[o] = np.float64(products[o] + bias[o])
    if probabilities.shape[0] == 0:
        return 0
    return _softmax_argmax(logits, probabilities)
