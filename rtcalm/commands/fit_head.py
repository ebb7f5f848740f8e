"""``rtcalm fit-head FILE... --task TASK [--labels TABLE...] [--features auto|raw|backbone|both] [--model M] --out DIR``.

Fits the decoding head a daemon serves, on a calibration block, with the daemon's own per-frame path
(:mod:`rtcalm.eval.calibration`: running statistics, normalisation, the model's incremental step, one
continuous stream) and inner cross-validation (:mod:`rtcalm.eval.served`); prints the cross-validated
score of what it writes (the whole choice and fit repeated inside each outer fold) next to every
baseline decode-eval reports, on the same folds; writes ``DIR/NAME.json`` and ``DIR/NAME.safetensors``
with the provenance (input files and their SHA-256, model version, the choice, CV scores, the command).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

from rtcalm.commands.arguments import (
    add_backend_argument,
    add_json_argument,
    add_model_argument,
    positive_int,
)

FEATURES = ("auto", "raw", "backbone", "both")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit-head", help="fit the decoding head a daemon serves on a calibration block, with inner CV",
        description="Streams the calibration recording(s) through the daemon's own per-frame path (running "
                    "statistics, normalisation, the model's incremental step), chooses the head's kind (time-"
                    "resolved readout of the raw frames, the backbone's hidden state, or both), time bins, "
                    "components and penalty by inner cross-validation, fits it on every trial and writes it. "
                    "Prints the cross-validated score of what it writes, next to decode-eval's baselines on "
                    "the same folds.")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="recording(s) of one session (same neurons, same order); several are streamed one "
                             "after another as one session")
    parser.add_argument("--task", required=True,
                        help="direction, orientation (classes: the trial column <task>_deg), speed, pupil (the mean "
                             "over the response window), or the name of a trial / label-table column (classes)")
    parser.add_argument("--labels", nargs="+", metavar="TABLE",
                        help="a label table (CSV/TSV of onsets and labels, docs/data.md) per FILE, in order: the "
                             "trials of a contiguous recording")
    parser.add_argument("--regression", action="store_true",
                        help="decode a numeric column's value (ridge) instead of its classes (LDA)")
    parser.add_argument("--features", choices=FEATURES, default="auto",
                        help="what the head reads: raw frames, the backbone's hidden state, both, or auto (the kind "
                             "with the best inner-CV score; default)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write NAME.json and NAME.safetensors")
    parser.add_argument("--name", help="the head's name, the key of its output in 'decoded' (default: the task)")
    add_model_argument(parser)
    add_backend_argument(parser)
    parser.add_argument("--config", metavar="FILE",
                        help="the serving daemon's TOML config (its [stats] normalise the frames; default: defaults)")
    parser.add_argument("--window-s", type=positive_seconds, default=2.0, metavar="S",
                        help="the response window after each onset that the head reads (default 2)")
    parser.add_argument("--trial-order", choices=("shuffled", "recorded"), default="shuffled",
                        help="trial-structured files: stream the epochs in a fixed random order (default), so the "
                             "model's memory of the previous trial cannot carry a repeating stimulus sequence, or "
                             "as recorded")
    parser.add_argument("--folds", type=positive_int, default=5, help="outer CV folds for the reported score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignments")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.daemon.config import DaemonConfig, load_config
    from rtcalm.daemon.heads import HEAD_NAME_PATTERN
    from rtcalm.data import load_recording, read_label_table
    from rtcalm.engine import load_engine
    from rtcalm.errors import RtcalmError
    from rtcalm.eval.calibration import calibration, order_predictability, stream_windows
    from rtcalm.eval.decode import BASELINES, evaluate_recording
    from rtcalm.eval.report import file_digest
    from rtcalm.eval.served import ServedDecoder, fit_served_head
    from rtcalm.model.heads import save_head

    name = args.name or args.task
    if not HEAD_NAME_PATTERN.fullmatch(name):
        raise RtcalmError(f"head name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : - (give --name)")
    if args.labels is not None and len(args.labels) != len(args.files):
        raise RtcalmError(f"--labels gives {len(args.labels)} table(s) for {len(args.files)} file(s); give one per file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RtcalmError(f"--out {str(out)!r} is a file; give a directory")
    config = load_config(args.config) if args.config else DaemonConfig()
    recordings = [load_recording(path) for path in args.files]
    tables = None
    if args.labels is not None:
        tables = [read_label_table(table, recording) for table, recording in zip(args.labels, recordings, strict=True)]
    engine = load_engine(args.model, backend=args.backend)
    cal = calibration(recordings, args.task, engine.rate_hz, response_end_s=args.window_s, labels=tables,
                      regression=args.regression, trial_order=args.trial_order)
    predictable = order_predictability(cal.target_values()) if cal.trial_order == "recorded" else None

    start = time.perf_counter()
    windows = stream_windows(engine, cal, config)
    streamed_s = time.perf_counter() - start
    metric = cal.data.metric
    scores = evaluate_recording(cal.recording, args.task, None, folds=args.folds, seed=args.seed, data=cal.data,
                                fold_decoders={"served": lambda _rec, _data: ServedDecoder(cal, windows, args.features,
                                                                                           args.seed)})
    head, choice = fit_served_head(cal, windows, name=name, features=args.features, seed=args.seed)
    baselines = BASELINES[metric]
    provenance = {
        "made_by": "rtcalm fit-head",
        "command": shlex.join(getattr(args, "command_line", None) or ["rtcalm", "fit-head", *args.files]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [{"file": str(path), "sha256": file_digest(path)} |
                   ({"labels": str(table), "labels_sha256": file_digest(table)} if args.labels else {})
                   for path, table in zip(args.files, args.labels or [None] * len(args.files), strict=True)],
        "model": {"spec": args.model, "version": engine.version, "backend": engine.backend, "rate_hz": engine.rate_hz},
        "task": args.task, "metric": metric, "trials": int(len(cal.onsets)), "window_s": args.window_s,
        "trial_order": cal.trial_order, "label_order_predictability": predictable,
        "window_frames": cal.window_frames, "class_names": cal.class_names,
        "stats": {"warmup_frames": config.stats.warmup_frames, "time_constant_frames": config.stats.time_constant_frames},
        "features_requested": args.features,
        "chosen": choice.record(),
        "cross_validated": {"folds": args.folds, "seed": args.seed, "served": scores["served"],
                            "baselines": {b: scores[b] for b in baselines},
                            "standard_errors": {n: scores["standard_errors"][n] for n in ("served", *baselines)},
                            "selected": scores["selected"].get("served", [])},
    }
    path = save_head(head, out, name, provenance=provenance)
    if cal.classification and predictable is not None and predictable >= max(0.5, 1.5 / len(cal.classes)):
        print(f"rtcalm fit-head: warning: the previous trial's label predicts the next one in {predictable:.0%} of "
              "trials (a fixed stimulus order): a head that reads the backbone, which remembers the previous trial, "
              "can score by decoding the previous stimulus. Randomise the stimulus order of calibration blocks.",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"head": str(path), **provenance}, indent=2))
        return 0
    what = (f"{len(cal.classes)} classes" if cal.classification else "a value") + f" from {len(args.files)} file(s)"
    print(f"fit-head: {len(cal.onsets)} trials of {args.task!r} ({what}), {cal.n_neurons} neurons; model "
          f"{engine.version} ({engine.backend}); {cal.stream.shape[0]} frames streamed through the daemon's path "
          f"in {streamed_s:.1f} s")
    print(f"{args.folds}-fold CV over trials, every choice inside each fold; {metric} ± standard error over trials")
    errors = scores["standard_errors"]
    rows = [("served (what is written)", "served"), *((b, b) for b in baselines)]
    width = max(len(label) for label, _ in rows)
    for label, key in rows:
        print(f"  {label:{width}s} {scores[key]:7.3f} ± {errors[key]:.3f}")
    print(f"chosen on every trial by inner CV: {choice.describe()} (best inner-CV {metric} {choice.best_score:.3f})")
    if cal.class_names:
        print("classes: " + ", ".join(f"{i} = {n}" for i, n in enumerate(cal.class_names)))
    print(f"wrote {path} and {path.with_suffix('.safetensors').name}")
    return 0
