"""``Calm.step`` timing: median and p99 of one incremental step per neuron count and history length.

"History" is how many frames the stream has consumed before the timed steps (the state is filled with
``step_many`` on random frames first); the streams of different history lengths are stepped in turn, so
load from other processes affects them equally and their ratio stays meaningful. Wall-clock times and
the CPU time of the stepping thread are both reported: on a shared machine the wall clock also counts
the time the step waited for a core, the CPU time (with one thread) does not.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time

import torch


def time_steps(model, n_neurons: int, histories: list[int], n_steps: int,
               seed: int = 0) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Step times in seconds for one neuron count at every history length: (wall clock, thread CPU)."""
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


def run_step_benchmark(model, neurons: list[int], histories: list[int], n_steps: int, on_row=None) -> dict:
    """The benchmark document: machine facts, the model's config and one row per (neurons, history)."""
    model.eval()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for n_neurons in neurons:
        wall_by_history, cpu_by_history = time_steps(model, n_neurons, histories, n_steps)
        for history in histories:
            times, cpu = wall_by_history[history], cpu_by_history[history]
            row = {"neurons": n_neurons, "history": history, "median_ms": 1e3 * statistics.median(times),
                   "p99_ms": 1e3 * percentile(times, 99), "mean_ms": 1e3 * statistics.fmean(times),
                   "cpu_median_ms": 1e3 * statistics.median(cpu), "cpu_p99_ms": 1e3 * percentile(cpu, 99),
                   "steps": len(times)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_before": load,
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "parameters": model.n_parameters(), "config": model.config.to_dict(), "rows": rows}
