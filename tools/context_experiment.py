"""Does a longer per-neuron context help the 1 s forecast? The per-neuron MLP (the shipped baseline's recipe,
which is also the default model's per-neuron path) fitted with windows of 64, 128 and 256 frames on the
training mice, scored on the VALIDATION mouse only (the test mice stay untouched for the final table).

    python tools/context_experiment.py [--contexts 64 128 256] [--seeds 0] [--out runs/context-experiment] \\
        [--result docs/results/context_experiment.json]

The forecast-eval protocol (rtcalm.eval.forecast) scores the last 30 % of each file whatever the context, so
the test targets are the same for every window; each forecaster is scored with ``--context`` = the longest
window, and reads its own window of it. docs/results.md's table is at ``--context 64``: a forecaster that
needs more than 64 frames cannot be compared there without changing the protocol for every row, which is
why this runs on the validation mouse first. Fitted models are kept in ``--out`` (a rerun refits nothing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HORIZONS = [1, 5, 15, 30]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pretrain_default.json")
    parser.add_argument("--contexts", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-root", default="../shared/data/real")
    parser.add_argument("--out", default="runs/context-experiment")
    parser.add_argument("--result", default=None, help="write the JSON document here (with its provenance)")
    args = parser.parse_args(argv)

    import sys

    import torch

    from rtcalm.eval.forecast import copy_last, evaluate
    from rtcalm.eval.report import provenance
    from rtcalm.model.baselines import baseline_forecaster, load_baseline, save_baseline
    from trainer.baselines import BaselineRecipe, fit_baseline
    from trainer.config import load_train_config
    from trainer.data import load_sessions, split_by_mouse

    torch.set_num_threads(1)
    config = load_train_config(args.config)
    sessions, _ = load_sessions(args.data_root, config.data, log=lambda *_: None)
    train, validation, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    recordings = [s.recording for s in validation if not s.recording.is_trial_structured]
    longest = max(args.contexts)
    out = Path(args.out)
    scores: dict[str, dict] = {}
    for seed in args.seeds:
        forecasters = {"copy_last": lambda z, t, c: copy_last(z, t, c, HORIZONS[-1])}
        for context in args.contexts:
            directory = out / f"mlp-ctx{context}-seed{seed}"
            if not (directory / "model.safetensors").exists():
                model, info = fit_baseline("mlp", train, BaselineRecipe(seed=seed), HORIZONS[-1], progress=False,
                                           context_frames=context)
                save_baseline(model, directory, {k: v for k, v in info.items() if k != "curve"})
            forecasters[f"mlp_ctx{context}"] = baseline_forecaster(load_baseline(directory))
        result = evaluate(recordings, forecasters, HORIZONS, longest)
        for name in forecasters:
            if name == "copy_last":
                continue
            scores.setdefault(name, {})[str(seed)] = {
                str(h): float(np.mean([f[name][str(h)]["mse_ratio"] for f in result["per_file"]])) for h in HORIZONS}
        print(json.dumps({name: scores[name][str(seed)] for name in scores}), flush=True)
    document = {"made_by": provenance(sys.argv), "validation_mice": config.data.validation_mice,
                "files": [r.meta.source for r in recordings], "train_mice": sorted({s.mouse for s in train}),
                "horizons": HORIZONS, "eval_context": longest, "seeds": args.seeds, "mse_ratio": scores,
                "mean_over_seeds": {name: {str(h): float(np.mean([s[str(h)] for s in per.values()])) for h in HORIZONS}
                                    for name, per in scores.items()}}
    if args.result:
        Path(args.result).write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document["mean_over_seeds"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
