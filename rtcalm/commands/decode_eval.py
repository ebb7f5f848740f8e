"""``rtcalm decode-eval FILE... --task direction|orientation|speed|pupil [--model default|PATH] [--folds 5] [--json]``.

The protocol is in :mod:`rtcalm.eval.decode`: k-fold cross-validation over the trials of each file; on
the same folds, a linear head on the model's pooled hidden states, the time-resolved head on the model's
per-frame hidden states and the identical head on the raw frames the model reads, against the baselines
(shrinkage LDA and logistic regression / ridge on time-binned responses with bins and penalty by inner
CV, a linear head on each neuron's mean response, chance). Scores come with standard errors over trials.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtcalm.commands.arguments import add_json_argument, add_model_argument, positive_int
from rtcalm.eval.decode import TASKS


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
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.eval.decode import BackboneFrames, evaluate, finetuned_decoder, time_resolved_decoders
    from rtcalm.model.checkpoint import load_model

    model = load_model(args.model)
    recordings = [load_recording(path) for path in args.files]
    frames = BackboneFrames(model)  # one forward pass per file, shared by the model's decoders
    extra = time_resolved_decoders(frames)
    if args.finetune_steps:
        extra["model_finetuned"] = finetuned_decoder(model, args.finetune_steps)
    result = evaluate(recordings, args.task, frames.pooled_features, folds=args.folds, seed=args.seed,
                      fold_decoders=extra)
    if args.json:
        print(json.dumps(result, indent=2))
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
