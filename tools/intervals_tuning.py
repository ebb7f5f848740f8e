"""How the settings of the online forecast intervals were chosen (docs/intervals.md): on the validation
mouse and the training mice only, never on the test mice.

The model's forecasts for every frame of each FILE are computed once (``--cache``), then the same
offline scoring as ``rtcalm forecast-eval --intervals`` (:func:`rtcalm.eval.intervals.interval_scores`)
runs for every combination of ``--learning-rates`` and ``--scale-time-constants``, and, with
``--per-neuron``, once more with one multiplier per neuron (one ``OnlineIntervals`` per neuron) at the
default learning rate and time constant. Coverage and interval scores are pooled over files here (the
choice needs one number per setting, not a per-file mean). ``--neuron-spread`` prints how coverage
spreads over neurons with the default settings (the bands are calibrated over the population, so single
neurons are covered more or less than the level).

    python tools/intervals_tuning.py --cache runs/intervals-cache --per-neuron --neuron-spread \\
        --result docs/results/intervals_tuning.json FILE...

With ``--result``, everything it prints is also stored (with the command, commit and machine) for
``python docs/render.py``, which renders the tables of docs/intervals.md from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from rtcalm.data import load_recording
from rtcalm.data.resample import resample_recording
from rtcalm.eval.forecast import copy_last, first_test_frame, model_forecaster, zscore
from rtcalm.eval.intervals import all_frame_forecasts, interval_scores
from rtcalm.eval.report import provenance
from rtcalm.model.checkpoint import load_model, resolve_model
from rtcalm.stats.intervals import LEARNING_RATE, SCALE_TIME_CONSTANT_FRAMES, OnlineIntervals

LEVELS = (0.8, 0.95)
HORIZONS = (1, 5, 15, 30)


def cached_forecasts(path: Path, cache: Path, model, horizon: int) -> dict:
    key = cache / (path.parent.parent.name + "_" + path.parent.name + ".npz")
    if key.exists():
        with np.load(key) as stored:
            return dict(stored)
    recording = resample_recording(load_recording(path), model.config.rate_hz)
    dff = recording.dff
    reference = dff[:first_test_frame(dff.shape[0])]
    std = reference.std(axis=0, dtype=np.float64)
    z = zscore(dff, reference)
    forecast = all_frame_forecasts(model_forecaster(model), z, model.config.receptive_field_frames, horizon)
    data = {"z": z, "model": forecast, "std": np.where(std > 1e-8, std, 1.0)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(key, **data)
    return data


def pooled(sums_per_file: list[dict]) -> dict:
    out = {}
    for level in LEVELS:
        for h in HORIZONS:
            cells = [sums[level][h] for sums in sums_per_file]
            scored = sum(c["scored"] for c in cells)
            out[level, h] = (sum(c["covered"] for c in cells) / scored,
                             sum(c["interval_score_sum"] for c in cells) / scored)
    return out


def per_neuron_scores(data: dict, forecast: np.ndarray, **options) -> dict:
    """One OnlineIntervals per neuron: a multiplier per neuron and horizon instead of one shared one."""
    total = None
    for n in range(data["z"].shape[1]):
        sums = interval_scores(np.ascontiguousarray(data["z"][:, [n]]), np.ascontiguousarray(forecast[:, [n]]),
                               data["std"][[n]], LEVELS, HORIZONS, **options)
        if total is None:
            total = sums
        else:
            for level, h in itertools.product(LEVELS, HORIZONS):
                for metric in total[level][h]:
                    total[level][h][metric] += sums[level][h][metric]
    return total


def neuron_coverage(z: np.ndarray, forecast: np.ndarray, burn_in: int = 300) -> tuple[dict, float]:
    """Per-neuron coverage of the bands issued after burn-in, per (level, h), default settings; and the
    smallest ratio of the last level's multiplier to the first's at any frame and horizon (below 1 the
    bands of the two levels would cross)."""
    n_frames, n_neurons, horizon = forecast.shape
    intervals = OnlineIntervals(n_neurons, horizon, LEVELS)
    lower, upper = np.empty((n_neurons, horizon), np.float32), np.empty((n_neurons, horizon), np.float32)
    hits = {(level, h): np.zeros(n_neurons) for level in LEVELS for h in HORIZONS}
    counts = {key: np.zeros(n_neurons) for key in hits}
    smallest_ratio = np.inf
    for t in range(n_frames):
        intervals.update(z[t], forecast[t])
        multipliers = intervals.multipliers
        smallest_ratio = min(smallest_ratio, float((multipliers[-1] / multipliers[0]).min()))
        if t < burn_in:
            continue
        for level in LEVELS:
            intervals.bounds_into(forecast[t], level, lower, upper)
            for h in HORIZONS:
                if t + h < n_frames:
                    y = z[t + h]
                    ok = np.isfinite(y) & np.isfinite(lower[:, h - 1])
                    hits[level, h] += ok & (y >= lower[:, h - 1]) & (y <= upper[:, h - 1])
                    counts[level, h] += ok
    return {key: hits[key] / counts[key] for key in hits}, smallest_ratio


def report(name: str, model: dict, copy: dict) -> dict:
    """Print one setting's row; return it as stored: ``{level: {h: {"coverage", "score_ratio"}}}``."""
    cells, row = [], {}
    for level in LEVELS:
        for h in HORIZONS:
            coverage, score = model[level, h]
            cells.append(f"{coverage:.3f} {score / copy[level, h][1]:.3f}")
            row.setdefault(str(level), {})[str(h)] = {"coverage": coverage, "score_ratio": score / copy[level, h][1]}
    print(f"{name:>28s}  " + "  ".join(cells), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--scale-time-constants", type=float, nargs="+", default=[100.0, 300.0, 600.0, 1000.0])
    parser.add_argument("--per-neuron", action="store_true")
    parser.add_argument("--neuron-spread", action="store_true")
    parser.add_argument("--result", type=Path, help="also store the results here as JSON (docs/render.py)")
    args = parser.parse_args()
    stored = {"levels": list(LEVELS), "horizons": list(HORIZONS), "model": args.model,
              "files": [str(path) for path in args.files], "settings": []}
    model = load_model(resolve_model(args.model))
    data = [cached_forecasts(path, args.cache, model, max(HORIZONS)) for path in args.files]
    copies = [copy_last(d["z"], np.arange(d["z"].shape[0]), 1, max(HORIZONS)) for d in data]
    print("cells per level (0.8 then 0.95) and horizon (1, 5, 15, 30): coverage, interval score / copy-last's")
    for lr, tau in itertools.product(args.learning_rates, args.scale_time_constants):
        options = {"learning_rate": lr, "scale_time_constant_frames": tau}
        model_sums = [interval_scores(d["z"], d["model"], d["std"], LEVELS, HORIZONS, **options) for d in data]
        copy_sums = [interval_scores(d["z"], c, d["std"], LEVELS, HORIZONS, **options) for d, c in zip(data, copies, strict=True)]
        row = report(f"lr {lr:g} tau {tau:g}", pooled(model_sums), pooled(copy_sums))
        stored["settings"].append({"learning_rate": lr, "scale_time_constant_frames": tau, "cells": row})
    if args.per_neuron:
        options = {"learning_rate": LEARNING_RATE, "scale_time_constant_frames": SCALE_TIME_CONSTANT_FRAMES}
        model_sums = [per_neuron_scores(d, d["model"], **options) for d in data]
        copy_sums = [per_neuron_scores(d, c, **options) for d, c in zip(data, copies, strict=True)]
        row = report(f"per neuron lr {options['learning_rate']:g} tau {options['scale_time_constant_frames']:g}",
                     pooled(model_sums), pooled(copy_sums))
        stored["per_neuron"] = {**options, "cells": row}
    if args.neuron_spread:
        per_file, ratios = zip(*[neuron_coverage(d["z"], d["model"]) for d in data], strict=True)
        print(f"smallest multiplier ratio {LEVELS[-1]} / {LEVELS[0]} at any frame and horizon: {min(ratios):.3f}")
        print("per-neuron coverage of the model's bands (default settings), percentiles 5 / 25 / 50 / 75 / 95:")
        stored["smallest_multiplier_ratio"] = float(min(ratios))
        stored["neuron_spread"] = {}
        for level, h in itertools.product(LEVELS, HORIZONS):
            values = np.concatenate([coverage[level, h] for coverage in per_file])
            spread = [float(v) for v in np.percentile(values, [5, 25, 50, 75, 95])]
            stored["neuron_spread"].setdefault(str(level), {})[str(h)] = spread
            print(f"  level {level} h={h:2d}: " + " / ".join(f"{v:.3f}" for v in spread))
    if args.result:
        stored["defaults"] = {"learning_rate": LEARNING_RATE, "scale_time_constant_frames": SCALE_TIME_CONSTANT_FRAMES}
        stored["made_by"] = provenance(["python", "tools/intervals_tuning.py", *sys.argv[1:]])
        args.result.write_text(json.dumps(stored, indent=1) + "\n")


if __name__ == "__main__":
    main()
