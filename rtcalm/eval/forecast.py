"""Forecast evaluation: the protocol behind ``rtcalm forecast-eval`` (keep it stable).

For a contiguous recording of T frames the targets are the frames ``t + h`` for every ``t`` in the last
``test_fraction`` (30 %) of the recording (``t >= floor(0.7 T)`` and ``t + h < T``); the forecast for
``t + h`` may use only the ``context_frames`` frames up to and including ``t``.

Normalisation: every forecaster sees per-neuron z-scored ΔF/F, with the mean and standard deviation of
the frames *before* the test segment (all in the past of every target, so nothing leaks); forecasts are
mapped back to ΔF/F before scoring.

Metrics, per horizon h:

- ``mse_ratio``: MSE of the forecast / MSE of the copy-last forecast x(t) on the same targets and
  neurons, computed per file, then averaged over files;
- ``pearson``: per-neuron Pearson correlation over time between forecast and target, averaged over
  neurons (with non-constant forecast and target) and then over files.

A forecaster is any callable ``(z (T, N) float32, test_times (K,) int64, context_frames) -> (K, N, H)``
returning z-scored forecasts of frames ``t+1 .. t+H``; it must only look at ``z[t-context+1 : t+1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rtcalm.data.recording import Recording
from rtcalm.errors import RtcalmError

TEST_FRACTION = 0.3
Forecaster = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


class EvaluationError(RtcalmError, ValueError):
    pass


# --- baselines ---------------------------------------------------------------------------------------

def copy_last(z: np.ndarray, test_times: np.ndarray, context_frames: int, horizon: int) -> np.ndarray:
    return np.repeat(z[test_times][:, :, None], horizon, axis=2)


def context_mean(z: np.ndarray, test_times: np.ndarray, context_frames: int, horizon: int) -> np.ndarray:
    cumsum = np.concatenate([np.zeros((1, z.shape[1])), np.cumsum(z, axis=0, dtype=np.float64)])
    start = np.maximum(test_times - context_frames + 1, 0)
    means = (cumsum[test_times + 1] - cumsum[start]) / (test_times + 1 - start)[:, None]
    return np.repeat(means[:, :, None].astype(np.float32), horizon, axis=2)


@dataclass
class PooledAR:
    """One ridge AR model shared by all neurons, fitted directly for every horizon:
    ``x(t+h) ≈ coef[h-1] · [x(t), x(t-1), ..., x(t-order+1), 1]`` on z-scored traces."""

    coef: np.ndarray  # (horizon, order + 1)

    @property
    def order(self) -> int:
        return self.coef.shape[1] - 1

    @property
    def horizon(self) -> int:
        return self.coef.shape[0]

    def __call__(self, z: np.ndarray, test_times: np.ndarray, context_frames: int) -> np.ndarray:
        lags = _lag_matrix(z, test_times, self.order, context_frames)  # (K, N, order+1)
        return np.einsum("knl,hl->knh", lags, self.coef).astype(np.float32)

    def to_dict(self) -> dict:
        return {"order": self.order, "horizon": self.horizon, "coef": self.coef.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> PooledAR:
        coef = np.asarray(d["coef"], dtype=np.float64)
        if coef.ndim != 2 or coef.shape != (int(d["horizon"]), int(d["order"]) + 1) or not np.isfinite(coef).all():
            raise ValueError("pooled AR coefficients have the wrong shape or non-finite values")
        return cls(coef)


def _lag_matrix(z: np.ndarray, times: np.ndarray, order: int, context_frames: int) -> np.ndarray:
    """``[z(t), z(t-1), ..., z(t-order+1), 1]`` per (time, neuron); lags outside the context (or before
    the recording) are replaced by the oldest value that is inside, i.e. edge padding."""
    lag_offsets = np.arange(order)
    oldest = np.maximum(times - min(order, context_frames) + 1, 0)
    index = np.maximum(times[:, None] - lag_offsets[None, :], oldest[:, None])  # (K, order)
    lags = z[index]  # (K, order, N)
    ones = np.ones((len(times), 1, z.shape[1]), dtype=z.dtype)
    return np.concatenate([lags, ones], axis=1).transpose(0, 2, 1)  # (K, N, order+1)


def fit_pooled_ar(traces: Sequence[np.ndarray], order: int = 16, horizon: int = 30, ridge: float = 1.0,
                  max_samples: int = 2_000_000, seed: int = 0) -> PooledAR:
    """Fit on z-scored contiguous traces, each ``(frames, neurons)``. Samples never cross a trace end."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for trace in traces:
        z = zscore(trace, trace)
        times = np.arange(order - 1, z.shape[0] - horizon)
        if times.size == 0:
            continue
        lags = _lag_matrix(z, times, order, order).reshape(-1, order + 1)
        targets = np.stack([z[times + h] for h in range(1, horizon + 1)], axis=-1).reshape(-1, horizon)
        xs.append(lags)
        ys.append(targets)
    if not xs:
        raise EvaluationError(f"no trace is longer than order + horizon = {order + horizon} frames")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.shape[0] > max_samples:
        keep = rng.choice(x.shape[0], max_samples, replace=False)
        x, y = x[keep], y[keep]
    x, y = x.astype(np.float64), y.astype(np.float64)
    penalty = ridge * np.eye(order + 1)
    penalty[-1, -1] = 0.0  # do not shrink the intercept
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ y).T  # (horizon, order+1)
    return PooledAR(coef)


