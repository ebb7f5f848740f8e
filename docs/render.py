"""Writes every generated block of the docs from the stored results in docs/results/.

    python docs/render.py            # rewrite the blocks, and the figures drawn from stored results
    python docs/render.py --check    # exit 1 if a doc differs from what its stored results render (CI)

A block sits between ``<!-- generated: NAME ... -->`` and ``<!-- end generated: NAME -->``. What is
between the markers is a function of the stored JSON only: tables, and every sentence that states a
conclusion, are computed from the numbers, so they change when the numbers do. Each stored file names the
command, the commit and the machine that made it (the experiments in tools/ and the ``--json`` of the
``rtcalm`` commands write them). Prose outside the blocks is commentary and says which commit it
refers to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
FIGURES = DOCS / "figures"
REPOSITORY = DOCS.parent


# --- blocks and provenance -----------------------------------------------------------------------------------
def begin_marker(name: str) -> str:
    return f"<!-- generated: {name} (docs/render.py from docs/results/; do not edit by hand) -->"


def end_marker(name: str) -> str:
    return f"<!-- end generated: {name} -->"


def replace_block(text: str, name: str, body: str, where: str) -> str:
    begin, end = begin_marker(name), end_marker(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{where}: expected one generated block {name!r} ({begin} ... {end})")
    head, rest = text.split(begin, 1)
    return head + begin + "\n\n" + body.strip("\n") + "\n\n" + end + rest.split(end, 1)[1]


def load(name: str) -> dict:
    path = RESULTS / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"docs/render.py: {path} is missing: run the command that makes it "
                         "(docs/results/README.md)") from None


def machine_text(machine) -> str:
    """The envelope's machine (a dict from rtcalm.eval.report.machine_info, or an older string)."""
    if isinstance(machine, str):
        return machine
    parts = [machine.get("cpu") or machine.get("platform"), f"{machine.get('cores')} cores"]
    return ", ".join(str(p) for p in parts if p)


def provenance(document: dict, file: str) -> str:
    made_by = document.get("made_by", document)
    bits = [f"Made by `{made_by['command']}`"]
    if made_by.get("commit"):
        bits.append(f"at commit {made_by['commit']}")
    if made_by.get("machine"):
        bits.append(f"on {machine_text(made_by['machine'])}")
    if made_by.get("date"):
        bits.append(f"({made_by['date']})")
    return " ".join(bits) + f"; stored in `docs/results/{file}`."


def signed_percent(fraction: float) -> str:
    return f"{100 * fraction:+.1f} %"


# --- results.md: forecasting -----------------------------------------------------------------------------------
FORECAST_LABELS = {
    "model": "**CalM `default`** (encoder mode)",
    "mlp": "per-neuron MLP (the anchor's recipe)",
    "poco": "POCO-style MLP + population FiLM",
    "pooled_ar": "pooled linear AR(16)",
    "copy_last": "copy-last",
    "model_population_shuffled": "CalM `default`, other neurons shifted in time (population ablation)",
    "model_population_off": "CalM `default`, population pathway off (FiLM zeroed: its per-neuron path)",
}
LEARNED_BASELINES = ("mlp", "poco", "pooled_ar")
NO_CHANGE = 0.0005  # a relative change in mse_ratio below this is reported as no change


def forecast_block() -> str:
    document = load("forecast.json")
    summary, horizons = document["summary"], [str(h) for h in document["horizons"]]
    mean = {name: {h: summary[name][h]["mean"] for h in horizons} for name in summary}
    scored_at = {}
    for entry in document["per_seed"]:
        scored_at.setdefault(str(entry.get("commit")), []).append(str(entry["seed"]))
    lines = [provenance(document, "forecast.json") + " Seeds scored at commit "
             + "; ".join(f"{commit} (seed {', '.join(seeds)})" for commit, seeds in scored_at.items())
             + " (each seed's scores are kept beside its model and reused).", "",
             f"Held-out test mice {', '.join(document['test_mice'])} ({len(document['test_files'])} files), trained "
             f"on mice {', '.join(document['train_mice'])}; context {document['context']} frames; mse_ratio (lower is "
             f"better, copy-last = 1), mean over seeds {', '.join(map(str, document['seeds']))} with min-max. Every "
             "learned baseline is refitted per seed on the same training recordings.", "",
             "| forecaster | " + " | ".join(f"h={h}" for h in horizons) + " |", "|---|" + "---|" * len(horizons)]
    for name, label in FORECAST_LABELS.items():
        if name in summary:
            cells = [f"{summary[name][h]['mean']:.3f} ({summary[name][h]['min']:.3f}-{summary[name][h]['max']:.3f})"
                     for h in horizons]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "**Reading it** (computed from the table):", ""]
    for name in LEARNED_BASELINES:
        wins = [h for h in horizons if mean["model"][h] < mean[name][h]]
        gains = ", ".join(f"h={h} {signed_percent(1 - mean['model'][h] / mean[name][h])}" for h in horizons)
        lines.append(f"- Against {FORECAST_LABELS[name]}: the default's mean is lower at {len(wins)} of "
                     f"{len(horizons)} horizons ({gains}; positive: the default is better).")
    every_seed = [h for h in horizons if all(m < min(summary[b][h]["seeds"][i] for b in LEARNED_BASELINES)
                                             for i, m in enumerate(summary["model"][h]["seeds"]))]
    lines.append(f"- Below every learned baseline in every seed at: {', '.join('h=' + h for h in every_seed) or 'no horizon'}.")
    for name, what in (("model_population_off", "Turning the population pathway off (FiLM zeroed)"),
                       ("model_population_shuffled", "Shifting the other neurons in time")):
        if name in mean:
            changes = [mean[name][h] / mean["model"][h] - 1 for h in horizons]
            helps = sum(c > NO_CHANGE for c in changes)
            hurts = sum(c < -NO_CHANGE for c in changes)
            lines.append(f"- {what} changes the mse_ratio by {', '.join(f'h={h} {signed_percent(c)}' for h, c in zip(horizons, changes, strict=True))} "
                         f"(negative: better without the population): the population pathway helps at {helps}, "
                         f"hurts at {hurts} and changes less than {100 * NO_CHANGE:g} % at "
                         f"{len(changes) - helps - hurts} of {len(changes)} horizons.")
    longest = horizons[-1]
    best_at_longest = min(LEARNED_BASELINES, key=lambda b: mean[b][longest])
    met = mean["model"][longest] < mean[best_at_longest][longest]
    lines.append(f"- Issue 25's target, below every learned baseline at h={longest} without losing at the other "
                 f"horizons: the default {mean['model'][longest]:.3f} against {FORECAST_LABELS[best_at_longest]} "
                 f"{mean[best_at_longest][longest]:.3f}: {'met' if met else '**not met**'}.")
    calibration = document["per_seed"][0].get("calibration")
    if calibration:
        lines += ["", f"Session adaptation (seed {document['seeds'][0]}): neuron embeddings calibrated on each test "
                  "file's first 70 % vs a pooled AR fitted on the same frames, scored on the last 30 %:", "",
                  "| forecaster | " + " | ".join(f"h={h}" for h in horizons) + " |", "|---|" + "---|" * len(horizons),
                  "| CalM `default` + calibrated neuron embeddings | "
                  + " | ".join(f"{calibration['model'][h]:.3f}" for h in horizons) + " |",
                  "| pooled AR(16) fitted on the file's first 70 % | "
                  + " | ".join(f"{calibration['pooled_ar'][h]:.3f}" for h in horizons) + " |"]
    lines += ["", "![forecasts against truth](figures/forecast_examples.png)", "",
              "![training curves](figures/forecast_training_curves.png)"]
    return "\n".join(lines)


