"""Render the result tables of docs/results.md from the training runs' own output files.

    python tools/results_tables.py --default runs/default --ablation runs/default runs/ablation-continuous \\
        --scratch runs/scratch/scratch.json [--decode runs/decode-direction.json] \\
        [--curriculum runs/curriculum/curriculum.json]

Inputs are what the commands in docs/results.md write: ``metrics.json`` of ``python -m trainer pretrain``
(tokenizer metrics and the forecast protocol on validation and test mice), ``scratch.json`` of
``tools/scratch_baseline.py``, the ``--json`` output of ``rtcalm decode-eval`` and ``curriculum.json`` of
``tools/curriculum_experiment.py``. Nothing is typed in
by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: {exc}") from None


def forecast_table(protocol: dict) -> list[str]:
    horizons = [str(h) for h in protocol["horizons"]]
    rows = [("CalM (this model)", protocol["model"])] + [(name, scores) for name, scores in protocol["baselines"].items()]
    lines = ["| forecaster | " + " | ".join(f"h={h} mse_ratio | h={h} pearson" for h in horizons) + " |",
             "|---|" + "---|---|" * len(horizons)]
    for name, scores in rows:
        lines.append(f"| {name} | " + " | ".join(f"{scores[h]['mse_ratio']:.4f} | {scores[h]['pearson']:.4f}"
                                                 for h in horizons) + " |")
    return lines


def model_beats(protocol: dict, baseline: str) -> str:
    horizons = [str(h) for h in protocol["horizons"]]
    wins = [h for h in horizons if protocol["model"][h]["mse_ratio"] < protocol["baselines"][baseline][h]["mse_ratio"]]
    return f"lower mse_ratio than {baseline} at {len(wins)} of {len(horizons)} horizons ({', '.join(wins) or 'none'})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default", type=Path, required=True, help="run directory of the default model")
    parser.add_argument("--ablation", type=Path, nargs=2, metavar=("TOKENS_RUN", "CONTINUOUS_RUN"))
    parser.add_argument("--scratch", type=Path, help="scratch.json of tools/scratch_baseline.py")
    parser.add_argument("--decode", type=Path, nargs="*", default=[], help="rtcalm decode-eval --json outputs")
    parser.add_argument("--curriculum", type=Path, help="curriculum.json of tools/curriculum_experiment.py")
    args = parser.parse_args(argv)

    metrics = _load(args.default / "metrics.json")
    out = [f"### Forecasting on held-out mice ({', '.join(metrics['data']['test']['mice'])})", "",
           f"Run `{args.default}`: {metrics['transformer']['steps']} transformer steps (best at "
           f"{metrics['transformer']['best_step']}), {metrics['model']['parameters']:,} parameters, checkpoint "
           f"{metrics['model']['checkpoint_bytes'] / 1e6:.2f} MB, trained in {metrics['training_wall_time_s'] / 60:.1f} min. "
           f"Test files: {len(metrics['forecast_protocol']['test']['files'])}; context "
           f"{metrics['forecast_protocol']['test']['context']} frames.", ""]
    test = metrics["forecast_protocol"]["test"]
    out += forecast_table(test)
    out += ["", f"The model has {model_beats(test, 'pooled_ar')}, and {model_beats(test, 'copy_last')}.", ""]
    validation = metrics["forecast_protocol"].get("validation")
    if validation:
        out += [f"Validation mouse ({', '.join(metrics['data']['validation']['mice'])}), used to pick the checkpoint:", ""]
        out += forecast_table(validation) + [""]
    tok = metrics["tokenizer"]
    out += ["### Tokenizer on held-out mice", "",
            "| split | reconstruction R² | perplexity | codes used |", "|---|---|---|---|"]
    for split in ("validation", "test"):
        if tok.get(split):
            t = tok[split]
            out.append(f"| {split} | {t['reconstruction_r2']:.3f} | {t['perplexity']:.1f} of {t['codebook_size']} | "
                       f"{t['codes_used']} |")
    out.append("")

    if args.ablation:
        tokens, continuous = (_load(run / "metrics.json") for run in args.ablation)
        horizons = [str(h) for h in tokens["forecast_protocol"]["test"]["horizons"]]
        out += ["### Ablation: tokenizer vs continuous inputs (same recipe and budget, test mice)", "",
                f"Runs `{args.ablation[0]}` and `{args.ablation[1]}`: {tokens['transformer']['steps']} transformer steps each.",
                "", "| input | " + " | ".join(f"h={h} mse_ratio" for h in horizons) + " |",
                "|---|" + "---|" * len(horizons)]
        for name, run in (("tokens (VQ codes)", tokens), ("continuous (no tokenizer)", continuous)):
            scores = run["forecast_protocol"]["test"]["model"]
            out.append(f"| {name} | " + " | ".join(f"{scores[h]['mse_ratio']:.4f}" for h in horizons) + " |")
        out.append("")

    if args.scratch:
        scratch = _load(args.scratch)
        horizons = [str(h) for h in scratch["horizons"]]
        out += ["### Pretrained vs the same architecture trained from scratch on the target recording", "",
                f"`tools/scratch_baseline.py`: scratch models trained on each file's first 70 % "
                f"({scratch['tokenizer_steps']} tokenizer + {scratch['transformer_steps']} transformer steps, best "
                f"checkpoint on the last frames before the test segment); both scored on the last 30 %.", "",
                "| file | model | " + " | ".join(f"h={h} mse_ratio" for h in horizons) + " |",
                "|---|---|" + "---|" * len(horizons)]
        for row in scratch["per_file"]:
            short = "/".join(Path(row["file"]).parts[-3:-1])
            for name in ("pretrained", "scratch"):
                out.append(f"| {short} | {name} | " + " | ".join(f"{row[name][h]['mse_ratio']:.4f}" for h in horizons) + " |")
        for name in ("pretrained", "scratch"):
            out.append(f"| **mean** | {name} | " + " | ".join(f"{scratch['mean'][name][h]['mse_ratio']:.4f}"
                                                             for h in horizons) + " |")
        out.append("")

    for path in args.decode:
        result = _load(path)
        tuned = "model_finetuned" in result
        out += [f"### Decoding: {result['task']} ({result['metric']}, {result['folds']}-fold CV over trials)", "",
                "| file | mouse | neurons | CalM head (frozen) | " + ("CalM head + fine-tuned backbone | " if tuned else "")
                + "linear mean response | chance |", "|---|---|---|---|" + ("---|" if tuned else "") + "---|---|"]
        for row in result["per_file"]:
            out.append(f"| {Path(row['file']).name} | {row['mouse']} | {row['neurons']} | {row['model']:.3f} | "
                       + (f"{row['model_finetuned']:.3f} | " if tuned else "")
                       + f"{row['linear_mean_response']:.3f} | {row['chance']:.3f} |")
        out.append(f"| **mean** | | | {result['model']:.3f} | " + (f"{result['model_finetuned']:.3f} | " if tuned else "")
                   + f"{result['baselines']['linear_mean_response']:.3f} | {result['baselines']['chance']:.3f} |")
        out.append("")
    if args.curriculum:
        out += curriculum_table(_load(args.curriculum), args.curriculum)
    print("\n".join(out))
    return 0


def curriculum_table(result: dict, path: Path) -> list[str]:
    rows = result["rows"]
    horizons = list(next(iter(rows.values()))["forecast_mse_ratio"])
    seeds = ", ".join(map(str, result["seeds"]))
    out = ["### POYO-CAP ablation: neuron curriculum and pretraining objective", "",
           f"`{path}`: {result['transformer_steps']} transformer steps per run, seeds {seeds}; mean ± half-width of "
           f"the 95 % confidence interval over seeds (Student t). Forecasting: mse_ratio on the test mice "
           f"({', '.join(result['test_mice'])}); decoding: grating direction accuracy, head on the frozen "
           "backbone, 5-fold CV, mean over the grating recordings.", "",
           "| regime | objective | " + " | ".join(f"h={h} mse_ratio" for h in horizons) + " | direction accuracy |",
           "|---|---|" + "---|" * len(horizons) + "---|"]
    for name, row in rows.items():
        regime, _, objective = name.partition(", ")
        cells = [f"{row['forecast_mse_ratio'][h]['mean']:.4f} ± {row['forecast_mse_ratio'][h]['ci95']:.4f}" for h in horizons]
        accuracy = row["direction_accuracy"]
        out.append(f"| {regime} | {objective or 'autoregressive'} | " + " | ".join(cells)
                   + f" | {accuracy['mean']:.3f} ± {accuracy['ci95']:.3f} |")
    runs = result["runs"]
    out += ["", "Same runs, pooled AR mse_ratio (fitted on the training mice): "
            + ", ".join(f"h={h} {runs[0]['pooled_ar_mse_ratio'][h]:.4f}" for h in horizons)
            + f"; linear mean-response direction decoder {runs[0]['linear_mean_response']:.3f}, chance "
            f"{runs[0]['chance']:.3f}.", ""]
    return out


if __name__ == "__main__":
    sys.exit(main())