# --- protocol ----------------------------------------------------------------------------------------

def zscore(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mean = reference.mean(axis=0, dtype=np.float64)
    std = reference.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    return ((values - mean) / std).astype(np.float32)


def first_test_frame(n_frames: int) -> int:
    """First test frame t0: targets are t+h for t >= t0."""
    return int(np.floor((1.0 - TEST_FRACTION) * n_frames))


def _pearson_per_neuron(forecast: np.ndarray, target: np.ndarray) -> np.ndarray:
    f = forecast - forecast.mean(axis=0)
    g = target - target.mean(axis=0)
    denom = np.sqrt((f * f).sum(axis=0) * (g * g).sum(axis=0))
    valid = denom > 1e-12
    return (f * g).sum(axis=0)[valid] / denom[valid]


def evaluate_recording(recording: Recording, forecasters: dict[str, Forecaster], horizons: Sequence[int],
                       context_frames: int) -> dict:
    """Scores of every forecaster on one recording: ``{name: {h: {"mse_ratio", "pearson"}}}``."""
    if recording.is_trial_structured:
        raise EvaluationError(f"{recording.meta.source}: trial-structured recordings (separate epochs) are not "
                              "supported by forecast-eval; it needs a contiguous recording")
    dff = recording.dff
    n_frames = dff.shape[0]
    max_h = max(horizons)
    t0 = first_test_frame(n_frames)
    test_times = np.arange(t0, n_frames - max_h, dtype=np.int64)
    if test_times.size < 2:
        raise EvaluationError(f"{recording.meta.source}: {n_frames} frames leave no test targets at horizon {max_h}")
    reference = dff[:t0]
    mean = reference.mean(axis=0, dtype=np.float64)
    std = np.where(reference.std(axis=0, dtype=np.float64) > 1e-8, reference.std(axis=0, dtype=np.float64), 1.0)
    z = zscore(dff, reference)
    last = dff[test_times]  # copy-last forecast in ΔF/F
    scores: dict[str, dict] = {}
    for name, forecaster in forecasters.items():
        z_forecast = forecaster(z, test_times, context_frames)
        if z_forecast.shape[:2] != (test_times.size, dff.shape[1]) or z_forecast.shape[2] < max_h:
            raise AssertionError(f"forecaster {name} returned shape {z_forecast.shape}")
        scores[name] = {}
        for h in horizons:
            target = dff[test_times + h]
            forecast = z_forecast[:, :, h - 1] * std + mean
            mse = float(np.mean((forecast - target) ** 2, dtype=np.float64))
            mse_copy = float(np.mean((last - target) ** 2, dtype=np.float64))
            pearson = _pearson_per_neuron(forecast, target)
            scores[name][h] = {"mse_ratio": mse / mse_copy if mse_copy > 0 else float("nan"),
                               "pearson": float(pearson.mean()) if pearson.size else float("nan")}
    return scores


def evaluate(recordings: Sequence[Recording], forecasters: dict[str, Forecaster], horizons: Sequence[int],
             context_frames: int) -> dict:
    """The ``--json`` document of ``rtcalm forecast-eval``: per-horizon means over files."""
    horizons = sorted(set(int(h) for h in horizons))
    if not horizons or horizons[0] < 1:
        raise EvaluationError("horizons must be positive integers")
    if context_frames < 1:
        raise EvaluationError("--context must be at least 1 frame")
    per_file = [evaluate_recording(rec, forecasters, horizons, context_frames) for rec in recordings]

    def mean_over_files(name: str) -> dict:
        return {str(h): {metric: float(np.nanmean([scores[name][h][metric] for scores in per_file]))
                         for metric in ("mse_ratio", "pearson")} for h in horizons}

    model_names = [n for n in forecasters if n not in BASELINE_NAMES]
    return {
        "horizons": horizons,
        "context": context_frames,
        "files": [rec.meta.source for rec in recordings],
        **({"model": mean_over_files(model_names[0])} if model_names else {}),
        "baselines": {name: mean_over_files(name) for name in forecasters if name in BASELINE_NAMES},
        "per_file": [{"file": rec.meta.source,
                      **{name: {str(h): s for h, s in scores[name].items()} for name in scores}}
                     for rec, scores in zip(recordings, per_file, strict=True)],
    }


BASELINE_NAMES = ("copy_last", "context_mean", "pooled_ar", "mlp", "poco")


def baseline_forecasters(pooled_ar: PooledAR | None, horizon: int) -> dict[str, Forecaster]:
    out: dict[str, Forecaster] = {
        "copy_last": lambda z, t, c: copy_last(z, t, c, horizon),
        "context_mean": lambda z, t, c: context_mean(z, t, c, horizon),
    }
    if pooled_ar is not None:
        if pooled_ar.horizon < horizon:
            raise EvaluationError(f"the pooled AR baseline covers {pooled_ar.horizon} frames, {horizon} requested")
        out["pooled_ar"] = pooled_ar
    return out


def model_forecaster(model, chunk_frames: int = 512) -> Forecaster:
    """Wrap a CalM model (``model.forward(frames (B, T, N)) -> .forecast (B, T, N, H)``) as a forecaster.

    The model's output at frame t depends only on its receptive field. When ``context_frames`` covers it,
    one forward pass over consecutive frames gives exactly the per-t forecasts, so the recording is
    processed in chunks that start ``context_frames - 1`` frames before their first test time. With a
    shorter context every test time gets its own window of exactly ``context_frames`` frames.
    """
    import torch

    receptive_field = model.config.receptive_field_frames

    def forecast(z: np.ndarray, test_times: np.ndarray, context_frames: int) -> np.ndarray:
        model.eval()
        frames = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
        outputs = []
        with torch.inference_mode():
            if context_frames >= receptive_field:
                for lo in range(0, test_times.size, chunk_frames):
                    times = test_times[lo:lo + chunk_frames]
                    start = max(int(times[0]) - context_frames + 1, 0)
                    out = model(frames[start:int(times[-1]) + 1].unsqueeze(0)).forecast[0]  # (T', N, H)
                    outputs.append(out[torch.from_numpy(times - start)].numpy())
            else:
                batch = max(1, chunk_frames // max(context_frames, 1))
                # frames that only the raw windows reach (no attention path to the last position): the
                # output at the last position is the same without running the transformer on them
                cfg = model.config
                window_only = max(0, context_frames - 1 - cfg.n_layers * (cfg.attention_window_frames - 1))
                for lo in range(0, test_times.size, batch):
                    times = test_times[lo:lo + batch]
                    windows = torch.stack([_left_pad(frames[max(int(t) - context_frames + 1, 0):int(t) + 1],
                                                     context_frames) for t in times])
                    outputs.append(model(windows, window_only_frames=window_only).forecast[:, -1].numpy())
        return np.concatenate(outputs).astype(np.float32)

    return forecast


def _left_pad(window, length: int):
    """Pad a window that would reach before the recording start with NaN (missing data)."""
    import torch

    if window.shape[0] == length:
        return window
    pad = torch.full((length - window.shape[0], window.shape[1]), float("nan"))
    return torch.cat([pad, window])
