"""Benchmark the model step on every backend this machine offers: per-step median and p99 latency, and
the ratio to torch eager on the CPU measured in the same run.

    python tools/bench_backends.py --neurons 512,4096 --steps 300 --json results.json
    python tools/bench_backends.py --backends torch,onnx,onnx-static --neurons 512 --steps 200
    python tools/bench_backends.py --model default ...      # a shipped model / checkpoint (default: random
                                                            # weights of the default config; the cost of a
                                                            # step does not depend on the weights' values)

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
and their ratios stay meaningful. Wall-clock times; with one thread the CPU time of the stepping thread
is reported too (on a busy machine the wall clock also counts waiting for a core). Every backend's
forecasts are compared with torch's at every timed step (``max_abs_diff``; a value near 0.1 or above
would be a code flip at a near tie, see docs/backends.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CPU_BACKENDS = ["torch", "onnx", "onnx-static"]
GPU_BACKENDS = ["torch-cuda", "torch-cuda-graph", "tensorrt", "tensorrt-fp16"]
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def available_backends() -> tuple[list[str], dict[str, str]]:
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


def make_engine(name: str, checkpoint: Path, n_neurons: int, threads: int, compiled_dir: Path):
    """The engine for one backend row, or (None, reason) when it cannot be built."""
    from rtcalm.engine import NeuronRange, load_engine
    from rtcalm.engine.build import compile_artifact
    from rtcalm.errors import RtcalmError

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
                  compiled_dir: Path, seed: int) -> dict:
    engines, skipped = {}, {}
    for name in names:
        engine, why = make_engine(name, checkpoint, n_neurons, threads, compiled_dir)
        if engine is None:
            skipped[name] = why
            print(f"  {name}: skipped ({why})", file=sys.stderr)
        else:
            engines[name] = engine
    rng = np.random.default_rng(seed)
    first = next(iter(engines.values()))
    history = (rng.standard_normal((first.receptive_field, n_neurons)).cumsum(0) * 0.3).astype(np.float32)
    frames = (rng.standard_normal((steps + 10, n_neurons)).cumsum(0) * 0.3).astype(np.float32)
    streams = {name: engine.new_stream(n_neurons) for name, engine in engines.items()}
    for name, engine in engines.items():
        engine.fold(history, streams[name])
        for i in range(10):  # warm-up: first calls touch fresh memory and pick kernels
            engine.step(frames[i:i + 1], streams[name])
    wall = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    max_diff = dict.fromkeys(engines, 0.0)
    gc.disable()
    try:
        for i in range(10, steps + 10):
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
    baseline = statistics.median(wall["torch"]) if "torch" in wall else None
    cpu_baseline = statistics.median(cpu["torch"]) if "torch" in cpu else None
    rows = {}
    for name, engine in engines.items():
        median = statistics.median(wall[name])
        rows[name] = {
            "engine_backend": engine.backend, "median_ms": median * 1e3, "p99_ms": percentile(wall[name], 99) * 1e3,
            "cpu_median_ms": statistics.median(cpu[name]) * 1e3,
            "speedup_vs_torch_eager": baseline / median if baseline else None,
            # CPU time of the stepping thread: robust to waiting for a core on a busy machine (CPU backends
            # with one thread; on a GPU it only counts the host side)
            "cpu_speedup_vs_torch_eager": cpu_baseline / statistics.median(cpu[name]) if cpu_baseline else None,
            "max_abs_diff_vs_torch": max_diff[name] if name != "torch" else 0.0,
        }
    return {"n_neurons": n_neurons, "steps": steps, "results": rows, "skipped": skipped}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", default="512,4096", help="comma-separated neuron counts (default 512,4096)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per backend and count (default 300)")
    parser.add_argument("--backends", help=f"comma-separated subset of {','.join(ALL_BACKENDS)} "
                                           "(default: every one that can run here; torch is always included)")
    parser.add_argument("--model", help="model name or checkpoint directory (default: random default config)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE (or stdout without FILE)")
    args = parser.parse_args(argv)
    try:
        neuron_counts = [int(x) for x in args.neurons.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--neurons must be comma-separated integers, got {args.neurons!r}")
    if not neuron_counts or min(neuron_counts) < 1:
        parser.error("--neurons needs positive counts")
    if args.steps < 10 or args.threads < 1:
        parser.error("--steps must be >= 10 and --threads >= 1")
    usable, why_not = available_backends()
    if args.backends:
        requested = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = sorted(set(requested) - set(ALL_BACKENDS))
        if unknown:
            parser.error(f"unknown backends {unknown} (choose from {', '.join(ALL_BACKENDS)})")
        missing = [b for b in requested if b not in usable]
        if missing:
            parser.error("; ".join(f"backend {b} cannot run here: {why_not[b]}" for b in missing))
        names = ["torch"] + [b for b in requested if b != "torch"]
    else:
        names = usable
    torch.set_num_threads(args.threads)

    from rtcalm.model import Calm, CalmConfig, resolve_model, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="rtcalm-bench-") as tmp:
        if args.model:
            checkpoint = resolve_model(args.model)
            model_label = str(checkpoint)
        else:
            torch.manual_seed(args.seed)
            checkpoint = save_checkpoint(Calm(CalmConfig()).eval(), Path(tmp) / "random-default")
            model_label = "random weights, default CalmConfig"
        load_before = os.getloadavg()
        runs = []
        for n in neuron_counts:
            print(f"{n} neurons:", file=sys.stderr)
            runs.append(bench_neurons(names, checkpoint, n, args.steps, args.threads, Path(tmp), args.seed))
        load_after = os.getloadavg()
    report = {"command": " ".join(["python", "tools/bench_backends.py", *(argv if argv is not None else sys.argv[1:])]),
              "model": model_label, "machine": machine(), "load_average_before": load_before,
              "load_average_after": load_after, "not_available": {b: why_not[b] for b in ALL_BACKENDS if b in why_not},
              "runs": runs}
    print(f"{'neurons':>8} {'backend':<18} {'median ms':>10} {'p99 ms':>9} {'x torch':>8} {'cpu ms':>8} "
          f"{'x torch':>8} {'max|diff|':>10}")
    for run in runs:
        for name, row in run["results"].items():
            speedup = f"{row['speedup_vs_torch_eager']:.2f}" if row["speedup_vs_torch_eager"] else "-"
            cpu_speedup = f"{row['cpu_speedup_vs_torch_eager']:.2f}" if row["cpu_speedup_vs_torch_eager"] else "-"
            print(f"{run['n_neurons']:>8} {name:<18} {row['median_ms']:>10.3f} {row['p99_ms']:>9.3f} {speedup:>8} "
                  f"{row['cpu_median_ms']:>8.3f} {cpu_speedup:>8} {row['max_abs_diff_vs_torch']:>10.2e}")
    print(f"load average before {load_before}, after {load_after}", file=sys.stderr)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