# --- results.md: the served decoder ------------------------------------------------------------------------
SERVED_LABELS = {
    "served": "**served** (what `fit-head --features auto` writes: the inner-CV band's heads averaged, in each fold)",
    "model": "pooled hidden states, logistic / ridge (the old EMA head's readout)",
    "model_time_resolved": "time-resolved head on the backbone (whole-recording z, model restarted per trial)",
    "raw_time_resolved": "the same head on raw frames (whole-recording z, 30 Hz)",
    "lda_binned": "shrinkage LDA on time bins (16 Hz ΔF/F)",
    "logistic_binned": "logistic on time bins",
    "ridge_binned": "ridge on time bins",
    "linear_mean_response": "linear readout of the mean response",
    "chance": "chance (training-fold majority / mean)",
}
BASELINES = {"accuracy": ("lda_binned", "logistic_binned", "linear_mean_response"),
             "r2": ("ridge_binned", "linear_mean_response")}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def horizon_list(horizons: list[str]) -> str:
    return "h = " + ", ".join(horizons) if horizons else "no horizon"


def context_block() -> str:
    """The per-neuron MLP with longer windows, on the validation mouse (tools/context_experiment.py)."""
    document = load("context_experiment.json")
    horizons, means = [str(h) for h in document["horizons"]], document["mean_over_seeds"]
    names = sorted(means, key=lambda name: int(name.rsplit("ctx", 1)[1]))
    reference = names[0]
    lines = [provenance(document, "context_experiment.json"), "",
             f"Validation mouse {', '.join(document['validation_mice'])} ({plural(len(document['files']), 'file')}), trained "
             f"on {', '.join(document['train_mice'])}, seeds {', '.join(map(str, document['seeds']))} (mean), scored at "
             f"--context {document['eval_context']}; mse_ratio (lower is better):", "",
             "| per-neuron MLP window | " + " | ".join(f"h={h}" for h in horizons) + " |",
             "|---|" + "---|" * len(horizons)]
    for name in names:
        lines.append(f"| {name.rsplit('ctx', 1)[1]} frames | " + " | ".join(f"{means[name][h]:.3f}" for h in horizons) + " |")
    lines.append("")
    for name in names[1:]:
        changes = [(means[reference][h] - means[name][h]) / means[reference][h] for h in horizons]
        better = [h for h, c in zip(horizons, changes, strict=True) if c > NO_CHANGE]
        worse = [h for h, c in zip(horizons, changes, strict=True) if c < -NO_CHANGE]
        lines.append(f"- {name.rsplit('ctx', 1)[1]} frames against {reference.rsplit('ctx', 1)[1]}: better at "
                     f"{horizon_list(better)}, worse at {horizon_list(worse)} (a relative change under "
                     f"{100 * NO_CHANGE:g} % counts as none).")
    return "\n".join(lines)


def fmt(value: float, se: float | None = None) -> str:
    return f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def target_check(run: dict) -> tuple[list[dict], float, float, str]:
    """Per mouse: served, the best baseline on that mouse, its SE, and whether served >= best - SE; then
    the served mean, the best baseline's mean and its name."""
    baselines = [b for b in BASELINES[run["metric"]] if b in run["mean"]]
    rows = []
    for mouse, row in run["per_mouse"].items():
        best = max(baselines, key=lambda b: row[b])
        rows.append({"mouse": mouse, "served": row["served"], "best": best, "best_score": row[best],
                     "se": row["standard_errors"][best],
                     "met": row["served"] >= row[best] - row["standard_errors"][best] - 1e-12})
    best_mean = max(baselines, key=lambda b: run["mean"][b])
    return rows, run["mean"]["served"], run["mean"][best_mean], best_mean


def decoder_table(run: dict, mice: list[str]) -> list[str]:
    lines = ["| decoder | " + " | ".join(mice) + " | mean |", "|---|" + "---|" * (len(mice) + 1)]
    for name, label in SERVED_LABELS.items():
        if name in run["mean"]:
            cells = [fmt(run["per_mouse"][m][name], run["per_mouse"][m]["standard_errors"][name]) for m in mice]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(run['mean'][name], run['standard_errors'][name])} |")
    return lines


