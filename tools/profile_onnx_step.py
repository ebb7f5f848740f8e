"""Where the ONNX Runtime step spends its time: per-operator and per-node kernel time, from ONNX Runtime's
own profiler, for a model's step graph streamed over synthetic frames.

    python tools/profile_onnx_step.py --model default --neurons 512 --frames 300 [--top 15] [--json]

The engine is loaded as the daemon loads it (``load_engine``, backend onnx, one thread) with ONNX Runtime
profiling switched on; the first 30 steps are dropped as warm-up. Frames run back to back, so the
numbers are the hot-cache cost of each kernel (the daemon, paced at 30 Hz, pays more per step: see
docs/benchmarks.md). The profiler adds a little time per node; use this for proportions, and
``rtcalm bench step`` / ``rtcalm bench latency`` for absolute step times.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np

WARMUP_STEPS = 30


def profile(model: str, neurons: int, frames: int) -> dict:
    import onnxruntime as ort

    from rtcalm.engine import load_engine
    from rtcalm.sim import make_synthetic

    with tempfile.TemporaryDirectory(prefix="rtcalm-ortprof-") as directory:
        plain_options = ort.SessionOptions

        def profiling_options():
            options = plain_options()
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(directory, "step")
            return options

        ort.SessionOptions = profiling_options  # the engine builds its session from ort.SessionOptions()
        try:
            engine = load_engine(model, backend="onnx", threads=1)
        finally:
            ort.SessionOptions = plain_options
        dff = make_synthetic(n_neurons=neurons, n_frames=WARMUP_STEPS + frames, seed=0).dff
        z = ((dff - dff.mean(0)) / (dff.std(0) + 1e-6)).astype(np.float32)
        stream = engine.new_stream(neurons)
        for row in z:
            engine.step(row[None], stream)
        with open(engine.session.end_profiling()) as handle:
            events = json.load(handle)
    kernel_us = collections.defaultdict(list)
    op_type = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][:-len("_kernel_time")]
            kernel_us[node].append(event["dur"])
            op_type[node] = event["args"].get("op_name", "?")
    per_node = {node: float(np.mean(times[WARMUP_STEPS:])) for node, times in kernel_us.items()}
    per_op = collections.Counter()
    for node, us in per_node.items():
        per_op[op_type[node]] += us
    return {"model": engine.version, "neurons": neurons, "frames": frames, "nodes": len(per_node),
            "kernel_us_per_step": sum(per_node.values()),
            "per_op_us": dict(per_op.most_common()),
            "per_node_us": {f"{op_type[n]} {n}": us for n, us in sorted(per_node.items(), key=lambda kv: -kv[1])}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="shipped model name or checkpoint directory")
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--frames", type=int, default=300, help="profiled steps after the warm-up")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    if args.neurons < 1 or args.frames < 1 or args.top < 1:
        parser.error("--neurons, --frames and --top must be positive")
    result = profile(args.model, args.neurons, args.frames)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    total = result["kernel_us_per_step"]
    print(f"{result['model']} at {args.neurons} neurons: {total:.0f} us of kernel time per step, "
          f"{result['nodes']} nodes")
    for title, table in (("operator", result["per_op_us"]), ("node", result["per_node_us"])):
        print(f"  by {title}:")
        for name, us in list(table.items())[:args.top]:
            print(f"    {us:8.1f} us {100 * us / total:5.1f}%  {name[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
