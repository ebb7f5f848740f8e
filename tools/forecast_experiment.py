"""The forecasting evidence of docs/results.md: the default recipe vs every baseline on held-out mice.

    python tools/forecast_experiment.py [--config configs/pretrain_default.json] [--seeds 0 1 2] \\
        [--out runs/forecast-experiment] [--data-root ../shared/data/real] [--render docs/results.md]

For every seed: trains the model with the config (``python -m trainer pretrain``, resumable: a finished
seed is reused, an interrupted one resumed) and fits the learned baselines on the same training mice
(``python -m trainer baselines``). Then, on the config's test mice, with the forecast-eval protocol
(rtcalm.eval.forecast) at ``--context 64`` frames and horizons 1/5/15/30:

- the model and every baseline (copy-last, pooled AR fitted on the training recordings, per-neuron MLP,
  POCO-style), per seed, with mean and spread (min-max) over seeds;
- the population ablation: each of 4 groups of neurons forecast with the other neurons circularly
  shifted in time by half the recording (their own structure kept, their alignment with the group gone);
- session adaptation: ``calibrate_neuron_embeddings`` on each test file's first 70 % vs a pooled AR
  fitted on the same frames;
- figures: forecasts against truth for a few neurons, and the training curves.

Everything lands in ``<out>/forecast.json`` and ``<out>/*.png``; ``--render`` replaces the block between
``<!-- forecast-experiment:begin -->`` and ``<!-- forecast-experiment:end -->`` in that markdown file.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

HORIZONS = [1, 5, 15, 30]
CONTEXT = 64
BEGIN, END = "<!-- forecast-experiment:begin -->", "<!-- forecast-experiment:end -->"


def train_seed(config, seed: int, data_root: str, out: Path) -> tuple[Path, Path]:
    """(model checkpoint dir, baselines dir) of one seed, training what is missing."""
    from trainer.baselines import BaselineRecipe, fit_baselines
    from trainer.pretrain import pretrain

    run = out / f"model-seed{seed}"
    if not (run / "metrics.json").exists():
        pretrain(replace(config, seed=seed, name=f"{config.name}-seed{seed}"), data_root, run,
                 resume=(run / "checkpoints" / "last").exists(), progress=False)
    baselines = out / f"baselines-seed{seed}"
    if not (baselines / "baselines.json").exists():
        fit_baselines(config, data_root, baselines, recipe=BaselineRecipe(seed=seed), progress=False)
    return run / "checkpoints" / "best", baselines


def shuffled_population_forecaster(model_forecast, n_groups: int = 4, seed: int = 0):
    """Each group of neurons forecast with every other neuron circularly shifted in time by half the
    recording: the population the model reads is real activity, but not the activity of this moment."""

    def forecast(z: np.ndarray, test_times: np.ndarray, context_frames: int) -> np.ndarray:
        n_frames, n_neurons = z.shape
        groups = np.array_split(np.random.default_rng(seed).permutation(n_neurons), n_groups)
        out = np.empty((test_times.size, n_neurons, HORIZONS[-1]), dtype=np.float32)
        for group in groups:
            shifted = np.roll(z, n_frames // 2, axis=0)
            shifted[:, group] = z[:, group]
            out[:, group] = model_forecast(shifted, test_times, context_frames)[:, group, :HORIZONS[-1]]
        return out

    return forecast


def population_off(model):
    """A copy of an encoder-mode model with its FiLM zeroed: its per-neuron path alone (what the model
    forecasts without the population; with the default recipe, the per-neuron warm start itself)."""
    import copy

    import torch

    off = copy.deepcopy(model)
    with torch.no_grad():
        off.population_film.weight.zero_()
        off.population_film.bias.zero_()
    return off


def calibrated_scores(model, recordings) -> dict:
    """Per test file: the model with neuron embeddings calibrated on the first 70 % vs a pooled AR fitted
    on the same frames, both scored on the protocol's test targets (the last 30 %)."""
    import torch

    from rtcalm.eval.forecast import evaluate, first_test_frame, fit_pooled_ar, zscore
    from rtcalm.model.calibrate import calibrate_neuron_embeddings

    per_file = []
    for recording in recordings:
        t0 = first_test_frame(recording.n_frames)
        z = zscore(recording.dff, recording.dff[:t0])
        embedding, _ = calibrate_neuron_embeddings(model, z[:t0], seed=0)
        calibrated = calibrated_model_forecaster(model, embedding)
        pooled = fit_pooled_ar([recording.dff[:t0]], order=16, horizon=HORIZONS[-1])
        with torch.inference_mode():
            per_file.append(evaluate([recording], {"model": calibrated, "pooled_ar": pooled}, HORIZONS, CONTEXT))
    return {name: {str(h): float(np.mean([f["per_file"][0][name][str(h)]["mse_ratio"] for f in per_file]))
                   for h in HORIZONS} for name in ("model", "pooled_ar")}