def served_block() -> str:
    document = load("decoding_served.json")
    runs = document["runs"]
    seeds = sorted(int(k.removeprefix("direction_seed")) for k in runs
                   if k.startswith("direction_seed") and k.removeprefix("direction_seed").isdigit())
    seed0 = runs[f"direction_seed{seeds[0]}"]
    mice = list(seed0["per_mouse"])
    trials = sorted({row["trials"] for row in seed0["per_mouse"].values()}) if "trials" in next(iter(
        seed0["per_mouse"].values())) else None
    first = document["commands"][0].split()
    command = " ".join(first[:2] + ["<the grating files>"] + [a for a in first[2:] if not a.endswith(".mat")])
    lines = [f"Made by `{document['made_by']}` at commit {document['commit']} ({document['compute_minutes']} min of "
             f"compute); stored in `docs/results/decoding_served.json`. It runs `{command}` on {len(mice)} mice "
             f"and the same for fold seeds {', '.join(map(str, seeds))}, `--task speed`, `--task pupil`, "
             "`--trial-order recorded` and `--timecourse` (every command is in the JSON). ± is the standard error "
             f"over trials (mean over mice: sqrt(sum se²) / {len(mice)})."
             + (f" Trials per mouse: {', '.join(map(str, trials))}." if trials else ""), ""]
    diffs, misses = [], []
    for seed in seeds:
        rows, served, best, best_name = target_check(runs[f"direction_seed{seed}"])
        diffs.append(served - best)
        misses += [f"{r['mouse']} (seed {seed}: {r['served']:.3f} against {r['best_score'] - r['se']:.3f})"
                   for r in rows if not r["met"]]
    within = all(d >= -0.01 for d in diffs)
    lines += ["**Findings** (computed from the tables below):", "",
              f"- **Direction.** The served decoder's mean over the mice minus the best baseline's is "
              f"{', '.join(f'{d:+.3f}' for d in diffs)} for fold seeds {', '.join(map(str, seeds))}: "
              + ("within 0.01 or above on every seed" if within else "more than 0.01 below on some seed")
              + ". At least the best baseline minus one standard error on every mouse: "
              + ("met on every seed." if not misses else "missed on " + "; ".join(misses) + ".")]
    for task in ("speed", "pupil"):
        rows, served, best, best_name = target_check(runs[f"{task}_seed0"])
        lines.append(f"- **{task.capitalize()}** (seed 0): served {served:.3f} against {best_name} {best:.3f} "
                     f"({served - best:+.3f}); at least the best baseline minus one SE on "
                     f"{sum(r['met'] for r in rows)} of {len(rows)} mice.")
    folds = [c for seed in seeds for row in runs[f"direction_seed{seed}"]["per_mouse"].values()
             for c in row["served_choices"]]
    choices = Counter(c["features"] for c in folds)
    reads = choices["backbone"] + choices["both"]
    band = [len(c.get("members", [c])) for c in folds]
    raw_row = seed0["mean"].get("raw_time_resolved")
    backbone_row = seed0["mean"].get("model_time_resolved")
    lines.append(f"- **What the served head reads** (direction, {len(folds)} outer folds over {len(seeds)} seeds): "
                 + ", ".join(f"{k} {v}" for k, v in choices.most_common())
                 + f"; the backbone in {reads}. Heads averaged per fold: median {np.median(band):g}, "
                 f"{min(band)} to {max(band)}."
                 + ("" if raw_row is None or backbone_row is None else
                    f" The time-resolved head on the backbone alone scores {backbone_row:.3f} against {raw_row:.3f} "
                    f"for the same head on raw frames (seed {seeds[0]}, mean): the backbone "
                    + ("adds to" if backbone_row > raw_row else "does not add to") + " what the raw frames carry."))
    lines += ["", f"### Direction (accuracy), fold seed {seeds[0]}", "", *decoder_table(seed0, mice), "",
              "Target (issue 22): on every mouse, served >= the best baseline on that mouse minus its standard "
              "error; the mean within 0.01 of the best baseline's mean, or above.", "",
              "| fold seed | " + " | ".join(mice) + " | served mean | best baseline mean | difference | met |",
              "|---|" + "---|" * (len(mice) + 4)]
    for seed in seeds:
        rows, served, best, best_name = target_check(runs[f"direction_seed{seed}"])
        cells = [f"{r['served']:.3f} vs {r['best_score']:.3f} − {r['se']:.3f} ({r['best']}) {'✓' if r['met'] else '✗'}"
                 for r in rows]
        met = all(r["met"] for r in rows) and served >= best - 0.01
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {served:.3f} | {best:.3f} ({best_name}) | "
                     f"{served - best:+.3f} | {'yes' if met else 'no'} |")
    for task in ("speed", "pupil"):
        lines += ["", f"### {task.capitalize()} (R², mean over the 0-2 s window per trial), fold seed 0", "",
                  *decoder_table(runs[f"{task}_seed0"], mice)]
    recorded = runs.get("direction_seed0_recorded_order")
    course = document["timecourse"]
    if recorded is not None:
        recorded_course = document["timecourse_recorded_order"]
        others = [course["decoders"][n][0] for n in course["decoders"] if n != "served"]
        lines += ["", "### Trial order: what the backbone remembers of the previous trial", "",
                  "The stimuli cycle in a fixed order, and the served path streams the epochs one after another "
                  "through one model state; `--trial-order recorded` streams them in that order, the default "
                  "(used everywhere else here) in a fixed random order:", "",
                  "| served, direction, seed 0 | " + " | ".join(mice) + " | mean | from the first "
                  f"{course['available_s'][0]:g} s |", "|---|" + "---|" * (len(mice) + 2)]
        for label, run, course_ in (("shuffled order (default)", seed0, course),
                                    ("recorded order", recorded, recorded_course)):
            cells = [fmt(run["per_mouse"][m]["served"]) for m in mice]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(run['mean']['served'], run['standard_errors']['served'])} | "
                         f"{fmt(course_['decoders']['served'][0], course_['standard_errors']['served'][0])} |")
        early_recorded = recorded_course["decoders"]["served"][0]
        lines += ["", f"From the first {course['available_s'][0]:g} s, the served decoder in the recorded order reaches "
                  f"{early_recorded:.3f}, against {min(others):.3f}-{max(others):.3f} for every other decoder and "
                  f"{course['decoders']['served'][0]:.3f} for itself in the shuffled order: "
                  + ("it reads the current stimulus from its memory of the previous trial." if early_recorded > max(others)
                     else "no sign that it reads the current stimulus from the previous trial.")]
    lines += ["", "### Decoding as the trial unfolds (direction, fold seed 0, `--timecourse`)", "",
              "Every decoder refitted on the frames that have arrived t s after the onset (causal). Mean accuracy "
              f"over the {len(mice)} mice ± standard error.", "",
              "| decoder | " + " | ".join(f"t = {t:g} s" for t in course["available_s"]) + " |",
              "|---|" + "---|" * len(course["available_s"])]
    for name, label in SERVED_LABELS.items():
        if name in course["decoders"]:
            cells = [fmt(m, e) for m, e in zip(course["decoders"][name], course["standard_errors"][name], strict=True)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![direction accuracy against the time since onset](figures/decoding_timecourse.png)"]
    return "\n".join(lines)


SERVED_RULES = {
    "best": "the best inner-CV candidate",
    "one_se_simplest": "the simplest within one SE of the best (Breiman)",
    "average_band": "**the average of the candidates within one SE of the best** (served)",
    "average_all": "the average of every candidate",
}


def served_rules_block() -> str:
    """The four ways of turning inner-CV scores into the served head (tools/served_rules.py)."""
    document = load("served_rules.json")
    runs = document["runs"]
    seeds = sorted(runs, key=lambda k: int(k.removeprefix("direction_seed")))
    baselines = [b for b in BASELINES["accuracy"] if b in document["baselines"]]
    lines = [f"Made by `{document['made_by']}` at commit {document['commit']} ({document['compute_minutes']} min of "
             "compute); stored in `docs/results/served_rules.json`. Direction accuracy, mean over the "
             f"{len(document['mice'])} mice, per fold seed; a miss is a mouse and seed where the rule scores below "
             "the best baseline on that mouse minus its standard error.", "",
             "| rule | " + " | ".join(f"seed {k.removeprefix('direction_seed')}" for k in seeds)
             + " | mean | minus the best baseline's mean | misses |", "|---|" + "---|" * (len(seeds) + 3)]
    summary = {}
    for rule in document["rules"]:
        means = [runs[k]["mean"][rule] for k in seeds]
        best_means = [max(runs[k]["mean"][b] for b in baselines) for k in seeds]
        misses = 0
        for row in (row for k in seeds for row in runs[k]["per_mouse"].values()):
            best = max(baselines, key=lambda b, row=row: row[b])
            misses += row[rule] < row[best] - row["standard_errors"][best] - 1e-12
        summary[rule] = (float(np.mean(means)), float(np.mean(means) - np.mean(best_means)), misses)
        lines.append(f"| {SERVED_RULES.get(rule, rule)} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {summary[rule][0]:.3f} | {summary[rule][1]:+.3f} | {misses} of "
                     f"{len(seeds) * len(document['mice'])} |")
    top = max(summary, key=lambda r: summary[r][0])
    fewest = min(misses for _mean, _difference, misses in summary.values())
    tied = [SERVED_RULES.get(r, r) for r in summary if summary[r][2] == fewest]
    bands = [n for k in seeds for n in runs[k]["band_sizes"]]
    lines += ["", f"Highest mean: {SERVED_RULES.get(top, top)}; fewest misses ({fewest}): {', '.join(tied)}. "
              f"Candidates within one SE of the best per outer fold: median {np.median(bands):g}, {min(bands)} to "
              f"{max(bands)}."]
    return "\n".join(lines)


def served_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    course = load("decoding_served.json")["timecourse"]
    t = course["available_s"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("served", "o-"), ("lda_binned", "s--"), ("logistic_binned", "^--"),
                        ("linear_mean_response", "v:"), ("model_time_resolved", "d-."), ("chance", "k:")):
        if name in course["decoders"]:
            ax.errorbar(t, course["decoders"][name], yerr=course["standard_errors"][name], fmt=style, capsize=3,
                        label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(t, [f"{x:g}" for x in t])
    ax.set_xlabel("time since stimulus onset (s): frames available")
    ax.set_ylabel("direction accuracy (mean over mice)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(FIGURES / "decoding_timecourse.png", dpi=110)
    plt.close(fig)


# --- results.md: triggers ------------------------------------------------------------------------------------
GOAL_LEAD_MS = 66.0  # issue 23: the forecast rule fires two frames earlier than the reactive one ...
# ... at no lower recall


def _cell(point: dict | None) -> str:
    if point is None:
        return "not reached | –"
    lead = "–" if point["lead_ms"] is None else f"{point['lead_ms']:.0f}"
    return f"{point['recall']:.3f} | {lead}"


def _onsets(run: dict) -> int:
    return run["curves"]["reactive"][0]["events"]


def trigger_verdict(reactive: dict | None, forecast: dict | None, window: list[int], level: str, onsets: int) -> str:
    where = f"at precision {level}"
    if reactive is None and forecast is None:
        return f"{where} neither rule is precise enough at any threshold"
    if forecast is None:
        return f"{where} only the reactive rule gets there (recall {reactive['recall']:.3f}): the reactive rule wins"
    rule = f"the forecast rule (frames {window[0]}-{window[1]})"
    if reactive is None:
        return f"{where} only {rule} gets there (recall {forecast['recall']:.3f}, median lead {forecast['lead_ms']:.0f} ms)"
    recall_gap = forecast["recall"] - reactive["recall"]
    lead_gap = (forecast["lead_ms"] or 0.0) - (reactive["lead_ms"] or 0.0)
    met = recall_gap >= 0 and lead_gap >= GOAL_LEAD_MS
    return (f"{where} {rule} has recall {forecast['recall']:.3f} against {reactive['recall']:.3f} ({recall_gap:+.3f}; "
            f"one onset of {onsets} is {1 / onsets:.3g}) and a median lead of {forecast['lead_ms']:.0f} ms against "
            f"{reactive['lead_ms']:.0f} ms: the goal of firing {GOAL_LEAD_MS:.0f} ms earlier at no lower recall is "
            f"{'met' if met else 'not met'}")


def triggers_block() -> str:
    result = load("trigger_compare.json")
    lines = [provenance(result, "trigger_compare.json"), "",
             f"Held-out mice {', '.join(result['mice'])} ({len(result['files'])} Allen excerpts, "
             f"{result['rate_hz']:g} Hz), model `{result['model']}` on {result['backend']}, {result['seconds']:.0f} s "
             "of compute. For each precision level, the threshold of highest recall among those at least that "
             "precise, its recall and its median lead (onset time minus the earliest fire within the event's window).",
             ""]
    by_event: dict[str, list[dict]] = {}
    for run in result["runs"]:
        by_event.setdefault(run["event_file"], []).append(run)
    for event_file, runs in by_event.items():
        lines += [f"**{runs[0]['event']}** (`{event_file}`; {_onsets(runs[0])} onsets after burn-in)", "",
                  "| rule | recall at precision ≥ 0.5 | lead ms | recall at precision ≥ 0.8 | lead ms |",
                  "|---|---|---|---|---|",
                  f"| reactive (activity, current frame) | {_cell(runs[0]['compare']['reactive']['0.5'])} | "
                  f"{_cell(runs[0]['compare']['reactive']['0.8'])} |"]
        for run in runs:
            window = run["forecast_frames"]
            lines.append(f"| forecast, frames {window[0]}-{window[1]} ahead | {_cell(run['compare']['forecast']['0.5'])} "
                         f"| {_cell(run['compare']['forecast']['0.8'])} |")
        lines.append("")
        for level in ("0.5", "0.8"):
            best = max(runs, key=lambda r: -1.0 if r["compare"]["forecast"][level] is None
                       else r["compare"]["forecast"][level]["recall"])
            lines.append(f"- {trigger_verdict(best['compare']['reactive'][level], best['compare']['forecast'][level], best['forecast_frames'], level, _onsets(best))}.")
        lines.append("")
    lines.append("![Lead and recall against precision, every threshold swept](figures/trigger_compare.png)")
    return "\n".join(lines)


def triggers_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = load("trigger_compare.json")
    events = list(dict.fromkeys(run["event_file"] for run in result["runs"]))
    fig, axes = plt.subplots(2, len(events), figsize=(4.2 * len(events), 6.5), squeeze=False)
    for column, event_file in enumerate(events):
        runs = [run for run in result["runs"] if run["event_file"] == event_file]
        curves = [("reactive", runs[0]["curves"]["reactive"])] + [
            (f"forecast {r['forecast_frames'][0]}-{r['forecast_frames'][1]}", r["curves"]["forecast"]) for r in runs]
        for label, points in curves:
            points = [p for p in points if p["precision"] is not None]
            precision = [p["precision"] for p in points]
            axes[0, column].plot(precision, [np.nan if p["lead_ms"] is None else p["lead_ms"] for p in points],
                                 marker=".", label=label)
            axes[1, column].plot(precision, [p["recall"] for p in points], marker=".", label=label)
        axes[0, column].set_title(Path(event_file).stem)
        axes[0, column].set_ylabel("median lead (ms)")
        axes[1, column].set_ylabel("recall")
        axes[1, column].set_xlabel("precision")
        for row in range(2):
            for level in (0.5, 0.8):
                axes[row, column].axvline(level, color="grey", lw=0.5, ls="--")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "trigger_compare.png", dpi=110)
    plt.close(fig)


# --- results.md: cross-mouse pretraining of the decoder ----------------------------------------------------------
PRETRAINING_LABELS = {"pretrained": "pretrained on the other {others} mice, adapted (embeddings + readout)",
                      "scratch": "same architecture from scratch (calibration trials only)",
                      "lda": "per-mouse shrinkage LDA on time bins (`lda_binned`)"}


def size_label(size: str) -> str:
    return "all (the training fold)" if size == "all" else f"{size} trials"


def pretraining_verdict(mean: dict, per_mouse: dict, sizes: list[str], rival: str) -> tuple[list[str], list[str]]:
    """Per size: the pretrained decoder's mean over mice against ``rival``'s (difference, the difference's
    standard error sqrt(se² + se²), mice ahead); and the sizes where it is ahead."""
    parts, ahead = [], []
    for size in sizes:
        ours, theirs = mean["pretrained"][size], mean[rival][size]
        difference = ours["mean"] - theirs["mean"]
        se = float(np.hypot(ours["se"], theirs["se"]))
        mice_ahead = sum(row["pretrained"][size]["mean"] > row[rival][size]["mean"] for row in per_mouse.values())
        if difference > 0:
            ahead.append(size)
        parts.append(f"{size_label(size)}: {ours['mean']:.3f} against {theirs['mean']:.3f} ({difference:+.3f} ± {se:.3f}; "
                     + ("more than" if abs(difference) > se else "within") + " one standard error; "
                     f"ahead on {mice_ahead} of {len(per_mouse)} mice)")
    return parts, ahead


def decoder_pretraining_block() -> str:
    document = load("decoder_pretraining.json")
    sizes, seeds, mean, per_mouse = document["sizes"], document["seeds"], document["mean"], document["per_mouse"]
    mice = list(per_mouse)
    fits = [fit["train_accuracy"] for by_mouse in document["pretraining"].values() for fit in by_mouse.values()]
    fewest = Counter(b for row in per_mouse.values() for b in row["lda_bins"][sizes[0]])
    recipe = document["recipe"]
    lines = [provenance(document, "decoder_pretraining.json")
             + f" {document['wall_time_s'] / 60:.1f} min wall, {document['cpu_time_s'] / 60:.1f} min CPU on "
             f"{document['threads']} thread; pretraining seeds {', '.join(map(str, seeds))}.", "",
             f"Each of the {len(mice)} mice left out in turn; {document['folds']}-fold stratified CV over its trials "
             f"(fold seed {document['fold_seed']}); in each fold the three decoders are fitted on the same calibration "
             "trials (balanced over the 8 directions, drawn from the training fold) and scored on the test fold. "
             "Accuracy: mean over folds (and over pretraining seeds for the two networks) ± standard error over "
             f"folds; mean over mice ± sqrt(sum se²) / {len(mice)}. Chance {document['chance']}. Pretraining: "
             f"{recipe['pretrain_steps']} steps, training accuracy {min(fits):.3f}-{max(fits):.3f} over the "
             f"{len(fits)} runs; adaptation {recipe['adapt_steps']} full-batch steps, from scratch "
             f"{recipe['scratch_steps']}. `lda_binned` at {sizes[0]} trials (2 per direction) chose "
             + ", ".join(f"{plural(b, 'bin')} in {n} folds" for b, n in sorted(fewest.items())) + ".", ""]
    against_lda, ahead_lda = pretraining_verdict(mean, per_mouse, sizes, "lda")
    against_scratch, ahead_scratch = pretraining_verdict(mean, per_mouse, sizes, "scratch")
    behind_lda = [s for s in sizes if s not in ahead_lda]
    lines += ["**Findings** (computed from the tables below):", "",
              "- **Pretrained against per-mouse LDA** (mean over mice): " + "; ".join(against_lda) + ".",
              "- **Pretrained against the same network from scratch**: " + "; ".join(against_scratch) + ".",
              "- **Verdict.** Pretraining on the other mice "
              + ("puts the decoder ahead of per-mouse LDA at every calibration size"
                 if not behind_lda else
                 "does not put the decoder ahead of per-mouse LDA at "
                 + ", ".join(size_label(s) for s in behind_lda)
                 + ("" if not ahead_lda else "; it is ahead at " + ", ".join(size_label(s) for s in ahead_lda)))
              + "; against the same network trained from scratch it is ahead at "
              + (", ".join(size_label(s) for s in ahead_scratch) if ahead_scratch else "no size")
              + ". Issue 22's condition for `fit-head` to offer it (it wins against per-mouse LDA): "
              + ("met." if not behind_lda else "not met.")]
    within = document.get("within_pretraining_mice")
    if within:
        network = [float(np.mean(list(w["held_out_accuracy"].values()))) for w in within.values()]
        lda = [float(np.mean(list(w["lda_held_out_accuracy"].values()))) for w in within.values()]
        seed = next(iter(within.values()))["seed"]
        lines.append(f"- **Diagnostic on the pretraining mice alone** (seed {seed}): pretrained on 4/5 of each "
                     f"pretraining mouse's trials, the network decodes the other 1/5 with that mouse's own embeddings at "
                     f"{np.mean(network):.3f} (mean over the {len(within)} sets of pretraining mice; "
                     f"{min(network):.3f}-{max(network):.3f}), against {np.mean(lda):.3f} for `lda_binned` on the same "
                     "split: the pretrained network itself decodes new trials of the mice it was trained on "
                     + ("at least as well as" if np.mean(network) >= np.mean(lda) else "worse than") + " LDA.")
    lines += ["",
              "| decoder (mean over mice) | " + " | ".join(size_label(s) for s in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for name, label in PRETRAINING_LABELS.items():
        lines.append(f"| {label.format(others=len(mice) - 1)} | "
                     + " | ".join(fmt(mean[name][s]["mean"], mean[name][s]["se"]) for s in sizes) + " |")
        for seed in seeds if name in document["mean_per_seed"] else []:
            cells = document["mean_per_seed"][name][str(seed)]
            lines.append(f"| &nbsp;&nbsp;seed {seed} | " + " | ".join(fmt(cells[s]["mean"], cells[s]["se"]) for s in sizes)
                         + " |")
    lines += ["", "Per mouse (pretrained / from scratch / LDA, mean over folds; ± of the pretrained decoder):", "",
              "| mouse | neurons | " + " | ".join(size_label(s) for s in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for mouse, row in per_mouse.items():
        cells = [f"{row['pretrained'][s]['mean']:.3f} ± {row['pretrained'][s]['se']:.3f} / {row['scratch'][s]['mean']:.3f}"
                 f" / {row['lda'][s]['mean']:.3f}" for s in sizes]
        lines.append(f"| {mouse} | {row['neurons']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- intervals.md ----------------------------------------------------------------------------------------------
COVERAGE_TOLERANCE = 0.02  # issue 25: online coverage within ±0.02 of nominal after the burn-in


def intervals_block() -> str:
    document = load("intervals_test_mice.json")
    intervals = document["intervals"]
    levels = [str(level) for level in intervals["levels"]]
    lines = [provenance(document, "intervals_test_mice.json"), "",
             f"{len(document['files'])} recordings, context {document['context']} frames, bands issued from frame "
             f"{intervals['burn_in_frames']} on scored; method: {intervals['method']}.", "",
             "| level | horizon | coverage, model | coverage, copy-last | interval score, model | "
             "interval score, copy-last | ratio |", "|---|---|---|---|---|---|---|"]
    gaps, ratios = [], []
    for level in levels:
        entry = intervals[level]
        for horizon, row in [*entry["per_horizon"].items(), ("all", entry)]:
            lines.append(f"| {level} | {horizon} | {row['coverage']:.3f} | {row['copy_last_coverage']:.3f} | "
                         f"{row['interval_score']:.4f} | {row['copy_last_interval_score']:.4f} | "
                         f"{row['interval_score_ratio']:.3f} |")
            if horizon != "all":
                gaps.append(abs(row["coverage"] - float(level)))
                ratios.append(row["interval_score_ratio"])
    coverage_met = max(gaps) <= COVERAGE_TOLERANCE
    score_met = max(ratios) < 1.0
    lines += ["", f"Against the issue's target: the largest gap between coverage and its level over levels and "
              f"horizons is {max(gaps):.3f} (limit {COVERAGE_TOLERANCE}: {'met' if coverage_met else 'not met'}); the "
              f"model's interval score over copy-last's (the ratio column) is {min(ratios):.3f} to {max(ratios):.3f} (below copy-last's "
              f"at every horizon and level: {'met' if score_met else 'not met'})."]
    return "\n".join(lines)


def intervals_tuning_block() -> str:
    document = load("intervals_tuning.json")
    levels, horizons = [str(level) for level in document["levels"]], [str(h) for h in document["horizons"]]
    default = document["defaults"]

    def label(setting: dict) -> str:
        text = f"{setting['learning_rate']:g}, {setting['scale_time_constant_frames']:g}"
        is_default = (setting["learning_rate"] == default["learning_rate"]
                      and setting["scale_time_constant_frames"] == default["scale_time_constant_frames"])
        return f"**{text} (default)**" if is_default else text

    def row(name: str, cells: dict) -> str:
        return f"| {name} | " + " | ".join(f"{cells[lv][h]['coverage']:.3f} / {cells[lv][h]['score_ratio']:.3f}"
                                           for lv in levels for h in horizons) + " |"

    settings = document["settings"]
    lines = [provenance(document, "intervals_tuning.json"), "",
             f"{len(document['files'])} recordings, model `{document['model']}`, coverage pooled over the files; cells "
             "are coverage / interval score as a fraction of copy-last's with the same settings:", "",
             "| learning rate, scale time constant | " + " | ".join(f"{lv}: h={h}" for lv in levels for h in horizons) + " |",
             "|---|" + "---|" * (len(levels) * len(horizons))]
    lines += [row(label(s), s["cells"]) for s in settings]
    per_neuron = document.get("per_neuron")
    if per_neuron:
        lines.append(row(f"per-neuron multipliers, {per_neuron['learning_rate']:g}, "
                         f"{per_neuron['scale_time_constant_frames']:g}", per_neuron["cells"]))
    gaps = [(abs(s["cells"][lv][h]["coverage"] - float(lv)), label(s)) for s in settings for lv in levels for h in horizons]
    worst_gap, worst_setting = max(gaps)
    chosen = next(s for s in settings if label(s).startswith("**"))
    behind = [(chosen["cells"][lv][h]["score_ratio"] - min(s["cells"][lv][h]["score_ratio"] for s in settings), lv, h)
              for lv in levels for h in horizons]
    lines += ["", "Computed from the table:", "",
              f"- The largest gap between coverage and its level over the whole grid is {worst_gap:.3f} ({worst_setting}); "
              f"with the default settings it is {max(abs(chosen['cells'][lv][h]['coverage'] - float(lv)) for lv in levels for h in horizons):.3f}.",
              "- The default's interval score is at most {:.3f} above the best setting's in any cell (level {}, h = {}).".format(*max(behind))]
    if per_neuron:
        diffs = [(per_neuron["cells"][lv][h]["score_ratio"] - chosen["cells"][lv][h]["score_ratio"], lv, h)
                 for lv in levels for h in horizons]
        better, worse = min(diffs), max(diffs)
        lines.append(f"- One multiplier per neuron against the shared one: interval score {better[0]:+.3f} at best "
                     f"(level {better[1]}, h = {better[2]}) and {worse[0]:+.3f} at worst (level {worse[1]}, h = {worse[2]}); "
                     f"the shared multiplier is kept ({'per-neuron is better in every cell' if worse[0] < 0 else 'per-neuron is not better everywhere'}).")
    if "neuron_spread" in document:
        lines += ["", f"Smallest ratio of the {levels[-1]} multiplier to the {levels[0]} one at any frame and horizon "
                  f"(below 1 the two bands would cross): {document['smallest_multiplier_ratio']:.3f}.", "",
                  "Coverage of single neurons with the default settings (percentiles 5 / 25 / 50 / 75 / 95 over neurons):", "",
                  "| level | " + " | ".join(f"h={h}" for h in horizons) + " |", "|---|" + "---|" * len(horizons)]
        for lv in levels:
            lines.append(f"| {lv} | " + " | ".join(" / ".join(f"{v:.3f}" for v in document["neuron_spread"][lv][h])
                                                   for h in horizons) + " |")
    return "\n".join(lines)


# --- results.md: the tokenized model, from the shipped checkpoints' own metadata ---------------------------------
def checkpoint_metrics(name: str) -> dict:
    return json.loads((REPOSITORY / "rtcalm" / "models" / name / "config.json").read_text())["metadata"]["metrics"]


def tokens_block() -> str:
    tokens, continuous = checkpoint_metrics("tokens"), checkpoint_metrics("continuous")
    test = tokens["forecast_protocol"]["test"]
    horizons = sorted(test["model"], key=int)
    lines = ["Read from the metadata that `python -m trainer pretrain` stored in the shipped checkpoints "
             "(`rtcalm/models/tokens/config.json`, `rtcalm/models/continuous/config.json`; configs "
             "`configs/pretrain_tokens.json` and `configs/ablation_continuous.json`).", "",
             f"Forecasting on the held-out mice ({', '.join(tokens['data']['test']['mice'])}), "
             f"{tokens['transformer']['steps']} transformer steps (best at {tokens['transformer']['best_step']}), "
             f"trained in {tokens['training_wall_time_s'] / 60:.1f} min:", "",
             "| forecaster | " + " | ".join(f"h={h} mse_ratio" for h in horizons) + " |",
             "|---|" + "---|" * len(horizons),
             "| CalM `tokens` | " + " | ".join(f"{test['model'][h]['mse_ratio']:.4f}" for h in horizons) + " |"]
    for name in ("copy_last", "pooled_ar", "context_mean"):
        if name in test["baselines"]:
            lines.append(f"| {name} | " + " | ".join(f"{test['baselines'][name][h]['mse_ratio']:.4f}" for h in horizons) + " |")
    beats = [h for h in horizons if test["model"][h]["mse_ratio"] < test["baselines"]["pooled_ar"][h]["mse_ratio"]]
    lines += ["", f"The tokenized model has a lower mse_ratio than pooled AR at {len(beats)} of {len(horizons)} horizons.",
              "", "| split | reconstruction R² | perplexity | codes used |", "|---|---|---|---|"]
    for split in ("validation", "test"):
        t = tokens["tokenizer"][split]
        lines.append(f"| {split} | {t['reconstruction_r2']:.3f} | {t['perplexity']:.1f} of {t['codebook_size']} "
                     f"| {t['codes_used']} |")
    other = continuous["forecast_protocol"]["test"]["model"]
    lines += ["", "Tokenizer ablation: the same recipe and budget with continuous inputs (test mice):", "",
              "| input | " + " | ".join(f"h={h} mse_ratio" for h in horizons) + " |", "|---|" + "---|" * len(horizons),
              "| tokens (VQ codes) | " + " | ".join(f"{test['model'][h]['mse_ratio']:.4f}" for h in horizons) + " |",
              "| continuous (no tokenizer) | " + " | ".join(f"{other[h]['mse_ratio']:.4f}" for h in horizons) + " |"]
    better = [h for h in horizons if other[h]["mse_ratio"] < test["model"][h]["mse_ratio"]]
    lines += ["", f"Continuous inputs forecast better at {len(better)} of {len(horizons)} horizons."]
    return "\n".join(lines)


# --- benchmarks.md: every table from the `rtcalm bench ... --json` records in docs/results/bench/ --------------
def bench(name: str) -> dict:
    return load(f"bench/{name}.json")


def bench_machine(records: list[dict]) -> str:
    """One line for the machine and its load, from the records of one block."""
    machine = records[0]["machine"]
    libraries = machine.get("libraries", {})
    loads = [r["machine"].get("load_average_1min", {}) for r in records]
    before = [x["before"] for x in loads if x.get("before") is not None]
    after = [x["after"] for x in loads if x.get("after") is not None]
    versions = ", ".join(f"{name} {libraries[name]}" for name in ("torch", "onnxruntime", "numpy", "pyzmq")
                         if libraries.get(name))
    load = (f"; 1-minute load average {min(before + after):.2f}-{max(before + after):.2f} around the runs"
            if before + after else "")
    commits = sorted({str(r["commit"]) for r in records})
    return (f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, {versions}{load}. "
            f"Code at commit {', '.join(commits)}.")


def commands(records: list[dict], files: list[str]) -> list[str]:
    lines = ["```bash"]
    lines += [f"{r['command']}" for r in records]
    lines += ["```", "", "Stored in " + ", ".join(f"`docs/results/bench/{f}.json`" for f in files) + "."]
    return lines


def ms(stats: dict | None, key: str = "p50_ms") -> str:
    return "–" if not stats or stats.get(key) is None else f"{stats[key]:.3f}"


def target_lines(label: str, targets: dict) -> list[str]:
    out = []
    for name, verdict in targets.items():
        measured = verdict.get("value_ms", verdict.get("value"))
        limit = verdict.get("limit_ms", verdict.get("limit"))
        out.append(f"- {label}: `{name}` {'met' if verdict['met'] else '**not met**'} "
                   f"(measured {measured:.3f}, limit {limit:.3f})")
    return out


LATENCY_RUNS = {"latency-512-tcp": "512 neurons, tcp", "latency-512-ipc": "512 neurons, ipc",
                "latency-4096-tcp": "4096 neurons, tcp"}
STAGES = ("rig_to_daemon", "validate", "stats", "model", "daemon_other", "daemon_to_subscriber", "publish",
          "receive_to_publish", "all_but_model")


def latency_block() -> str:
    records = [bench(name) for name in LATENCY_RUNS]
    runs = [r["result"] for r in records]
    lines = [*commands(records, list(LATENCY_RUNS)), "", bench_machine(records),
             f"Model `{runs[0]['model']}` on `{runs[0]['backend']}`. Milliseconds.", "",
             "| run | frames | p50 | p99 | p99.9 | lost | folded |", "|---|---|---|---|---|---|---|"]
    for label, run in zip(LATENCY_RUNS.values(), runs, strict=True):
        lines.append(f"| {label}, {run['rate_hz']:g} Hz | {run['frames']} | {ms(run)} | {ms(run, 'p99_ms')} | "
                     f"{ms(run, 'p999_ms')} | {run['lost_frames']} | {run['batched_frames']} |")
    lines += ["", "Stages, p50 / p99, and the references measured in the same runs:", "",
              "| stage | " + " | ".join(LATENCY_RUNS.values()) + " |", "|---|" + "---|" * len(runs)]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{ms(r['stages'].get(stage))} / {ms(r['stages'].get(stage), 'p99_ms')}"
                                                 for r in runs) + " |")
    for ref, label in (("bare_step", "reference: bare step, paced"),
                       ("raw_transport", "reference: raw ZeroMQ round trip, paced")):
        lines.append(f"| {label} | " + " | ".join(f"{ms(r.get(ref))} / {ms(r.get(ref), 'p99_ms')}" for r in runs) + " |")
    for ratio, label in (("model_stage_over_bare_step", "model stage / bare step (p50)"),
                         ("all_but_model_over_raw_transport", "all but the model / raw round trip (p50)")):
        lines.append(f"| {label} | " + " | ".join("–" if r.get("ratios", {}).get(ratio) is None
                                                 else f"{r['ratios'][ratio]:.2f}" for r in runs) + " |")
    lines += ["", "Targets, as each run judged them (`targets` in its record):", ""]
    for label, run in zip(LATENCY_RUNS.values(), runs, strict=True):
        lines += target_lines(label, run["targets"])
    lines += ["", "![stage waterfall](figures/latency_waterfall.png)"]
    return "\n".join(lines)


def transport_block() -> str:
    record = bench("transport-512")
    result = record["result"]
    rows = result["rows"]
    lines = [*commands([record], ["transport-512"]), "", bench_machine([record]), "",
             f"| round trip, {result['frame_bytes'] / 1e3:.1f} kB out, {result['reply_bytes'] / 1e3:.1f} kB back | "
             f"paced at {result['rate_hz']:g} Hz, p50 / p99 (ms) | back to back, p50 / p99 (ms) |", "|---|---|---|"]
    for kind, label in (("zeromq_tcp", "ZeroMQ tcp (PUSH -> echo -> PUB/SUB)"), ("zeromq_ipc", "ZeroMQ ipc"),
                        ("plain_tcp_socket", "plain TCP socket")):
        paced, b2b = rows[f"{kind}_paced"], rows[f"{kind}_back_to_back"]
        lines.append(f"| {label} | {ms(paced)} / {ms(paced, 'p99_ms')} | {ms(b2b)} / {ms(b2b, 'p99_ms')} |")
    z_paced, z_b2b = rows["zeromq_tcp_paced"]["p50_ms"], rows["zeromq_tcp_back_to_back"]["p50_ms"]
    plain = rows["plain_tcp_socket_paced"]["p50_ms"]
    lines += ["", f"Paced, the ZeroMQ tcp round trip's median is {z_paced / z_b2b:.1f}x its back-to-back median and "
              f"{z_paced / plain:.1f}x a plain socket's paced median."]
    return "\n".join(lines)


CLOSED_LOOP_RUNS = {"latency-512-rules": "512, 16 rules", "latency-4096-rules": "4096, 16 rules",
                    "latency-512-intervals": "512, intervals 0.8 and 0.95"}
HEADS_RUN = "latency-512-heads-interleaved"
HEAD_LIMIT_MS = 0.1  # issue 22: a loaded head adds at most this to p50
TRIGGER_LIMIT_MS = 0.1  # issue 23: the trigger path adds at most this to the median over the prediction path


def closed_loop_block() -> str:
    base_record = bench("latency-512-tcp")
    records = [bench(name) for name in CLOSED_LOOP_RUNS]
    quality, heads = bench("quality-512"), bench(HEADS_RUN)
    runs = dict(zip(CLOSED_LOOP_RUNS.values(), (r["result"] for r in records), strict=True))
    base = base_record["result"]
    lines = [*commands(records + [quality, heads], list(CLOSED_LOOP_RUNS) + ["quality-512", HEADS_RUN]), "",
             bench_machine(records + [quality, heads]), "Each run is compared with the run without rules, intervals or heads "
             "(`latency-512-tcp.json`, the first table of this page). Milliseconds.", "",
             "| run | rig send→prediction p50 | p99 | receive→publish p50 | p99 | model stage p50 | rules stage p50 | p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in {"512 (no rules, intervals or heads)": base, **runs}.items():
        stages, rules = run["stages"], (run.get("triggers") or {}).get("rules_stage")
        lines.append(f"| {name} | {ms(run)} | {ms(run, 'p99_ms')} | {ms(stages['receive_to_publish'])} | "
                     f"{ms(stages['receive_to_publish'], 'p99_ms')} | {ms(stages['model'])} | {ms(rules)} | "
                     f"{ms(rules, 'p99_ms')} |")
    lines += ["", "Triggers (each frame that fired: its last trigger against its own prediction; negative: the "
              "trigger arrived first):", "",
              "| run | triggers | frames fired | rig send→trigger p50 | p99 | trigger minus prediction p50 | p99 |",
              "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        if run.get("triggers"):
            tr = run["triggers"]
            lines.append(f"| {name} | {tr['count']} | {tr['frames_fired']} | {ms(tr['rig_to_last_trigger'])} | "
                         f"{ms(tr['rig_to_last_trigger'], 'p99_ms')} | {ms(tr['trigger_minus_prediction'])} | "
                         f"{ms(tr['trigger_minus_prediction'], 'p99_ms')} |")
    lines += ["", "Targets, as each run judged them:", ""]
    for name, run in runs.items():
        lines += target_lines(name, run["targets"])
    parts = quality["result"]["parts"]
    added = parts["added by intervals"]["p50_ms"]
    through = (runs["512, intervals 0.8 and 0.95"]["stages"]["receive_to_publish"]["p50_ms"]
               - base["stages"]["receive_to_publish"]["p50_ms"])
    lines += ["", f"Forecast quality per frame at {quality['result']['neurons']} neurons and "
              f"{quality['result']['horizon']} steps, timed alone (`rtcalm bench quality`):", "",
              "| part | p50 | p99 |", "|---|---|---|"]
    lines += [f"| {name} | {times['p50_ms']:.4f} | {times['p99_ms']:.4f} |" for name, times in parts.items()]
    lines += ["", f"Intervals add {added:.4f} ms p50 per frame timed alone (limit 0.05 ms: "
              f"{'met' if added <= 0.05 else '**not met**'}). Through the daemon, the run with them has receive→publish "
              f"p50 {through:+.3f} ms against the run without them; the two runs ran one after the other, so that "
              "difference also carries their run-to-run noise.", "", *heads_lines(heads["result"])]
    return "\n".join(lines)


def heads_lines(result: dict) -> list[str]:
    """The decoding heads against no head, interleaved in one run (rtcalm.bench.interleave)."""
    report = result["interleaved"]
    kinds = {head["name"]: head.get("features", "ema") + (f", {head['n_bins']} bins" if "n_bins" in head else "")
             for head in result["heads"]}
    lines = [f"Decoding heads at {result['neurons']} neurons against no head, in the same run: {report['cycles']} "
             f"cycles of {len(report['arms'])} blocks of {report['block_frames']} frames (one head or none per block, "
             f"the order rotated every cycle, the first {report['settle_frames']} frames of a block not scored). A "
             "head's added cost is its block's median minus the same cycle's no-head block's median, "
             f"over the cycles: median [25th, 75th percentile], ms (limit {HEAD_LIMIT_MS} ms on receive→publish).", "",
             "| head | receive→publish | model stage | rig send→prediction | limit |", "|---|---|---|---|---|"]
    for name, added in report["added"].items():
        cells = [f"{a['median_ms']:+.3f} [{a['p25_ms']:+.3f}, {a['p75_ms']:+.3f}]"
                 for a in (added["receive_to_publish"], added["model"], added["closed_loop"])]
        met = added["receive_to_publish"]["median_ms"] <= HEAD_LIMIT_MS
        lines.append(f"| {kinds[name]} | {' | '.join(cells)} | {'met' if met else '**not met**'} |")
    return lines


def soak_block() -> str:
    record = bench("soak")
    result = record["result"]
    lines = [*commands([record], ["soak"]), "", bench_machine([record]), "",
             "| t (s) | daemon RSS (MiB) | p50 (ms) | p99 (ms) | max (ms) | frames sent | predictions |",
             "|---|---|---|---|---|---|---|"]
    for w in result["windows"]:
        lines.append(f"| {w['t_s']:.0f} | {w['rss_mib']:.1f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                     f"{w['max_ms']:.1f} | {w['frames_sent']} | {w['predictions']} |")
    checks = result["checks"]
    lines += ["", "Checks: " + "; ".join(f"{name} {c['value']:g} (limit {c['limit']:g}): "
                                         f"{'met' if c['met'] else '**not met**'}" for name, c in checks.items())
              + f". {result['frames_sent']} frames sent, {result['rig_dropped']} dropped by the rig, "
              f"{result['error_messages']} error messages."]
    return "\n".join(lines)


def step_block() -> str:
    record = bench("step")
    result = record["result"]
    lines = [*commands([record], ["step"]), "", bench_machine([record]),
             f"Model: `{result['model']}` ({result['config']['input_mode']} input mode, {result['parameters']:,} "
             f"parameters), {result['threads']} torch thread(s).", "",
             "| neurons | history | p50 (wall) | p99 (wall) | p50 (CPU time) | p99 (CPU time) |", "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['neurons']} | {row['history']} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | "
                     f"{row['cpu_p50_ms']:.2f} ms | {row['cpu_p99_ms']:.2f} ms |")
    lines += ["", "Targets, as the run judged them:", "", *target_lines("step", result["targets"])]
    return "\n".join(lines)


BACKEND_LABELS = {"torch": "torch eager", "onnx": "ONNX Runtime (N dynamic)", "onnx-static": "ONNX Runtime (N fixed)"}


def backends_block() -> str:
    record = bench("backends")
    result = record["result"]
    lines = [*commands([record], ["backends"]), "", bench_machine([record]),
             f"Model `{result['model']}`, {result['threads']} thread(s). Not available on this machine: "
             + "; ".join(f"{k} ({v})" for k, v in result["not_available"].items()) + ".", "",
             "| neurons | backend | p50 | p99 | x torch (wall) | CPU p50 | x torch (CPU) | max \\|diff\\| |",
             "|---|---|---|---|---|---|---|---|"]
    faster = []
    for run in result["runs"]:
        for backend, row in run["results"].items():
            lines.append(f"| {run['neurons']} | {BACKEND_LABELS.get(backend, backend)} | {row['p50_ms']:.2f} ms | "
                         f"{row['p99_ms']:.2f} ms | {row['speedup_vs_torch_eager']:.2f} | {row['cpu_p50_ms']:.2f} ms | "
                         f"{row['cpu_speedup_vs_torch_eager']:.2f} | {row['max_abs_diff_vs_torch']:.1e} |")
        onnx = run["results"].get("onnx")
        if onnx:
            faster.append((run["neurons"], onnx["speedup_vs_torch_eager"]))
    lines += ["", "Against the target \"on this CPU, ONNX Runtime faster than torch eager\": "
              + ", ".join(f"{n} neurons {s:.2f}x ({'met' if s > 1 else '**not met**'})" for n, s in faster) + "."]
    return "\n".join(lines)


# --- the registry ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    doc: str
    name: str
    render: Callable[[], str]
    figure: Callable[[], None] | None = None


BLOCKS = [
    Block("results.md", "forecast", forecast_block),
    Block("results.md", "context", context_block),
    Block("results.md", "served-decoder", served_block, served_figure),
    Block("results.md", "served-rules", served_rules_block),
    Block("results.md", "decoder-pretraining", decoder_pretraining_block),
    Block("results.md", "triggers", triggers_block, triggers_figure),
    Block("results.md", "tokens", tokens_block),
    Block("intervals.md", "intervals", intervals_block),
    Block("intervals.md", "intervals-tuning", intervals_tuning_block),
    Block("benchmarks.md", "latency", latency_block),
    Block("benchmarks.md", "transport", transport_block),
    Block("benchmarks.md", "closed-loop", closed_loop_block),
    Block("benchmarks.md", "soak", soak_block),
    Block("benchmarks.md", "step", step_block),
    Block("benchmarks.md", "backends", backends_block),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a doc differs from what its results render")
    args = parser.parse_args(argv)
    stale = []
    for doc in dict.fromkeys(block.doc for block in BLOCKS):
        path = DOCS / doc
        current = path.read_text()
        updated = current
        for block in (b for b in BLOCKS if b.doc == doc):
            updated = replace_block(updated, block.name, block.render(), f"docs/{doc}")
        if updated != current:
            stale.append(f"docs/{doc}")
            if not args.check:
                path.write_text(updated)
    if args.check:
        for doc in stale:
            print(f"{doc} differs from what its stored results render: run python docs/render.py", file=sys.stderr)
        return 1 if stale else 0
    for block in BLOCKS:
        if block.figure is not None:
            block.figure()
    print("rendered: " + (", ".join(stale) or "nothing changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
