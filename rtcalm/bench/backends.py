"""The model step on every backend this machine offers (``rtcalm bench backends``): p50 and p99 per step,
and the ratio to torch eager on the CPU measured in the same run.

Backends (default: all that can run here):
  torch             Calm.step on the CPU, eager: the reference and the baseline of every ratio
  onnx              ONNX Runtime CPU, the step graph with N dynamic (what the daemon exports in memory)
  onnx-static       ONNX Runtime CPU, a graph compiled for exactly N (rtcalm compile --neurons N)
  torch-cuda        Calm.step on the GPU, eager
  torch-cuda-graph  the step graph on the GPU, captured as a CUDA graph
  tensorrt          TensorRT FP32 engine for exactly N, CUDA graph
  tensorrt-fp16     TensorRT with FP16 allowed, CUDA graph (only if it passes rtcalm compile's accuracy check)

A "step" is ``engine.step(frame)`` as the daemon calls it: frame in (host to device on a GPU), the step,
forecast out (device to host); every stream first consumes ``receptive_field`` frames. The backends are
stepped in turn, frame by frame, so load from other processes on a shared machine hits all of them alike
and their ratios stay meaningful. Wall-clock times; the CPU time of the stepping thread too (with one
thread, on a busy machine the wall clock also counts waiting for a core). Every backend's forecasts are
compared with torch's at every timed step (``max_abs_diff_vs_torch``; a value near 0.1 or above would be
a code flip at a near tie, see docs/backends.md).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rtcalm.errors import RtcalmError
from rtcalm.stats.percentile import percentile

CPU_BACKENDS = ["torch", "onnx", "onnx-static"]
GPU_BACKENDS = ["torch-cuda", "torch-cuda-graph", "tensorrt", "tensorrt-fp16"]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
WARMUP_STEPS = 10


def available_backends() -> tuple[list[str], dict[str, str]]:
    """The backends that can run here, and for each one that cannot, why."""
    from rtcalm.engine.loading import onnxruntime_status, tensorrt_status

    usable, why_not = ["torch"], {}
    cuda_why = "torch sees no CUDA GPU" + (" (CPU-only torch build)" if torch.version.cuda is None else "")
    statuses = {"onnx": onnxruntime_status(), "cuda": (torch.cuda.is_available(), cuda_why),
                "tensorrt": tensorrt_status()}
    groups = {"onnx": ["onnx", "onnx-static"], "cuda": ["torch-cuda", "torch-cuda-graph"],
              "tensorrt": ["tensorrt", "tensorrt-fp16"]}
    for group, (ok, why) in statuses.items():
        for name in groups[group]:
            if ok:
                usable.append(name)
            else:
                why_not[name] = why
    return usable, why_not


def choose_backends(requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The backends to run (torch first: it is every ratio's baseline) and why the others cannot run here.
    ``requested``: a subset of ALL_BACKENDS, or None for every usable one; RtcalmError for one that cannot run."""
    usable, why_not = available_backends()
    if requested is None:
        return usable, why_not
    missing = [name for name in requested if name not in usable]
    if missing:
        raise RtcalmError("; ".join(f"backend {name} cannot run here: {why_not[name]}" for name in missing))
    return ["torch"] + [name for name in requested if name != "torch"], why_not


def make_engine(name: str, checkpoint: Path, n_neurons: int, threads: int, compiled_dir: Path):
    """The engine for one backend row, or (None, reason) when it cannot be built."""
    from rtcalm.engine import NeuronRange, load_engine
    from rtcalm.engine.build import compile_artifact

    if name == "torch":
        return load_engine(checkpoint, "torch", device="cpu"), None
    if name == "onnx":
        return load_engine(checkpoint, "onnx", threads=threads), None
    if name in ("torch-cuda", "torch-cuda-graph"):
        from rtcalm.engine.torch_backend import TorchEngine
        from rtcalm.model import load_checkpoint

        engine = load_engine(checkpoint, "torch", device="cpu")  # for the version string
        mode = "graph" if name == "torch-cuda-graph" else "eager"
        return TorchEngine(load_checkpoint(checkpoint), engine.version, str(checkpoint), device="cuda",
                           mode=mode), None
    backend = "onnx" if name == "onnx-static" else "tensorrt"
    fp16 = name == "tensorrt-fp16"
    out = compiled_dir / f"{name}-n{n_neurons}{'.onnx' if backend == 'onnx' else '.plan'}"
    try:
        compile_artifact(checkpoint, backend, NeuronRange.exactly(n_neurons), fp16=fp16, out=out)
    except RtcalmError as exc:
        return None, str(exc)
    return load_engine(checkpoint, backend, artifact=out, threads=threads), None


