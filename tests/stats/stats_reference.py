"""Offline (whole-array, numpy/scipy) versions of the definitions in rtcalm.stats, written independently
of the streaming code, for the tests to compare against."""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.stats


def reference_stats(epochs: list[np.ndarray], time_constant_frames: float | None = None) -> dict[str, np.ndarray]:
    """Per-neuron statistics of ``epochs`` (each (frames, neurons); NaN = missing), computed in float64
    from all values at once. With a time constant, a frame k frames before the last one weighs
    exp(-k / tau) and a lag-1 pair weighs what its later frame weighs."""
    x = np.concatenate([np.asarray(e, dtype=np.float64) for e in epochs])
    n_frames, n_neurons = x.shape
    decay = 1.0 if time_constant_frames is None else math.exp(-1.0 / time_constant_frames)
    frame_weight = decay ** (n_frames - 1 - np.arange(n_frames, dtype=np.float64))
    valid = ~np.isnan(x)
    w = np.where(valid, frame_weight[:, None], 0.0)
    values = np.where(valid, x, 0.0)
    count = w.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean = (w * values).sum(axis=0) / count
        dev = np.where(valid, values - mean, 0.0)
        m2, m3, m4 = ((w * dev**p).sum(axis=0) / count for p in (2, 3, 4))
        m2 = np.where(count > 0, m2, np.nan)

        # lag-1 pairs inside each epoch, weighted by the later frame
        pair_sum = np.zeros(n_neurons)
        pair_weight = np.zeros(n_neurons)
        sq_diff = np.zeros(n_neurons)
        start = 0
        for epoch in epochs:
            length = epoch.shape[0]
            a = x[start:start + length - 1]
            b = x[start + 1:start + length]
            both = ~np.isnan(a) & ~np.isnan(b)
            wb = np.where(both, frame_weight[start + 1:start + length, None], 0.0)
            pair_sum += (wb * np.where(both, (a - mean) * (b - mean), 0.0)).sum(axis=0)
            sq_diff += (wb * np.where(both, (b - a) ** 2, 0.0)).sum(axis=0)
            pair_weight += wb.sum(axis=0)
            start += length
        flat = ~(m2 > (np.finfo(np.float64).eps * mean) ** 2)
        lag1 = np.where(flat | (pair_weight == 0), np.nan, pair_sum / (m2 * count))
        noise = sq_diff / (2 * pair_weight)
        snr = np.where((pair_weight > 0) & (noise > 0), np.sqrt(np.maximum(m2 - noise, 0) / noise), np.nan)
        skewness = np.where(flat, np.nan, m3 / m2**1.5)
        kurtosis = np.where(flat, np.nan, m4 / m2**2 - 3)
    return {"count": count, "mean": np.where(count > 0, mean, np.nan), "std": np.sqrt(m2),
            "skewness": skewness, "kurtosis": kurtosis, "lag1_autocorr": lag1, "snr": snr}


def scipy_moments(x: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, skewness and excess kurtosis over axis 0 with scipy (float64, NaN omitted)."""
    x = np.asarray(x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns about constant traces (-> NaN)
        return {"mean": np.nanmean(x, axis=0), "std": np.nanstd(x, axis=0),
                "skewness": scipy.stats.skew(x, axis=0, bias=True, nan_policy="omit"),
                "kurtosis": scipy.stats.kurtosis(x, axis=0, fisher=True, bias=True, nan_policy="omit")}


def reference_dff(f: np.ndarray, fneu: np.ndarray | None, *, neuropil_coef: float, block_frames: int,
                  window_frames: int, percentile: float, min_baseline: float) -> np.ndarray:
    """The ΔF/F definition of rtcalm.stats.dff, one neuron at a time with np.percentile."""
    f = np.asarray(f, dtype=np.float64)
    corrected = f if fneu is None else f - neuropil_coef * np.asarray(fneu, dtype=np.float64)
    n_frames, n_neurons = corrected.shape
    window_blocks = window_frames // block_frames
    out = np.full((n_frames, n_neurons), np.nan)
    for i in range(n_neurons):
        first_end = block_frames + i % block_frames  # frames in neuron i's first block
        ends = list(range(first_end, n_frames + 1, block_frames))  # exclusive end of each block
        starts = [0] + ends[:-1]
        block_means, block_ends = [], []
        for s, e in zip(starts, ends, strict=True):
            values = corrected[s:e, i]
            values = values[~np.isnan(values)]
            if values.size:
                block_means.append(values.mean())
                block_ends.append(e)
        for t in range(n_frames):
            done = [m for m, e in zip(block_means, block_ends, strict=True) if e <= t]  # ended before t
            if not done:
                continue
            f0 = np.percentile(done[-window_blocks:], percentile)
            if f0 > min_baseline and not np.isnan(corrected[t, i]):
                out[t, i] = (corrected[t, i] - f0) / f0
    return out
