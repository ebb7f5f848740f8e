"""Decoding on the grating mice: every decoder of ``rtcalm decode-eval`` over fold seeds, behaviour tasks,
backbones compared, a confusion matrix, and a per-mouse tuning diagnosis (a research experiment: the
decoding results docs/results.md reports come from tools/served_experiment.py).

    python tools/decode_experiment.py --model default [--compare tokens continuous] --out runs/decode \\
        [--seeds 0 1 2] [--reuse]

Runs :func:`rtcalm.eval.decode.evaluate` (the decode-eval protocol, unchanged: 5-fold stratified CV,
response 0-2 s) on every grating file in ``$RTCALM_REAL_DATA`` (default ../shared/data/real) for
direction (each fold seed) and for running speed and pupil (seed 0), with the time-resolved heads of
:func:`rtcalm.eval.decode.time_resolved_decoders` on the model named. Writes ``<out>/decode.json``
(all decode-eval documents) and a confusion-matrix PNG (``<out>/confusion.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
GRATING_GLOB = "surlab_Park_et_al/sample-data/glm/*_data.mat"
DIRECTION_ROWS = [  # (key, label) in table order
    ("model", "CalM head on pooled hidden states (today's head)"),
    ("model_time_resolved", "**time-resolved head on the backbone** (per-frame hidden states, PCA, bins, LDA)"),
    ("raw_time_resolved", "the same time-resolved head on the raw frames the backbone reads (30 Hz)"),
    ("lda_binned", "shrinkage LDA (Ledoit-Wolf) on time bins, bins by inner CV"),
    ("logistic_binned", "logistic on time bins, bins and C by inner CV"),
    ("linear_mean_response", "logistic on mean response (the old baseline)"),
    ("chance", "chance (majority class of the training folds)"),
]
REGRESSION_ROWS = [
    ("model", "ridge on pooled hidden states"),
    ("model_time_resolved", "time-resolved head on the backbone (PCA, bins, ridge)"),
    ("raw_time_resolved", "the same head on the raw frames the backbone reads"),
    ("ridge_binned", "ridge on time bins, bins and alpha by inner CV"),
    ("linear_mean_response", "ridge on mean response"),
    ("chance", "training-fold mean"),
]


def real_data_dir() -> Path:
    return Path(os.environ.get("RTCALM_REAL_DATA", REPOSITORY.parent / "shared" / "data" / "real"))


def run_decode(recordings, task: str, frames, seed: int) -> dict:
    from rtcalm.eval.decode import evaluate, time_resolved_decoders

    return evaluate(recordings, task, frames.pooled_features, folds=5, seed=seed,
                    fold_decoders=time_resolved_decoders(frames))


def value(document: dict, name: str) -> float:
    return document[name] if name in document else document["baselines"][name]


def tuning_diagnosis(recordings) -> list[dict]:
    """Per mouse: trials per direction and their order; how many neurons are direction-tuned (one-way
    ANOVA of the mean 0-2 s response across the 8 directions, p < 0.01; about 1 % of untuned neurons pass
    by chance) or respond at all (paired t-test of the 0-2 s mean against the -1-0 s mean, p < 0.01);
    the most tuned neurons in any 0.5 s window of the epoch (a response misaligned with the onset inside
    the epoch would show there); the population's mean ΔF/F before and after onset; and shrinkage LDA on
    8 bins of the -1-0 s window (chance if nothing before the onset carries the direction)."""
    from scipy.stats import f_oneway, ttest_rel

    from rtcalm.eval.decode import fold_indices
    from rtcalm.model.heads.linear import ShrinkageLDA, time_binned

    rows = []
    for rec in recordings:
        time_s = rec.trial_time_s
        directions = np.asarray(rec.trials["direction_deg"])
        labels = np.unique(directions, return_inverse=True)[1]
        response = rec.dff[:, (time_s >= 0) & (time_s < 2.0)].mean(axis=1)  # (trials, neurons)
        baseline = rec.dff[:, time_s < 0].mean(axis=1)
        anova_p = f_oneway(*[response[labels == c] for c in range(labels.max() + 1)], axis=0).pvalue
        responsive_p = ttest_rel(response, baseline, axis=0).pvalue
        windows = {}
        for start in np.arange(time_s[0], time_s[-1] - 0.5 + 1e-9, 0.25):
            mean = rec.dff[:, (time_s >= start) & (time_s < start + 0.5)].mean(axis=1)
            p = f_oneway(*[mean[labels == c] for c in range(labels.max() + 1)], axis=0).pvalue
            windows[float(start)] = int(np.sum(p < 0.01))
        best_start = max(windows, key=windows.get)
        pre_onset = time_binned(rec.dff[:, time_s < 0], 8)
        predictions = np.empty_like(labels)
        for train, test in fold_indices(labels, "accuracy", 5, 0):
            predictions[test] = ShrinkageLDA().fit(pre_onset[train], labels[train]).predict(pre_onset[test])
        population = rec.dff.mean(axis=(0, 2))  # mean over trials and neurons, per frame
        rows.append({
            "mouse": rec.meta.mouse, "neurons": rec.n_neurons, "trials": int(len(directions)),
            "trials_per_direction": sorted(set(np.bincount(labels).tolist())),
            "first_directions": directions[:9].astype(int).tolist(),
            "tuned_neurons": int(np.sum(anova_p < 0.01)), "smallest_anova_p": float(anova_p.min()),
            "responsive_neurons": int(np.sum(responsive_p < 0.01)),
            "most_tuned_in_any_window": windows[best_start], "that_window_start_s": best_start,
            "population_pre_onset": float(population[time_s < 0].mean()),
            "population_0_2s": float(population[(time_s >= 0) & (time_s < 2)].mean()),
            "pre_onset_lda_accuracy": float(np.mean(predictions == labels)),
        })
    return rows


def component_ablation(recordings, frames, bins: int = 4, seed: int = 0) -> dict:
    """Direction accuracy of the backbone head with a fixed number of principal components per neuron
    (1, 2, 4, 8, all D) and a fixed ``bins``, no inner CV (an ablation, not a tuned decoder): PCA on each
    outer fold's training trials, shrinkage LDA, the decode-eval folds of ``seed``. ``raw``: the raw frames
    the backbone reads alone; ``raw+1``: concatenated with the first component, per neuron and frame."""
    from rtcalm.eval.decode import fold_indices
    from rtcalm.model.heads.linear import ShrinkageLDA, principal_projection, time_binned

    rows = []
    for rec in recordings:
        raw, hidden = frames(rec)
        trials, window, neurons, width = hidden.shape
        labels = np.unique(np.asarray(rec.trials["direction_deg"]), return_inverse=True)[1]
        counts = sorted({k for k in (1, 2, 4, 8, width) if k <= width})
        scores = {}
        for k in counts:
            predictions = np.empty_like(labels)
            for train, test in fold_indices(labels, "accuracy", 5, seed):
                mean, basis = principal_projection(hidden[train], k)
                features = time_binned(((hidden - mean) @ basis).reshape(trials, window, neurons * k), bins)
                predictions[test] = ShrinkageLDA().fit(features[train], labels[train]).predict(features[test])
            scores[str(k)] = float(np.mean(predictions == labels))
        for name in ("raw", "raw+1"):
            predictions = np.empty_like(labels)
            for train, test in fold_indices(labels, "accuracy", 5, seed):
                per_frame = raw
                if name == "raw+1":
                    mean, basis = principal_projection(hidden[train], 1)
                    per_frame = np.concatenate([raw, (hidden - mean) @ basis], axis=-1)
                features = time_binned(per_frame.reshape(trials, window, -1), bins)
                predictions[test] = ShrinkageLDA().fit(features[train], labels[train]).predict(features[test])
            scores[name] = float(np.mean(predictions == labels))
        rows.append({"mouse": rec.meta.mouse, **scores})
    keys = [k for k in rows[0] if k != "mouse"]
    return {"bins": bins, "seed": seed, "per_mouse": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


def alignment_check(recordings, rate_hz: float) -> dict:
    """What resampling the 16 Hz epochs to the model's rate does (rtcalm.data.resample, as model_inputs):
    where the onset lands, the resampled value of a unit step at onset just before it, and shrinkage LDA
    on 8 bins of the response window at the native rate, after the polyphase resampling, and after
    linear interpolation (the daemon's causal StreamingResampler), same folds (seed 0)."""
    from scipy.signal import resample_poly

    from rtcalm.data.resample import rational_ratio, resample_recording
    from rtcalm.eval.decode import fold_indices
    from rtcalm.model.heads.linear import ShrinkageLDA, time_binned

    def accuracy(features, labels):
        predictions = np.empty_like(labels)
        for train, test in fold_indices(labels, "accuracy", 5, 0):
            predictions[test] = ShrinkageLDA().fit(features[train], labels[train]).predict(features[test])
        return float(np.mean(predictions == labels))

    rows = []
    for rec in recordings:
        labels = np.unique(np.asarray(rec.trials["direction_deg"]), return_inverse=True)[1]
        resampled = resample_recording(rec, rate_hz)
        t_in, t_out = rec.trial_time_s, resampled.trial_time_s
        linear = np.stack([np.stack([np.interp(t_out, t_in, trial[:, n]) for n in range(rec.n_neurons)], axis=1)
                           for trial in rec.dff])
        window_in, window_out = (t_in >= 0) & (t_in < 2), (t_out >= 0) & (t_out < 2)
        rows.append({"mouse": rec.meta.mouse,
                     "native": accuracy(time_binned(rec.dff[:, window_in], 8), labels),
                     "polyphase": accuracy(time_binned(resampled.dff[:, window_out], 8), labels),
                     "linear": accuracy(time_binned(linear[:, window_out], 8), labels)})
    rec = recordings[0]
    t_in = rec.trial_time_s
    t_out = t_in[0] + np.arange(resample_recording(rec, rate_hz).dff.shape[1]) / rate_hz
    step = (t_in >= 0).astype(np.float64)
    up, down = rational_ratio(rec.rate_hz, rate_hz)
    response = resample_poly(step, up, down, padtype="line")
    onset = int(np.argmin(np.abs(t_out)))
    return {"rate_hz": rate_hz, "onset_frame": onset, "onset_time_s": float(t_out[onset]),
            "window_frames": int(np.sum((t_out >= 0) & (t_out < 2))),
            "step_before_onset": {f"{t_out[j]:+.3f}": float(response[j]) for j in range(onset - 4, onset + 1)},
            "per_mouse": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in ("native", "polyphase", "linear")}}