def bench_neurons(names: list[str], checkpoint: Path, n_neurons: int, steps: int, threads: int,
                  compiled_dir: Path, seed: int, progress=None) -> dict:
    """Every backend of ``names`` stepped in turn over the same frames at ``n_neurons``: one row each."""
    engines, skipped = {}, {}
    for name in names:
        engine, why = make_engine(name, checkpoint, n_neurons, threads, compiled_dir)
        if engine is None:
            skipped[name] = why
            if progress is not None:
                progress(f"{n_neurons} neurons, {name}: skipped ({why})")
        else:
            engines[name] = engine
    rng = np.random.default_rng(seed)
    first = next(iter(engines.values()))
    history = (rng.standard_normal((first.receptive_field, n_neurons)).cumsum(0) * 0.3).astype(np.float32)
    frames = (rng.standard_normal((steps + WARMUP_STEPS, n_neurons)).cumsum(0) * 0.3).astype(np.float32)
    streams = {name: engine.new_stream(n_neurons) for name, engine in engines.items()}
    for name, engine in engines.items():
        engine.fold(history, streams[name])
        for i in range(WARMUP_STEPS):  # first calls touch fresh memory and pick kernels
            engine.step(frames[i:i + 1], streams[name])
    wall = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    max_diff = dict.fromkeys(engines, 0.0)
    gc.disable()
    try:
        for i in range(WARMUP_STEPS, steps + WARMUP_STEPS):
            frame = frames[i:i + 1]
            reference = None
            for name, engine in engines.items():
                start_cpu, start = time.thread_time(), time.perf_counter()
                forecast = engine.step(frame, streams[name])
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.thread_time() - start_cpu)
                if name == "torch":
                    reference = forecast
                elif reference is not None:
                    max_diff[name] = max(max_diff[name], float(np.abs(forecast - reference).max()))
    finally:
        gc.enable()
    wall_p50 = {name: percentile(times, 50) for name, times in wall.items()}
    cpu_p50 = {name: percentile(times, 50) for name, times in cpu.items()}
    rows = {}
    for name, engine in engines.items():
        rows[name] = {
            "engine_backend": engine.backend, "p50_ms": wall_p50[name] * 1e3,
            "p99_ms": percentile(wall[name], 99) * 1e3, "cpu_p50_ms": cpu_p50[name] * 1e3,
            "speedup_vs_torch_eager": _ratio(wall_p50.get("torch"), wall_p50[name]),
            # CPU time of the stepping thread: robust to waiting for a core on a busy machine (CPU backends
            # with one thread; on a GPU it only counts the host side)
            "cpu_speedup_vs_torch_eager": _ratio(cpu_p50.get("torch"), cpu_p50[name]),
            "max_abs_diff_vs_torch": max_diff[name] if name != "torch" else 0.0,
        }
    return {"neurons": n_neurons, "steps": steps, "results": rows, "skipped": skipped}


def _ratio(baseline: float | None, value: float) -> float | None:
    return baseline / value if baseline and value > 0 else None


def run_backends_benchmark(*, model: str, neurons: list[int], steps: int, backends: list[str] | None,
                           threads: int, seed: int = 0, progress=None) -> dict:
    """Every chosen backend at every neuron count (see the module docstring)."""
    from rtcalm.model import resolve_model

    names, why_not = choose_backends(backends)
    checkpoint = resolve_model(model)
    torch.set_num_threads(threads)
    runs = []
    with tempfile.TemporaryDirectory(prefix="rtcalm-bench-backends-") as compiled_dir:
        for n in neurons:
            if progress is not None:
                progress(f"{n} neurons: {', '.join(names)}")
            runs.append(bench_neurons(names, checkpoint, n, steps, threads, Path(compiled_dir), seed, progress))
    return {"model": model, "checkpoint": str(checkpoint), "threads": threads,
            "not_available": {name: why_not[name] for name in ALL_BACKENDS if name in why_not}, "runs": runs}


def format_report(result: dict) -> str:
    lines = [f"engine.step, model {result['model']}, {result['threads']} thread(s) (ms; x torch: torch eager's "
             "p50 over the backend's, same run)",
             f"{'neurons':>8} {'backend':<18} {'p50 ms':>9} {'p99 ms':>9} {'x torch':>8} {'cpu p50':>8} "
             f"{'x torch':>8} {'max|diff|':>10}"]

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    for run in result["runs"]:
        for name, row in run["results"].items():
            lines.append(f"{run['neurons']:>8} {name:<18} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} "
                         f"{ratio(row['speedup_vs_torch_eager']):>8} {row['cpu_p50_ms']:>8.3f} "
                         f"{ratio(row['cpu_speedup_vs_torch_eager']):>8} {row['max_abs_diff_vs_torch']:>10.2e}")
        for name, why in run["skipped"].items():
            lines.append(f"{run['neurons']:>8} {name:<18} skipped: {why}")
    for name, why in result["not_available"].items():
        lines.append(f"not available here: {name} ({why})")
    return "\n".join(lines)
