"""``rtcalm decode-eval FILE... --task direction|orientation|speed|pupil [--model default|PATH] [--folds 5] [--json]``.

The protocol is in :mod:`rtcalm.eval.decode`: k-fold cross-validation over the trials of each file, a
linear head on the model's pooled hidden states against a linear head on each neuron's mean response and
chance, on the same folds.
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import positive_int
from rtcalm.eval.decode import TASKS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode-eval", help="cross-validated decoding of stimulus or behaviour from trial recordings",
        description="k-fold cross-validation over trials (stratified for classification): a linear head on the "
                    "model's population state vs a linear head on each neuron's mean response window and chance.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--model", default="default", help="'default' (shipped model) or a checkpoint directory")
    parser.add_argument("--folds", type=positive_int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--finetune-steps", type=positive_int, metavar="STEPS",
                        help="also score the head trained together with a copy of the backbone for STEPS steps "
                             "per fold (16 training trials a step): the 'model_finetuned' row")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.eval.decode import evaluate, finetuned_decoder, model_features
    from rtcalm.model.checkpoint import load_model

    model = load_model(args.model)
    recordings = [load_recording(path) for path in args.files]
    extra = {"model_finetuned": finetuned_decoder(model, args.finetune_steps)} if args.finetune_steps else {}
    result = evaluate(recordings, args.task, model_features(model), folds=args.folds, seed=args.seed,
                      fold_decoders=extra)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"task {result['task']} ({result['metric']}), {args.folds}-fold CV over trials")
    tuned = list(extra)
    print(f"{'file':60s} {'model':>8s}" + "".join(f" {'finetuned':>9s}" for _ in tuned) + f" {'linear':>8s} {'chance':>8s}")
    for row in result["per_file"]:
        print(f"{row['file'][-60:]:60s} {row['model']:8.3f}" + "".join(f" {row[n]:9.3f}" for n in tuned)
              + f" {row['linear_mean_response']:8.3f} {row['chance']:8.3f}")
    print(f"{'mean':60s} {result['model']:8.3f}" + "".join(f" {result[n]:9.3f}" for n in tuned)
          + f" {result['baselines']['linear_mean_response']:8.3f} {result['baselines']['chance']:8.3f}")
    return 0
