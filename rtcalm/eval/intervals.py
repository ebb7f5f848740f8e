"""Forecast intervals scored offline: ``rtcalm forecast-eval --intervals 0.8,0.95``.

The online method is :class:`rtcalm.stats.intervals.OnlineIntervals`, driven here exactly as the daemon
drives it: one :meth:`~OnlineIntervals.update` per frame of the whole recording, in stream order, from
its first frame, then the bands it issues for that frame's forecast. The bands are fixed when issued and
scored against the truth when it comes; nothing is refitted with hindsight.

Units and normalisation are :mod:`rtcalm.eval.forecast`'s: z-scored ΔF/F with the mean and standard
deviation of the frames before the test segment, the model's forecasts for every frame in those units.

Scores, per level and horizon h, over the forecasts made at frames ``t >= BURN_IN_FRAMES`` whose target
``t + h`` is in the recording (the first frames calibrate the bands):

- ``coverage``: the fraction of (neuron, t) whose truth lies inside the issued band;
- ``interval_score``: the mean interval (Winkler) score, in ΔF/F (fractional), the units forecast-eval
  scores its MSE in (its square): ``(u - l) + 2/a (l - y)+ + 2/a (y - u)+`` with ``a = 1 - level``. It
  rewards narrow bands and charges misses by how far they miss; lower is better;
- ``copy_last_interval_score``: the same for copy-last with the same online method, and
  ``interval_score_ratio`` the ratio of the two.

Each is computed per file and then averaged over files, as forecast-eval's ``mse_ratio`` is. A target
without a band (its neuron has had fewer than ``min_errors`` scored errors) counts in neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtcalm.data.recording import Recording
from rtcalm.eval.forecast import EvaluationError, Forecaster, copy_last, first_test_frame, zscore
from rtcalm.stats.intervals import OnlineIntervals

BURN_IN_FRAMES = 300


def interval_scores(z: np.ndarray, forecast_z: np.ndarray, std: np.ndarray, levels: Sequence[float],
                    horizons: Sequence[int], burn_in: int = BURN_IN_FRAMES, **interval_options) -> dict:
    """Run :class:`OnlineIntervals` over one recording and score the bands it issues.

    ``z`` (T, N) float32: the recording in z units (NaN = missing); ``forecast_z`` (T, N, H) float32: the
    forecast made at every frame t of frames t+1..t+H; ``std`` (N,): ΔF/F per z unit of each neuron.
    Returns ``{level: {h: {"covered", "scored", "interval_score_sum"}}}`` (sums, to pool or divide).
    """
    n_frames, n_neurons, horizon = forecast_z.shape
    if z.shape != (n_frames, n_neurons) or max(horizons) > horizon:
        raise EvaluationError(f"forecasts {forecast_z.shape} do not match frames {z.shape} and horizons {horizons}")
    intervals = OnlineIntervals(n_neurons, horizon, levels, **interval_options)
    lower = np.empty((n_neurons, horizon), np.float32)
    upper = np.empty((n_neurons, horizon), np.float32)
    std = np.asarray(std, dtype=np.float64)
    sums = {level: {h: {"covered": 0, "scored": 0, "interval_score_sum": 0.0} for h in horizons} for level in levels}
    for t in range(n_frames):
        forecast = np.ascontiguousarray(forecast_z[t], dtype=np.float32)
        intervals.update(z[t], forecast)
        if t < burn_in:
            continue
        for level in levels:
            intervals.bounds_into(forecast, level, lower, upper)
            alpha = 1.0 - level
            for h in horizons:
                if t + h >= n_frames:
                    continue
                truth = z[t + h].astype(np.float64)
                lo, hi = lower[:, h - 1].astype(np.float64), upper[:, h - 1].astype(np.float64)
                ok = np.isfinite(truth) & np.isfinite(lo) & np.isfinite(hi)
                truth, lo, hi, scale = truth[ok], lo[ok], hi[ok], std[ok]
                below, above = np.maximum(lo - truth, 0.0), np.maximum(truth - hi, 0.0)
                score_z = (hi - lo) + (2.0 / alpha) * (below + above)
                cell = sums[level][h]
                cell["covered"] += int(np.count_nonzero((below == 0.0) & (above == 0.0)))
                cell["scored"] += int(ok.sum())
                cell["interval_score_sum"] += float(np.sum(score_z * scale))
    return sums


def all_frame_forecasts(forecaster: Forecaster, z: np.ndarray, context_frames: int, horizon: int) -> np.ndarray:
    """The forecast made at every frame of the recording, (T, N, horizon), as the stream would see them."""
    times = np.arange(z.shape[0], dtype=np.int64)
    forecast = forecaster(z, times, context_frames)
    if forecast.shape[:2] != z.shape or forecast.shape[2] < horizon:
        raise AssertionError(f"forecaster returned shape {forecast.shape} for {z.shape} and horizon {horizon}")
    return np.ascontiguousarray(forecast[:, :, :horizon], dtype=np.float32)


def evaluate_recording_intervals(recording: Recording, model: Forecaster, levels: Sequence[float],
                                 horizons: Sequence[int], context_frames: int, burn_in: int = BURN_IN_FRAMES) -> dict:
    """``{"model": sums, "copy_last": sums}`` for one contiguous recording (sums as :func:`interval_scores`)."""
    dff = recording.dff
    n_frames = dff.shape[0]
    if n_frames <= burn_in + max(horizons):
        raise EvaluationError(f"{recording.meta.source}: {n_frames} frames leave nothing to score after "
                              f"{burn_in} burn-in frames at horizon {max(horizons)}")
    reference = dff[:first_test_frame(n_frames)]
    std = reference.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)  # as zscore does
    z = zscore(dff, reference)
    horizon = max(horizons)
    forecasts = {"model": all_frame_forecasts(model, z, context_frames, horizon),
                 "copy_last": copy_last(z, np.arange(n_frames), context_frames, horizon)}
    return {name: interval_scores(z, forecast, std, levels, horizons, burn_in) for name, forecast in forecasts.items()}


def evaluate_intervals(recordings: Sequence[Recording], model: Forecaster, levels: Sequence[float],
                       horizons: Sequence[int], context_frames: int, burn_in: int = BURN_IN_FRAMES) -> dict:
    """The ``"intervals"`` entry of forecast-eval's JSON: per level (key ``str(level)``), the coverage and
    interval scores over all horizons, ``per_horizon`` the same per horizon, each a mean over files of
    the per-file value; ``per_file`` the per-file values."""
    horizons = sorted(set(int(h) for h in horizons))
    per_file = [evaluate_recording_intervals(rec, model, levels, horizons, context_frames, burn_in)
                for rec in recordings]
    out: dict = {"levels": list(levels), "burn_in_frames": burn_in,
                 "method": "OnlineIntervals (rtcalm.stats.intervals), default settings"}
    file_cells = [{level: {"all": _cell(sums, level, horizons),
                           **{str(h): _cell(sums, level, [h]) for h in horizons}} for level in levels}
                  for sums in per_file]
    for level in levels:
        keys = ["all", *map(str, horizons)]
        means = {key: {metric: float(np.nanmean([cells[level][key][metric] for cells in file_cells]))
                       for metric in _METRICS} for key in keys}
        out[str(level)] = {**means["all"], "per_horizon": {key: means[key] for key in keys[1:]}}
    out["per_file"] = [{"file": rec.meta.source, **{str(level): cells[level] for level in levels}}
                       for rec, cells in zip(recordings, file_cells, strict=True)]
    return out


_METRICS = ("coverage", "interval_score", "copy_last_coverage", "copy_last_interval_score", "interval_score_ratio")


def _cell(sums: dict, level: float, horizons: Sequence[int]) -> dict:
    def pooled(name: str) -> tuple[float, float]:
        cells = [sums[name][level][h] for h in horizons]
        scored = sum(c["scored"] for c in cells)
        if scored == 0:
            return float("nan"), float("nan")
        return sum(c["covered"] for c in cells) / scored, sum(c["interval_score_sum"] for c in cells) / scored

    coverage, score = pooled("model")
    copy_coverage, copy_score = pooled("copy_last")
    return {"coverage": coverage, "interval_score": score, "copy_last_coverage": copy_coverage,
            "copy_last_interval_score": copy_score,
            "interval_score_ratio": score / copy_score if copy_score > 0 else float("nan")}