def calibrated_model_forecaster(model, embedding):
    """:func:`rtcalm.eval.forecast.model_forecaster` with a neuron embedding added at every position."""
    import torch

    from rtcalm.eval.forecast import model_forecaster

    class WithEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, frames, **kwargs):
            return self.inner(frames, neuron_embedding=embedding, **kwargs)

    return model_forecaster(WithEmbedding())


def mean_and_spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "seeds": [float(v) for v in values]}


def run(args) -> dict:
    import torch

    from rtcalm.eval.forecast import baseline_forecasters, evaluate, fit_pooled_ar, model_forecaster
    from rtcalm.model import load_checkpoint
    from rtcalm.model.baselines import baseline_forecaster, load_baseline
    from trainer.config import load_train_config
    from trainer.data import load_sessions, split_by_mouse

    torch.set_num_threads(args.threads)
    config = load_train_config(args.config)
    sessions, _ = load_sessions(args.data_root, config.data, log=lambda *_: None)
    train, _, test = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    test_recordings = [s.recording for s in test if not s.recording.is_trial_structured]
    pooled_ar = fit_pooled_ar([e for s in train for e in s.recording.epochs()], order=16, horizon=HORIZONS[-1])
    out = Path(args.out)
    per_seed = []
    for seed in args.seeds:
        checkpoint, baselines_dir = train_seed(config, seed, args.data_root, out)
        model = load_checkpoint(checkpoint)
        model_forecast = model_forecaster(model)
        forecasters = {"model": model_forecast,
                       "model_population_shuffled": shuffled_population_forecaster(model_forecast, seed=seed),
                       "model_population_off": model_forecaster(population_off(model)),
                       **baseline_forecasters(pooled_ar, HORIZONS[-1]),
                       **{kind: baseline_forecaster(load_baseline(baselines_dir / kind)) for kind in ("mlp", "poco")}}
        forecasters.pop("context_mean")
        result = evaluate(test_recordings, forecasters, HORIZONS, CONTEXT)
        scores = {name: {str(h): float(np.mean([f[name][str(h)]["mse_ratio"] for f in result["per_file"]]))
                         for h in HORIZONS} for name in forecasters}
        entry = {"seed": seed, "mse_ratio": scores, "parameters": model.n_parameters()}
        if seed == args.seeds[0]:
            entry["calibration"] = calibrated_scores(model, test_recordings)
            plot_forecasts(model, baselines_dir, test_recordings[0], out / "forecast_examples.png")
        per_seed.append(entry)
        print(json.dumps({"seed": seed, "model": scores["model"], "mlp": scores["mlp"]}), flush=True)
    names = list(per_seed[0]["mse_ratio"])
    summary = {name: {str(h): mean_and_spread([s["mse_ratio"][name][str(h)] for s in per_seed]) for h in HORIZONS}
               for name in names}
    plot_curves(out, args.seeds, out / "forecast_training_curves.png")
    document = {"config": str(args.config), "context": CONTEXT, "horizons": HORIZONS,
                "test_mice": config.data.test_mice, "test_files": [r.meta.source for r in test_recordings],
                "train_mice": sorted({s.mouse for s in train}), "seeds": args.seeds,
                "summary": summary, "per_seed": per_seed}
    (out / "forecast.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def plot_forecasts(model, baselines_dir: Path, recording, path: Path, n_neurons: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtcalm.eval.forecast import first_test_frame, model_forecaster, zscore
    from rtcalm.model.baselines import baseline_forecaster, load_baseline

    t0 = first_test_frame(recording.n_frames)
    reference = recording.dff[:t0]
    z = zscore(recording.dff, reference)
    mean, std = reference.mean(0), np.where(reference.std(0) > 1e-8, reference.std(0), 1.0)
    times = np.arange(t0, recording.n_frames - HORIZONS[-1])
    neurons = np.argsort(recording.dff[t0:].std(0))[::-1][:n_neurons]  # the most active in the test part
    model_z = model_forecaster(model)(z, times, CONTEXT)
    mlp_z = baseline_forecaster(load_baseline(baselines_dir / "mlp"))(z, times, CONTEXT)
    fig, axes = plt.subplots(n_neurons, 2, figsize=(12, 2.2 * n_neurons), sharex=True)
    for row, neuron in enumerate(neurons):
        for col, h in enumerate((1, 15)):
            ax = axes[row, col]
            truth = recording.dff[times + h, neuron]
            ax.plot(times + h, truth, color="black", lw=1.0, label="truth")
            ax.plot(times + h, model_z[:, neuron, h - 1] * std[neuron] + mean[neuron], color="tab:blue", lw=1.0,
                    label="CalM default")
            ax.plot(times + h, mlp_z[:, neuron, h - 1] * std[neuron] + mean[neuron], color="tab:orange", lw=0.8,
                    alpha=0.8, label="per-neuron MLP")
            ax.set_ylabel(f"neuron {neuron}\nΔF/F")
            if row == 0:
                ax.set_title(f"{h} frame(s) ahead ({h / 30 * 1000:.0f} ms)")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("frame (test part of the recording)")
    fig.suptitle(f"{recording.meta.source}: held-out mouse, context {CONTEXT} frames", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(out: Path, seeds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
    for seed in seeds:
        log = out / f"model-seed{seed}" / "log.jsonl"
        if log.exists():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            records = [r for r in records if r.get("stage") == "transformer"]
            steps = [r["step"] for r in records]
            train_ax.plot(steps, [r.get("train_copy_last_ratio", r["train_loss"]) for r in records], label=f"seed {seed}")
            val_ax.plot(steps, [r["validation_mse_ratio_vs_copy_last"] for r in records], label=f"seed {seed}")
        baselines = out / f"baselines-seed{seed}" / "baselines.json"
        if baselines.exists():
            curve = json.loads(baselines.read_text())["mlp"]["curve"]
            train_ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], ls=":", color="gray",
                          label="MLP baseline" if seed == seeds[0] else None)
    train_ax.set(title="training loss (copy-last ratio, ΔF/F units)", xlabel="step")
    val_ax.set(title="validation mouse: MSE / copy-last MSE", xlabel="step")
    train_ax.legend(fontsize=7)
    val_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(document: dict, figures_dir: str) -> str:
    summary, horizons = document["summary"], [str(h) for h in document["horizons"]]
    labels = {"model": "**CalM `default`** (encoder mode)", "model_population_shuffled":
              "CalM `default`, other neurons shifted in time (population ablation)",
              "model_population_off": "CalM `default`, population pathway off (FiLM zeroed: its per-neuron path)",
              "mlp": "per-neuron MLP (the anchor's recipe, 4,000 steps)",
              "poco": "POCO-style MLP + population FiLM", "pooled_ar": "pooled linear AR(16)", "copy_last": "copy-last"}
    lines = [BEGIN, "", f"Held-out test mice {', '.join(document['test_mice'])} ({len(document['test_files'])} files), "
             f"trained on mice {', '.join(document['train_mice'])}; context {document['context']} frames; "
             f"mse_ratio (lower is better, copy-last = 1), mean over seeds {document['seeds']} with min-max. "
             "Every learned baseline is refitted per seed on the same training recordings. "
             "Generated by `python tools/forecast_experiment.py --render docs/results.md`.", "",
             "| forecaster | " + " | ".join(f"h={h}" for h in horizons) + " |", "|---|" + "---|" * len(horizons)]
    for name in ("model", "mlp", "poco", "pooled_ar", "copy_last", "model_population_shuffled",
                 "model_population_off"):
        cells = [f"{summary[name][h]['mean']:.3f} ({summary[name][h]['min']:.3f}-{summary[name][h]['max']:.3f})"
                 for h in horizons]
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    best = {h: min(summary[n][h]["mean"] for n in ("mlp", "poco", "pooled_ar")) for h in horizons}
    gains = [f"h={h}: {100 * (1 - summary['model'][h]['mean'] / best[h]):+.1f} %" for h in horizons]
    lines += ["", "Model vs the best baseline at each horizon (relative mse_ratio): " + ", ".join(gains) + "."]
    calibration = document["per_seed"][0].get("calibration")
    if calibration:
        lines += ["", f"Session adaptation (seed {document['seeds'][0]}): neuron embeddings calibrated on each test "
                  "file's first 70 % vs a pooled AR fitted on the same frames, scored on the last 30 %:", "",
                  "| forecaster | " + " | ".join(f"h={h}" for h in horizons) + " |", "|---|" + "---|" * len(horizons),
                  "| CalM `default` + calibrated neuron embeddings | "
                  + " | ".join(f"{calibration['model'][h]:.3f}" for h in horizons) + " |",
                  "| pooled AR(16) fitted on the file's first 70 % | "
                  + " | ".join(f"{calibration['pooled_ar'][h]:.3f}" for h in horizons) + " |"]
    lines += ["", f"![forecasts against truth]({figures_dir}/forecast_examples.png)", "",
              f"![training curves]({figures_dir}/forecast_training_curves.png)", "", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "pretrain_default.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "runs" / "forecast-experiment"))
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "real"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", help="markdown file whose forecast-experiment block is replaced")
    parser.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="where --render copies the PNGs")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    document = run(args)
    if args.render:
        import shutil

        target = Path(args.render)
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        for name in ("forecast_examples.png", "forecast_training_curves.png"):
            shutil.copy(Path(args.out) / name, figures / name)
        block = render(document, "figures")
        text = target.read_text()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        target.write_text(text)
        print(f"rendered into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
