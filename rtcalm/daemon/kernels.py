"""Numba kernels of the per-frame normalisation (:class:`rtcalm.daemon.session.Scale`) and of the frame
check (:mod:`rtcalm.daemon.wire`); the scale itself comes from :meth:`StreamingStats.scale_into`.

One compiled pass per frame instead of a dozen numpy calls: at 30 Hz on a busy machine every frame's
code runs with cold caches, and the cost of a cold pass grows with the amount of code it touches
(a dozen ufunc dispatches), not with the arithmetic, which is trivial. Arithmetic is float32 where the
values are float32, so the results do not depend on which machine runs them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, error_model="numpy")


@njit(**_JIT)
def normalise(frame, mean, inv_std, out):
    """``out = (frame - mean) * inv_std`` in float32; NaN where the value or the scale is missing."""
    for i in range(out.shape[0]):
        out[i] = (np.float32(frame[i]) - mean[i]) * inv_std[i]


@njit(**_JIT)
def denormalise(forecast, mean, std, out):
    """``out[i, k] = forecast[i, k] * std[i] + mean[i]`` for a (neurons, horizon) forecast."""
    for i in range(forecast.shape[0]):
        s = std[i]
        m = mean[i]
        for k in range(forecast.shape[1]):
            out[i, k] = forecast[i, k] * s + m


@njit(**_JIT)
def count_outside(values, bound):
    """How many values are ±Inf or finite with |value| > ``bound`` (NaN, meaning missing, never counts):
    the frame check's accept test in one pass, where numpy needs two reductions and a dispatch each."""
    outside = 0
    for i in range(values.shape[0]):
        magnitude = abs(values[i])
        if magnitude == magnitude and not (magnitude < np.inf and magnitude <= bound):
            outside += 1
    return outside