def confusion_png(document: dict, names: list[str], path: Path, classes: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.0), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        counts = np.zeros((len(classes), len(classes)))
        for row in document["per_file"]:
            for true, predicted in zip(row["targets"], row["predictions"][name], strict=True):
                counts[int(true), int(predicted)] += 1
        rates = counts / counts.sum(axis=1, keepdims=True)
        axis.imshow(rates, vmin=0, vmax=1, cmap="viridis")
        labels = [f"{c:g}" for c in classes]
        axis.set_xticks(range(len(classes)), labels, fontsize=7)
        axis.set_yticks(range(len(classes)), labels, fontsize=7)
        axis.set_xlabel("decoded direction (deg)")
        axis.set_ylabel("true direction (deg)")
        accuracy = np.trace(counts) / counts.sum()
        axis.set_title(f"{name}\n(all 6 mice pooled, accuracy {accuracy:.3f})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def code_state() -> dict:
    """The commit the numbers were measured at, and any uncommitted change under rtcalm/ (the tree is shared)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": [line[3:] for line in git("status", "--porcelain", "rtcalm").splitlines()]}


def model_identity(name: str) -> tuple:
    from rtcalm.engine.base import model_version, weights_sha256
    from rtcalm.model.checkpoint import WEIGHTS_FILE, load_model, resolve_model

    directory = resolve_model(name)
    return load_model(name), model_version(directory, weights_sha256(directory / WEIGHTS_FILE))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="shipped model name or checkpoint directory")
    parser.add_argument("--compare", nargs="*", default=[], metavar="MODEL",
                        help="further backbones scored on the direction task (same seeds), in a table of their own")
    parser.add_argument("--out", type=Path, default=Path("runs/decode"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fold seeds of the direction task")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what <out>/decode.json already holds for the same model versions and seeds; "
                             "compute only what is missing")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from rtcalm.data import load_recording
    from rtcalm.eval.decode import BackboneFrames

    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(real_data_dir().glob(GRATING_GLOB))
    if not files:
        raise SystemExit(f"no grating files under {real_data_dir()} (set RTCALM_REAL_DATA)")
    recordings = [load_recording(path) for path in files]
    model, version = model_identity(args.model)
    stored = args.out / "decode.json"
    results = json.loads(stored.read_text()) if args.reuse and stored.exists() else {}
    if results and (results.get("model_version") != version or results.get("seeds") != args.seeds):
        raise SystemExit(f"{stored} holds {results.get('model_version')} with seeds {results.get('seeds')}, not "
                         f"{version} with seeds {args.seeds}: run without --reuse")
    started = time.time()
    if not results:
        results = {"model": args.model, "model_version": version, "d_model": model.config.d_model,
                   "seeds": args.seeds, "direction": {}, "code": code_state(), "wall_time_s": 0.0}
    results.setdefault("code", code_state())
    results["input_mode"] = getattr(model.config, "input_mode", None)
    frames = BackboneFrames(model)  # the backbone runs once per file, for every task and seed
    for seed in args.seeds:
        if str(seed) not in results["direction"]:
            results["direction"][str(seed)] = run_decode(recordings, "direction", frames, seed)
            print(f"direction seed {seed}: " + ", ".join(
                f"{k} {value(results['direction'][str(seed)], k):.3f}" for k, _ in DIRECTION_ROWS), file=sys.stderr)
    for task in ("speed", "pupil"):
        if task not in results:
            results[task] = run_decode(recordings, task, frames, args.seeds[0])
            print(f"{task}: " + ", ".join(f"{k} {value(results[task], k):.3f}" for k, _ in REGRESSION_ROWS),
                  file=sys.stderr)
    if "components" not in results:
        results["components"] = component_ablation(recordings, frames)
    results.setdefault("compare", {})
    for name in args.compare:
        other, other_version = model_identity(name)
        entry = results["compare"].get(name, {})
        if entry.get("model_version") != other_version:
            entry = {"model_version": other_version, "d_model": other.config.d_model, "direction": {}}
        other_frames = BackboneFrames(other)
        for seed in args.seeds:
            if str(seed) not in entry["direction"]:
                entry["direction"][str(seed)] = run_decode(recordings, "direction", other_frames, seed)
        if "pupil" not in entry:
            entry["pupil"] = run_decode(recordings, "pupil", other_frames, args.seeds[0])
        results["compare"][name] = entry
        print(f"compared {name}", file=sys.stderr)
    results["classes"] = sorted(float(d) for d in np.unique(recordings[0].trials["direction_deg"]))
    results["wall_time_s"] += time.time() - started
    results["tuning"] = tuning_diagnosis(recordings)  # cheap: recomputed on every run
    results["alignment"] = alignment_check(recordings, model.config.rate_hz)
    stored.write_text(json.dumps(results, indent=1))
    confusion_png(results["direction"][str(args.seeds[0])], ["model_time_resolved", "lda_binned"],
                  args.out / "confusion.png", results["classes"])
    print(f"wrote {stored} and {args.out / 'confusion.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
