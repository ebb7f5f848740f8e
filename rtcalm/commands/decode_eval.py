"""``rtcalm decode-eval FILE... --task direction|orientation|speed|pupil [--model default|PATH] [--folds 5]
[--timecourse] [--json]``.

The protocol is in :mod:`rtcalm.eval.decode`: k-fold cross-validation over the trials of each file; on
the same folds, ``served`` (exactly what ``rtcalm fit-head --features auto`` would serve, read off the
daemon's own per-frame path, every choice made inside each outer fold: :mod:`rtcalm.eval.served`), a
linear head on the model's pooled hidden states, the time-resolved head on the model's per-frame hidden
states and the identical head on the raw frames the model reads (both on whole-recording z-scores, the
model restarted per trial), against the baselines (shrinkage LDA and logistic regression / ridge on
time-binned responses with bins and penalty by inner CV, a linear head on each neuron's mean response,
chance). Scores come with standard errors over trials. ``--timecourse``: every decoder refitted on the
frames that have arrived 0.25, 0.5, 1 and 2 s after the onset (causal: the targets stay the 2 s ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtcalm.commands.arguments import add_json_argument, add_model_argument, positive_int
from rtcalm.eval.decode import TASKS
from rtcalm.eval.report import provenance

TIMECOURSE_S = (0.25, 0.5, 1.0, 2.0)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode-eval", help="cross-validated decoding of stimulus or behaviour from trial recordings",
        description="k-fold cross-validation over trials (stratified for classification): heads on the model's "
                    "hidden states (pooled, and time-resolved) vs the identical time-resolved head on raw frames, "
                    "shrinkage LDA / logistic / ridge on time-binned responses (bins and penalty by inner CV), a "
                    "linear head on each neuron's mean response, and chance.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    add_model_argument(parser)
    parser.add_argument("--folds", type=positive_int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--finetune-steps", type=positive_int, metavar="STEPS",
                        help="also score the head trained together with a copy of the backbone for STEPS steps "
                             "per fold (16 training trials a step): the 'model_finetuned' row")
    parser.add_argument("--backend", default="auto",
                        help="where the model runs for the 'served' row (the daemon's path; as rtcalm serve --backend)")
    parser.add_argument("--trial-order", choices=("shuffled", "recorded"), default="shuffled",
                        help="the order the served row streams each file's trial epochs in (default: a fixed random "
                             "order, so the model's memory of the previous trial cannot carry a repeating stimulus "
                             "sequence; rtcalm.eval.calibration)")
    parser.add_argument("--timecourse", action="store_true",
                        help="each decoder's score from the frames available 0.25, 0.5, 1 and 2 s after the onset")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.engine import load_engine
    from rtcalm.errors import RtcalmError
    from rtcalm.eval.decode import BackboneFrames, evaluate, finetuned_decoder, time_resolved_decoders
    from rtcalm.eval.served import StreamedCalibrations, served_decoder
    from rtcalm.model.checkpoint import load_model

    model = load_model(args.model)
    engine = load_engine(args.model, backend=args.backend)
    recordings = [load_recording(path) for path in args.files]
    frames = BackboneFrames(model)  # one forward pass per file, shared by the model's decoders
    streamed = StreamedCalibrations(engine, args.task, trial_order=args.trial_order)  # one pass per file

    def decoders(available_s=None) -> dict:
        view = frames if available_s is None else frames.until(available_s)
        extra = {"served": served_decoder(streamed, "auto", args.seed, available_s), **time_resolved_decoders(view)}
        if args.finetune_steps and available_s is None:
            extra["model_finetuned"] = finetuned_decoder(model, args.finetune_steps)
        return extra, view

    if args.timecourse:
        if args.finetune_steps:
            raise RtcalmError("--timecourse does not refit the fine-tuned decoder; leave out --finetune-steps")
        results = []
        for available_s in TIMECOURSE_S:
            extra, view = decoders(available_s)
            results.append(evaluate(recordings, args.task, view.pooled_features, folds=args.folds, seed=args.seed,
                                    fold_decoders=extra, available_s=available_s))
        return _print_timecourse(args, results, ["model", *extra, *results[0]["baselines"]])
    extra, _ = decoders()
    result = evaluate(recordings, args.task, frames.pooled_features, folds=args.folds, seed=args.seed,
                      fold_decoders=extra)
    result["model_version"] = engine.version
    result["trial_order"] = args.trial_order
    if args.json:
        print(json.dumps({**result, "made_by": provenance(args.command_line)}, indent=2))
        return 0
    names = ["model", *extra, *result["baselines"]]
    print(f"task {result['task']} ({result['metric']}), {args.folds}-fold CV over trials; "
          "mean ± standard error over trials")
    width = max(len(n) for n in names)
    print(f"{'decoder':{width}s} " + " ".join(f"{row['mouse'] or Path(row['file']).stem:>14.14s}"
                                                 for row in result["per_file"]) + f" {'mean':>14s}")
    for name in names:
        mean = result[name] if name in result else result["baselines"][name]
        print(f"{name:{width}s} " + " ".join(f"{row[name]:7.3f} ±{row['standard_errors'][name]:.3f}"
                                             for row in result["per_file"])
              + f" {mean:7.3f} ±{result['standard_errors'][name]:.3f}")
    return 0


def _print_timecourse(args: argparse.Namespace, results: list[dict], names: list[str]) -> int:
    def value(result, name):
        return result[name] if name in result else result["baselines"][name]

    document = {"task": args.task, "metric": results[0]["metric"], "folds": args.folds, "seed": args.seed,
                "trial_order": args.trial_order,
                "available_s": list(TIMECOURSE_S),
                "decoders": {name: [value(r, name) for r in results] for name in names},
                "standard_errors": {name: [r["standard_errors"][name] for r in results] for name in names},
                "per_file": [{"file": row["file"], "mouse": row["mouse"], "trials": row["trials"],
                              **{name: [r["per_file"][k][name] for r in results] for name in names},
                              "standard_errors": {name: [r["per_file"][k]["standard_errors"][name] for r in results]
                                                  for name in names}}
                             for k, row in enumerate(results[0]["per_file"])]}
    if args.json:
        print(json.dumps({**document, "made_by": provenance(args.command_line)}, indent=2))
        return 0
    print(f"task {args.task} ({document['metric']}) from the frames available t s after the onset, mean over "
          f"{len(document['per_file'])} file(s) ± standard error; {args.folds}-fold CV over trials")
    width = max(len(n) for n in names)
    print(f"{'decoder':{width}s} " + " ".join(f"{f't = {t:g} s':>15s}" for t in TIMECOURSE_S))
    for name in names:
        print(f"{name:{width}s} " + " ".join(f"{m:7.3f} ±{e:.3f}  " for m, e in
                                             zip(document["decoders"][name], document["standard_errors"][name],
                                                 strict=True)))
    return 0
