"""``Calm.step`` timing (``rtcalm bench step``): p50 and p99 of one incremental step per neuron count and
history length, and issue 4's targets for them.

"History" is how many frames the stream has consumed before the timed steps (the state is filled with
``step_many`` on random frames first); the streams of different history lengths are stepped in turn, so
load from other processes affects them equally and their ratio stays meaningful. Wall-clock times and
the CPU time of the stepping thread are both reported: on a shared machine the wall clock also counts
the time the step waited for a core, the CPU time (with one thread) does not.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch

from rtcalm.bench.timing import format_targets
from rtcalm.stats.percentile import percentile

# Issue 4's targets for the shipped default model on one thread (docs/benchmarks.md, "Model step"): the
# p50 step at 512 neurons, at 4096 neurons (under one frame period at 30 Hz), and the longest history's
# p50 over the shortest's (the step's cost must not grow with the history).
TARGETS = {"p50_ms_at_512": 2.0, "p50_ms_at_4096": 1000.0 / 30, "history_ratio": 1.2}
WARMUP_STEPS = 10


def time_steps(model, n_neurons: int, histories: list[int], n_steps: int,
               seed: int = 0) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Step times in seconds for one neuron count at every history length: (wall clock, thread CPU)."""
    generator = torch.Generator().manual_seed(seed)
    states = {}
    for history in histories:
        states[history] = model.new_state(n_neurons)
        model.step_many(torch.randn(history, n_neurons, generator=generator), states[history])
    frames = torch.randn(n_steps + WARMUP_STEPS, n_neurons, generator=generator)
    for i in range(WARMUP_STEPS):  # first calls touch fresh memory and pick kernels
        for state in states.values():
            model.step(frames[i], state)
    wall = {history: [] for history in histories}
    cpu = {history: [] for history in histories}
    gc.disable()
    try:
        for i in range(WARMUP_STEPS, n_steps + WARMUP_STEPS):
            for history, state in states.items():
                start_cpu, start = time.thread_time(), time.perf_counter()
                model.step(frames[i], state)
                wall[history].append(time.perf_counter() - start)
                cpu[history].append(time.thread_time() - start_cpu)
    finally:
        gc.enable()
    return wall, cpu


def _row(n_neurons: int, history: int, wall_s: list[float], cpu_s: list[float]) -> dict:
    wall_ms, cpu_ms = 1e3 * np.asarray(wall_s), 1e3 * np.asarray(cpu_s)
    wall_p50, wall_p99 = percentile(wall_ms, [50, 99])
    cpu_p50, cpu_p99 = percentile(cpu_ms, [50, 99])
    return {"neurons": n_neurons, "history": history, "steps": len(wall_s), "p50_ms": float(wall_p50),
            "p99_ms": float(wall_p99), "mean_ms": float(wall_ms.mean()), "cpu_p50_ms": float(cpu_p50),
            "cpu_p99_ms": float(cpu_p99)}


def run_step_benchmark(model, neurons: list[int], histories: list[int], n_steps: int, on_row=None) -> dict:
    """The model's size and config, one row per (neurons, history) and the targets that apply."""
    model.eval()
    rows = []
    for n_neurons in neurons:
        wall_by_history, cpu_by_history = time_steps(model, n_neurons, histories, n_steps)
        for history in histories:
            rows.append(_row(n_neurons, history, wall_by_history[history], cpu_by_history[history]))
            if on_row is not None:
                on_row(rows[-1])
    return {"threads": torch.get_num_threads(), "parameters": model.n_parameters(),
            "config": model.config.to_dict(), "rows": rows, "targets": check_targets(rows)}


def check_targets(rows: list[dict]) -> dict:
    """Each of issue 4's targets this run measured: the limit, the value and whether it is met."""
    targets = {}
    for n in (512, 4096):
        medians = [row["p50_ms"] for row in rows if row["neurons"] == n]
        if medians:
            limit, value = TARGETS[f"p50_ms_at_{n}"], max(medians)
            targets[f"p50_at_{n}_neurons"] = {"limit_ms": limit, "value_ms": value, "met": value <= limit}
    ratio = max((value for value in history_ratios(rows).values()), default=None)
    if ratio is not None:
        targets["history_ratio"] = {"limit": TARGETS["history_ratio"], "value": ratio,
                                    "met": ratio <= TARGETS["history_ratio"]}
    return targets


def history_ratios(rows: list[dict]) -> dict[int, float]:
    """Per neuron count with two histories or more: the longest history's p50 over the shortest's."""
    by_neurons: dict[int, dict[int, float]] = {}
    for row in rows:
        by_neurons.setdefault(row["neurons"], {})[row["history"]] = row["p50_ms"]
    return {n: p50s[max(p50s)] / p50s[min(p50s)] for n, p50s in by_neurons.items() if len(p50s) > 1}


def format_report(result: dict) -> str:
    lines = [f"Calm.step, model {result['model']} ({result['parameters']:,} parameters, input "
             f"{result['config']['input_mode']}), {result['threads']} thread(s) (ms):",
             f"  {'neurons':>8} {'history':>8} {'p50':>8} {'p99':>8} {'cpu p50':>8} {'cpu p99':>8}"]
    for row in result["rows"]:
        lines.append(f"  {row['neurons']:>8} {row['history']:>8} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                     f"{row['cpu_p50_ms']:>8.3f} {row['cpu_p99_ms']:>8.3f}")
    for n, ratio in history_ratios(result["rows"]).items():
        lines.append(f"  {n} neurons: longest / shortest history p50 ratio {ratio:.2f}")
    lines.append("  targets (issue 4, the default model on one thread):")
    lines += format_targets(result["targets"], 24)
    return "\n".join(lines)
