"""POYO-CAP's ablation on real data: neuron curriculum regimes and pretraining objectives, several seeds.

    python tools/curriculum_experiment.py --config configs/pretrain_tokens.json --out runs/curriculum \\
        --transformer-steps 200 --seeds 0 1 2 --workers 2

Rows (each trained with ``python -m trainer pretrain`` on the config's data and mouse split, changing only
``transformer.neuron_curriculum`` / ``transformer.objective``, the seed and the step budget):

    curriculum            predictable neurons first, then the unpredictable ones (POYO-CAP)
    from scratch          the unpredictable phase alone (same fine-tuning steps, no pretraining phase)
    mixed                 all neurons every step (the default recipe)
    reverse               unpredictable first, then predictable
    mixed, latent masked  all neurons, the latent masked objective instead of next-token prediction

For every run it records forecasting on the held-out test mice (the trainer's ``metrics.json``: the
forecast-eval protocol) and direction decoding on the grating recordings (``rtcalm decode-eval
--task direction``: a head fitted on the frozen backbone, 5-fold over trials). It writes
``OUT/curriculum.json`` with per-run numbers and, per row, the mean over seeds and the half-width of the
95 % confidence interval (Student t, n - 1 degrees of freedom). Runs already finished in OUT are reused,
so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
ROWS = {  # row name -> transformer config changes
    "curriculum": {"neuron_curriculum": "curriculum"},
    "from scratch": {"neuron_curriculum": "unpredictable_only"},
    "mixed": {"neuron_curriculum": "mixed"},
    "reverse": {"neuron_curriculum": "reverse"},
    "mixed, latent masked": {"neuron_curriculum": "mixed", "objective": "latent_masked"},
}
GRATING_FILES = "surlab_Park_et_al/sample-data/glm/*_data.mat"


def run_name(row: str, seed: int) -> str:
    return f"{row.replace(', ', '-').replace(' ', '-')}-seed{seed}"


def make_config(base: dict, row: str, seed: int, steps: int) -> dict:
    config = json.loads(json.dumps(base))
    config["name"] = run_name(row, seed)
    config["seed"] = seed
    transformer = config["transformer"]
    transformer.update(steps=steps, warmup_steps=max(1, steps // 10), validate_every=max(1, steps // 4),
                       checkpoint_every=max(1, steps // 4), **ROWS[row])
    return config


def run(command: list[str], log: Path) -> None:
    with open(log, "w") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log}")


def one_run(base: dict, row: str, seed: int, args) -> dict:
    name = run_name(row, seed)
    run_dir = args.out / name
    metrics_path, decode_path = run_dir / "metrics.json", run_dir / "decode-direction.json"
    if not metrics_path.exists():
        config_path = args.out / "configs" / f"{name}.json"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(make_config(base, row, seed, args.transformer_steps), indent=2))
        resume = ["--resume"] if (run_dir / "checkpoints" / "last").exists() else []
        run([sys.executable, "-m", "trainer", "pretrain", "--config", str(config_path), "--data-root",
             str(args.data_root), "--out", str(run_dir), "--no-progress", *resume], args.out / f"{name}.log")
    if not decode_path.exists():
        files = sorted(str(p) for p in args.data_root.glob(GRATING_FILES))
        with open(decode_path.with_suffix(".tmp"), "w") as f:
            result = subprocess.run([sys.executable, "-m", "rtcalm", "decode-eval", *files, "--task", "direction",
                                     "--model", str(run_dir / "checkpoints" / "best"), "--json"],
                                    stdout=f, stderr=subprocess.PIPE, text=True, cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError(f"decode-eval for {name} failed: {result.stderr[-2000:]}")
        decode_path.with_suffix(".tmp").replace(decode_path)
    metrics = json.loads(metrics_path.read_text())
    decode = json.loads(decode_path.read_text())
    test = metrics["forecast_protocol"]["test"]
    return {"row": row, "seed": seed, "run": str(run_dir),
            "forecast_mse_ratio": {h: test["model"][h]["mse_ratio"] for h in map(str, test["horizons"])},
            "pooled_ar_mse_ratio": {h: test["baselines"]["pooled_ar"][h]["mse_ratio"] for h in map(str, test["horizons"])},
            "direction_accuracy": decode["model"], "linear_mean_response": decode["baselines"]["linear_mean_response"],
            "chance": decode["baselines"]["chance"], "best_step": metrics["transformer"]["best_step"],
            "steps": metrics["transformer"]["steps"]}


def mean_and_ci(values: list[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    half_width = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": half_width, "n": int(n)}


def summarise(results: list[dict]) -> dict:
    rows = {}
    for row in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        horizons = list(runs[0]["forecast_mse_ratio"])
        rows[row] = {"forecast_mse_ratio": {h: mean_and_ci([r["forecast_mse_ratio"][h] for r in runs]) for h in horizons},
                     "direction_accuracy": mean_and_ci([r["direction_accuracy"] for r in runs]),
                     "seeds": [r["seed"] for r in runs]}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "pretrain_tokens.json")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "real")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "curriculum")
    parser.add_argument("--transformer-steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (each trains on one thread)")
    args = parser.parse_args(argv)
    if args.transformer_steps < 2 or args.workers < 1 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--transformer-steps must be >= 2, --workers >= 1, and --seeds distinct")
    if not args.data_root.is_dir():
        parser.error(f"--data-root {args.data_root} is not a directory")
    base = json.loads(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(row, seed) for seed in args.seeds for row in args.rows]
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda job: one_run(base, *job, args), jobs))
    document = {"config": str(args.config), "transformer_steps": args.transformer_steps, "seeds": args.seeds,
                "test_mice": base["data"]["test_mice"], "runs": results, "rows": summarise(results)}
    (args.out / "curriculum.json").write_text(json.dumps(document, indent=2) + "\n")
    for row, summary in document["rows"].items():
        forecast = "  ".join(f"h{h} {v['mean']:.3f}±{v['ci95']:.3f}" for h, v in summary["forecast_mse_ratio"].items())
        accuracy = summary["direction_accuracy"]
        print(f"{row:22s} {forecast}  direction {accuracy['mean']:.3f}±{accuracy['ci95']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
