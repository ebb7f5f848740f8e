"""``rtcalm stats FILE... [--thresholds knee|poyo-cap] [--json]``: per-neuron predictability statistics
and the POYO-CAP predictable / unpredictable split.

With several files the thresholds are chosen once over all their neurons (and over their Cre lines),
then applied to every file. JSON output: for one file, exactly one object
``{"file", "cre_line", "neurons": [...], "thresholds": {...}, "summary": {...}, "lines": [...]}``;
for several, ``{"files": [{"file", "cre_line", "neurons", "summary"}, ...], "thresholds", "summary",
"lines"}``. Neurons are in recording order.
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_json_argument, add_synthetic_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="per-neuron skewness, kurtosis, ... and the predictable/unpredictable split",
        description="Per-neuron statistics of the ΔF/F traces (mean, std, skewness, excess kurtosis, lag-1 "
                    "autocorrelation, SNR), the skewness/kurtosis thresholds and which neurons are "
                    "'predictable' (under both thresholds, as in POYO-CAP). See docs/statistics.md.")
    parser.add_argument("files", nargs="*", metavar="FILE", help="recording files (any supported format)")
    parser.add_argument("--thresholds", choices=("knee", "poyo-cap"), default="poyo-cap",
                        help="poyo-cap: skewness <= 3.51, kurtosis <= 22.62, the published values and the daemon's "
                             "default (default); knee: Kneedle on the sorted values")
    parser.add_argument("--knee-over", choices=("auto", "neurons", "cre-lines"), default="auto",
                        help="points for the knee: per-neuron values, or per-Cre-line means (auto: lines when "
                             "at least 5 are known)")
    add_synthetic_arguments(parser, "also analyse a built-in synthetic recording (256 neurons, 5 min at 30 Hz)")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rtcalm.data import load_recording
    from rtcalm.errors import RtcalmError
    from rtcalm.sim import make_synthetic
    from rtcalm.stats import NeuronStats, select_predictable, stats_of_recording

    if not args.files and not args.synthetic:
        raise RtcalmError("give one or more recording files, or --synthetic")
    recordings = [make_synthetic(seed=args.seed)] if args.synthetic else []
    recordings += [load_recording(path) for path in args.files]
    per_file = [stats_of_recording(rec) for rec in recordings]
    pooled = NeuronStats.concatenate(per_file)
    cre_lines = [rec.meta.cre_line for rec in recordings for _ in range(rec.n_neurons)]
    selection = select_predictable(pooled.skewness, pooled.kurtosis, method=args.thresholds,
                                   cre_lines=cre_lines, knee_over=args.knee_over)

    files = []
    offset = 0
    for rec, stats in zip(recordings, per_file, strict=True):
        predictable = selection.predictable[offset:offset + rec.n_neurons]
        offset += rec.n_neurons
        neurons = [{"id": int(neuron_id), **_ordered(stats.neuron(i)), "predictable": bool(predictable[i])}
                   for i, neuron_id in enumerate(rec.neuron_ids)]
        n_pred = int(np.sum(predictable))
        files.append({"file": rec.meta.source, "cre_line": rec.meta.cre_line, "neurons": neurons,
                      "summary": {"neurons": rec.n_neurons, "predictable": n_pred,
                                  "unpredictable": rec.n_neurons - n_pred,
                                  "undefined": sum(n["skewness"] is None or n["kurtosis"] is None for n in neurons),
                                  "fraction_predictable": n_pred / rec.n_neurons}})
    report = {"thresholds": selection.thresholds.to_dict(), "summary": selection.summary(), "lines": selection.lines}
    if len(files) == 1:
        report = {**files[0], **report}
    else:
        report = {"files": files, **report}

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_format_text(files, report))
    return 0


def _ordered(values: dict) -> dict:
    """The JSON key order: the two selection statistics first."""
    order = ("skewness", "kurtosis", "count", "mean", "std", "lag1_autocorr", "snr")
    return {name: values[name] for name in order}


def _number(value, digits: int = 4) -> str:
    return "nan" if value is None else f"{value:.{digits}g}"


def _format_text(files: list[dict], report: dict) -> str:
    lines = []
    header = (f"  {'id':>12} {'count':>7} {'mean':>10} {'std':>10} {'skewness':>9} {'kurtosis':>9} "
              f"{'lag1':>7} {'snr':>7}  predictable")
    for entry in files:
        s = entry["summary"]
        lines.append(f"{entry['file']}  ({s['neurons']} neurons, cre_line={entry['cre_line'] or '-'}): "
                     f"{s['predictable']} predictable ({100 * s['fraction_predictable']:.1f}%)")
        lines.append(header)
        for n in entry["neurons"]:
            lines.append(f"  {n['id']:>12} {_number(n['count'], 7):>7} {_number(n['mean']):>10} "
                         f"{_number(n['std']):>10} {_number(n['skewness']):>9} {_number(n['kurtosis']):>9} "
                         f"{_number(n['lag1_autocorr'], 3):>7} {_number(n['snr'], 3):>7}  "
                         f"{'yes' if n['predictable'] else 'no'}")
        lines.append("")
    t = report["thresholds"]
    lines.append(f"thresholds (requested: {t['requested']})")
    for name in ("skewness", "kurtosis"):
        entry = t[name]
        lines.append(f"  {name} <= {entry['value']:.4g}   ({entry['method']})")
        if entry["fallback"]:
            lines.append(f"    fallback: {entry['fallback']}")
    for note in t["notes"]:
        lines.append(f"  note: {note}")
    s = report["summary"]
    lines.append(f"split: {s['predictable']} of {s['neurons']} neurons predictable "
                 f"({100 * s['fraction_predictable']:.1f}%), {s['unpredictable']} unpredictable "
                 f"(of which {s['undefined']} with undefined statistics)")
    for row in report["lines"]:
        lines.append(f"  {row['cre_line']}: {row['neurons']} neurons, mean skewness {row['mean_skewness']:.3f}, "
                     f"mean kurtosis {row['mean_kurtosis']:.3f} -> "
                     f"{'predictable' if row['predictable'] else 'unpredictable'} line")
    return "\n".join(lines)
