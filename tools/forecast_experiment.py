"""The forecasting evidence of docs/results.md: the default recipe vs every baseline on held-out mice.

    python tools/forecast_experiment.py [--config configs/pretrain_default.json] [--seeds 0 1 2] \\
        [--out runs/forecast-experiment] [--data-root ../shared/data/real]

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

The result, with the command, commit and machine, goes to docs/results/forecast.json (``--result``) and the
figures to docs/figures (``--figures``); ``python docs/render.py`` writes the block of docs/results.md.
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


def evaluate_seed(seed: int, checkpoint: Path, baselines_dir: Path, test_recordings, pooled_ar, *, first: bool,
                  out: Path) -> dict:
    """One seed's mse_ratio of the model, its ablations and every baseline on the test files (and, for the
    first seed, session adaptation and the forecast figure), with the commit of the code that scored it."""
    from rtcalm.eval.forecast import baseline_forecasters, evaluate, model_forecaster
    from rtcalm.eval.report import PACKAGE_ROOT, code_state
    from rtcalm.model import load_checkpoint
    from rtcalm.model.baselines import baseline_forecaster, load_baseline

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
    entry = {"seed": seed, "mse_ratio": scores, "parameters": model.n_parameters(), "commit": code_state(PACKAGE_ROOT)}
    if first:
        entry["calibration"] = calibrated_scores(model, test_recordings)
        plot_forecasts(model, baselines_dir, test_recordings[0], out / "forecast_examples.png")
    return entry


def run(args) -> dict:
    import torch

    from rtcalm.eval.forecast import fit_pooled_ar
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
        # a seed's scores are kept beside its model, so a rerun with more seeds evaluates only the new ones
        stored = out / f"model-seed{seed}" / "evaluation.json"
        if stored.exists():
            entry = json.loads(stored.read_text())
        else:
            entry = evaluate_seed(seed, checkpoint, baselines_dir, test_recordings, pooled_ar,
                                  first=seed == args.seeds[0], out=out)
            stored.write_text(json.dumps(entry, indent=1) + "\n")
        per_seed.append(entry)
        print(json.dumps({"seed": seed, "model": entry["mse_ratio"]["model"], "mlp": entry["mse_ratio"]["mlp"]}),
              flush=True)
    names = list(per_seed[0]["mse_ratio"])
    summary = {name: {str(h): mean_and_spread([s["mse_ratio"][name][str(h)] for s in per_seed]) for h in HORIZONS}
               for name in names}
    plot_curves(out, args.seeds, out / "forecast_training_curves.png")
    document = {"config": str(args.config), "context": CONTEXT, "horizons": HORIZONS,
                "test_mice": config.data.test_mice, "test_files": [r.meta.source for r in test_recordings],
                "train_mice": sorted({s.mouse for s in train}), "seeds": args.seeds,
                "summary": summary, "per_seed": per_seed}
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "pretrain_default.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "runs" / "forecast-experiment"),
                        help="the training runs and the figures as drawn")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "real"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--result", default=str(REPO / "docs" / "results" / "forecast.json"),
                        help="where the stored result goes (docs/render.py renders it)")
    parser.add_argument("--figures", default=str(REPO / "docs" / "figures"), help="where the two figures go")
    args = parser.parse_args(argv)
    import shutil

    from rtcalm.eval.report import provenance

    Path(args.out).mkdir(parents=True, exist_ok=True)
    document = run(args)
    document["made_by"] = provenance(["python", "tools/forecast_experiment.py", *(sys.argv[1:] if argv is None else argv)])
    Path(args.result).write_text(json.dumps(document, indent=2) + "\n")
    Path(args.figures).mkdir(parents=True, exist_ok=True)
    for name in ("forecast_examples.png", "forecast_training_curves.png"):
        shutil.copy(Path(args.out) / name, Path(args.figures) / name)
    print(f"wrote {args.result} and the figures in {args.figures}; python docs/render.py renders them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
