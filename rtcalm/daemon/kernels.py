"""Numba kernels of the per-frame normalisation (:class:`rtcalm.daemon.session.Scale`).

One compiled pass per frame instead of a dozen numpy calls: at 30 Hz on a busy machine every frame's
code runs with cold caches, and the cost of a cold pass grows with the amount of code it touches
(a dozen ufunc dispatches), not with the arithmetic, which is trivial. Arithmetic is float32 where the
values are float32, so the results do not depend on which machine runs them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rtcalm.stats import _kernels as stats_rows

ROW_COUNT = stats_rows.ROW_COUNT
ROW_MEAN = stats_rows.ROW_MEAN
ROW_M2 = stats_rows.ROW_M2
_JIT = dict(cache=True, error_model="numpy")


@njit(**_JIT)
def scale_from_state(state, warmup, mean_out, std_out, inv_std_out):
    """Per neuron: float32 mean and std (population std, numpy's ddof=0) of the running statistics in
    ``state`` (rtcalm.stats' accumulator rows); std and 1/std are NaN unless the neuron has at least
    ``warmup`` valid values (weight, with forgetting) and a positive variance."""
    for i in range(mean_out.shape[0]):
        count = state[ROW_COUNT, i]
        mean_out[i] = np.float32(state[ROW_MEAN, i])
        std = np.sqrt(state[ROW_M2, i] / count) if count > 0.0 else np.nan
        if count >= warmup and std > 0.0:
            std32 = np.float32(std)
            std_out[i] = std32
            inv_std_out[i] = np.float32(1.0) / std32
        else:
            std_out[i] = np.nan
            inv_std_out[i] = np.nan


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
