"""Benchmark ``Calm.step``: median and p99 time of one incremental step per neuron count and history length.

    python tools/bench_step.py                       # default config, 1 thread, the issue's grid
    python tools/bench_step.py --threads 2 --neurons 512 4096 --history 32 1024 --steps 300
    python tools/bench_step.py --model default       # a shipped / saved model instead of a fresh config
    python tools/bench_step.py --json out.json       # also write the table as JSON

"History" is how many frames the stream has consumed before the timed steps (the state is filled with
``step_many`` on random frames first); the streams of different history lengths are timed in turn, step
by step, so that load from other processes affects them equally. Wall-clock times and the CPU time of
the stepping thread are both reported: on a shared machine the wall clock also counts the time the step
waited for a core, the CPU time (with one thread) does not. Weights are random unless --model is given; the cost does not
depend on their values. Targets from issue 4 on the 2-core CPU: median <= 2 ms at 512 neurons, 4096
neurons under 33 ms, history 1024 within 1.2x of history 32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from rtcalm.bench.step import run_step_benchmark
from rtcalm.model import Calm, CalmConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or checkpoint directory (default: a fresh default config)")
    parser.add_argument("--config", help="JSON file with CalmConfig fields (instead of --model)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--neurons", type=int, nargs="+", default=[128, 512, 1024, 4096])
    parser.add_argument("--history", type=int, nargs="+", default=[32, 1024])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per cell (default 300)")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        from rtcalm.model import load_model
        model = load_model(args.model)
    elif args.config:
        with open(args.config) as f:
            model = Calm(CalmConfig.from_dict(json.load(f)))
    else:
        model = Calm(CalmConfig())
    model.eval()
    cfg = model.config
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"model: d_model={cfg.d_model} layers={cfg.n_layers} heads={cfg.n_heads} mlp={cfg.mlp_hidden} "
          f"window={cfg.attention_window_frames} latents={cfg.n_latents} input={cfg.input_mode} "
          f"params={model.n_parameters():,}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before: {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'neurons':>8} {'history':>8} {'median ms':>10} {'p99 ms':>8} {'mean ms':>8} {'cpu median':>11} {'cpu p99':>8}")
    def print_row(row):
        print(f"{row['neurons']:>8} {row['history']:>8} {row['median_ms']:>10.3f} {row['p99_ms']:>8.3f} "
              f"{row['mean_ms']:>8.3f} {row['cpu_median_ms']:>11.3f} {row['cpu_p99_ms']:>8.3f}", flush=True)

    document = run_step_benchmark(model, args.neurons, args.history, args.steps, on_row=print_row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
