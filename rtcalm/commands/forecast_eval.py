"""``rtcalm forecast-eval FILE... [--model default|PATH] [--context FRAMES] [--horizons 1,5,15,30]
[--intervals 0.8,0.95] [--json]``.

The protocol (targets, normalisation, metrics, baselines) is in :mod:`rtcalm.eval.forecast`. The
``pooled_ar`` baseline is the one fitted on the model's own training data, stored in the checkpoint's
metadata (``metadata["pooled_ar"]``) by the trainer; a checkpoint without it reports no ``pooled_ar`` row.
The learned baselines ``mlp`` (per-neuron MLP) and ``poco`` (POCO-style population FiLM) are the shipped
ones in ``rtcalm/models/baselines/`` (rtcalm.model.baselines), fitted on the default model's training mice.
``--intervals`` adds online conformal forecast intervals for the model and copy-last, scored as
:mod:`rtcalm.eval.intervals` describes (docs/intervals.md).
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_json_argument, add_model_argument, positive_int
from rtcalm.errors import RtcalmError


def parse_horizons(text: str) -> list[int]:
    try:
        horizons = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"horizons must be comma-separated integers, got {text!r}") from None
    if not horizons or min(horizons) < 1:
        raise argparse.ArgumentTypeError(f"horizons must be positive integers, got {text!r}")
    return sorted(set(horizons))


def parse_levels(text: str) -> list[float]:
    """``0.8,0.95`` -> [0.8, 0.95]: interval levels, each strictly between 0 and 1."""
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"interval levels must be comma-separated numbers, got {text!r}") from None
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise argparse.ArgumentTypeError(f"interval levels must be numbers strictly between 0 and 1, got {text!r}")
    return sorted(set(levels))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "forecast-eval", help="score a model's forecasts against baselines on recordings",
        description="For each file, forecast the frames t+h for every t in the last 30% of the recording from the "
                    "--context frames up to t; report mse_ratio (vs copy-last) and Pearson per horizon for the "
                    "model and the copy_last, context_mean, pooled_ar, mlp and poco baselines. Contiguous recordings only.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    add_model_argument(parser)
    parser.add_argument("--context", type=positive_int, default=None,
                        help="context frames up to and including t (default: the model's receptive field)")
    parser.add_argument("--horizons", type=parse_horizons, default=[1, 5, 15, 30], help="e.g. 1,5,15,30")
    parser.add_argument("--intervals", type=parse_levels, default=None, metavar="LEVELS",
                        help="also score online conformal forecast intervals at these levels, e.g. 0.8,0.95: "
                             "coverage and interval score after 300 burn-in frames, model and copy-last")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def model_and_baselines(model_spec: str, horizon: int):
    """(forecasters dict with 'model' first, the loaded model)."""
    from rtcalm.eval.forecast import PooledAR, baseline_forecasters, model_forecaster
    from rtcalm.model.baselines import baseline_forecaster, shipped_baselines
    from rtcalm.model.checkpoint import load_model, read_checkpoint_config, resolve_model

    directory = resolve_model(model_spec)
    model = load_model(directory)
    _, metadata = read_checkpoint_config(directory)
    if horizon > model.config.forecast_horizon_frames:
        raise RtcalmError(f"the model forecasts {model.config.forecast_horizon_frames} frames; horizon {horizon} requested")
    pooled_ar = None
    if "pooled_ar" in metadata:
        try:
            pooled_ar = PooledAR.from_dict(metadata["pooled_ar"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RtcalmError(f"{directory}: bad pooled_ar baseline in the checkpoint metadata ({exc})") from None
    learned = {kind: baseline_forecaster(baseline) for kind, baseline in shipped_baselines().items()}
    return {"model": model_forecaster(model), **baseline_forecasters(pooled_ar, horizon), **learned}, model


def format_table(result: dict) -> str:
    """One row per horizon, one column per forecaster: ``mse_ratio / pearson``."""
    columns = ([("model", result["model"])] if "model" in result else []) + list(result["baselines"].items())
    lines = [f"{len(result['files'])} file(s), context {result['context']} frames; cells: mse_ratio / pearson",
             f"{'horizon':>8s}" + "".join(f"  {name:>17s}" for name, _ in columns)]
    for h in map(str, result["horizons"]):
        lines.append(f"{h:>8s}" + "".join(f"  {scores[h]['mse_ratio']:8.4f} / {scores[h]['pearson']:6.3f}"
                                          for _, scores in columns))
    return "\n".join(lines)


def format_intervals_table(intervals: dict, horizons: list[int]) -> str:
    """One row per level and horizon: coverage, interval score of the model and of copy-last, their ratio."""
    levels = [str(level) for level in intervals["levels"]]
    lines = [f"online conformal intervals, scored after {intervals['burn_in_frames']} burn-in frames; "
             "interval score in ΔF/F, lower is better",
             f"{'level':>6s} {'horizon':>8s} {'coverage':>9s} {'model':>9s} {'copy_last':>10s} {'ratio':>6s} "
             f"{'copy_last coverage':>19s}"]
    for level in levels:
        rows = [(str(h), intervals[level]["per_horizon"][str(h)]) for h in horizons] + [("all", intervals[level])]
        for h, cell in rows:
            lines.append(f"{level:>6s} {h:>8s} {cell['coverage']:9.3f} {cell['interval_score']:9.4f} "
                         f"{cell['copy_last_interval_score']:10.4f} {cell['interval_score_ratio']:6.3f} "
                         f"{cell['copy_last_coverage']:19.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.data.resample import resample_recording
    from rtcalm.eval.forecast import evaluate

    forecasters, model = model_and_baselines(args.model, max(args.horizons))
    recordings = []
    for path in args.files:
        recording = load_recording(path)
        if recording.is_trial_structured:
            raise RtcalmError(f"{path}: trial-structured recordings (separate epochs) are not supported by "
                              "forecast-eval; it needs a contiguous recording")
        recordings.append(resample_recording(recording, model.config.rate_hz))
    context = args.context or model.config.receptive_field_frames
    result = evaluate(recordings, forecasters, args.horizons, context)
    if args.intervals:
        from rtcalm.eval.intervals import evaluate_intervals

        result["intervals"] = evaluate_intervals(recordings, forecasters["model"], args.intervals, args.horizons,
                                                 context)
    if args.json:
        from rtcalm.eval.report import provenance

        print(json.dumps({**result, "made_by": provenance(args.command_line)}, indent=2))
    else:
        print(format_table(result))
        if args.intervals:
            print()
            print(format_intervals_table(result["intervals"], args.horizons))
    return 0
