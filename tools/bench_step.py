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
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

from rtcalm.model import Calm, CalmConfig


def time_steps(model: Calm, n_neurons: int, histories: list[int], n_steps: int,
               seed: int = 0) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Step times (seconds) for one neuron count at every history length: (wall clock, CPU time of
    this thread). With one torch thread the CPU time is what the step costs on a core of its own; the
    wall time also contains waiting for the core when other processes compete for it.

    The streams for the different history lengths are stepped in turn (a, b, a, b, ...), so load from
    other processes on a shared machine hits all of them alike and their ratio stays meaningful."""
    generator = torch.Generator().manual_seed(seed)
    states = {}
    for history in histories:
        states[history] = model.new_state(n_neurons)
        model.step_many(torch.randn(history, n_neurons, generator=generator), states[history])
    frames = torch.randn(n_steps + 10, n_neurons, generator=generator)
    for i in range(10):  # warm-up: first calls touch fresh memory and pick kernels
        for state in states.values():
            model.step(frames[i], state)
    wall = {history: [] for history in histories}
    cpu = {history: [] for history in histories}
    gc.disable()
    try:
        for i in range(10, n_steps + 10):
            for history, state in states.items():
                start_cpu, start = time.thread_time(), time.perf_counter()
                model.step(frames[i], state)
                wall[history].append(time.perf_counter() - start)
                cpu[history].append(time.thread_time() - start_cpu)
    finally:
        gc.enable()
    return wall, cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


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
    rows = []
    for n_neurons in args.neurons:
        wall_by_history, cpu_by_history = time_steps(model, n_neurons, args.history, args.steps)
        for history in args.history:
            times, cpu = wall_by_history[history], cpu_by_history[history]
            row = {"neurons": n_neurons, "history": history, "median_ms": 1e3 * statistics.median(times),
                   "p99_ms": 1e3 * percentile(times, 99), "mean_ms": 1e3 * statistics.fmean(times),
                   "cpu_median_ms": 1e3 * statistics.median(cpu), "cpu_p99_ms": 1e3 * percentile(cpu, 99),
                   "steps": len(times)}
            rows.append(row)
            print(f"{n_neurons:>8} {history:>8} {row['median_ms']:>10.3f} {row['p99_ms']:>8.3f} {row['mean_ms']:>8.3f}"
                  f" {row['cpu_median_ms']:>11.3f} {row['cpu_p99_ms']:>8.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": load,
                       "config": cfg.to_dict(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
