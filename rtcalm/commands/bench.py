"""``rtcalm bench BENCHMARK ...``: micro-benchmarks, one sub-command each.

Adding a benchmark: write ``_register_<name>(benchmarks)`` that adds a sub-parser with
``set_defaults(handler=...)`` and append it to ``_BENCHMARKS``. Import the code under test inside the
handler so ``rtcalm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_json_argument, add_model_argument
from rtcalm.errors import RtcalmError


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="micro-benchmarks (per-frame costs)",
                                   description="Micro-benchmarks of the real-time paths.")
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in _BENCHMARKS:
        add(benchmarks)


def _neuron_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated neuron counts, got {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"neuron counts must be positive integers, got {text!r}")
    return counts


# --- bench stats ---------------------------------------------------------------------------------

def _register_stats(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "stats", help="per-frame update time of the streaming statistics",
        description="Time StreamingStats.update per Python call (median and p99) with the frame in cache "
                    "('warm', as in the daemon) and streamed from memory ('cold'), with forgetting, "
                    "update_many per frame, and OnlineDff.update. Target: <= 5 us per warm update at 4096 "
                    "neurons.")
    parser.add_argument("--neurons", type=_neuron_counts, default=[512, 4096],
                        help="comma-separated neuron counts (default 512,4096)")
    parser.add_argument("--frames", type=int, default=20000, help="timed calls per case (default 20000)")
    add_json_argument(parser)
    parser.set_defaults(handler=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from rtcalm.bench.stats import run_stats_benchmark

    if args.frames < 100:
        raise RtcalmError(f"--frames must be at least 100 for a p99, got {args.frames}")
    results = run_stats_benchmark(args.neurons, args.frames)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("StreamingStats.update, one Python call per frame (us):")
    print(f"  {'neurons':>8} {'frame':>6} {'forgetting':>10} {'median':>8} {'p99':>8} {'min':>8} {'calls':>7}")
    for row in results["update"] + results["update_forgetting"]:
        print(f"  {row['neurons']:>8} {row['source']:>6} {'yes' if row['forgetting'] else 'no':>10} "
              f"{row['median_us']:>8.2f} {row['p99_us']:>8.2f} {row['min_us']:>8.2f} {row['calls']:>7}")
    print("StreamingStats.update_many (us per frame):")
    for row in results["update_many"]:
        print(f"  {row['neurons']:>8} neurons, batches of {row['batch_frames']:>5} frames: {row['per_frame_us']:.2f}")
    print("OnlineDff.update(raw, neuropil), one call per frame (us):")
    for row in results["dff"]:
        print(f"  {row['neurons']:>8} neurons: median {row['median_us']:.2f}, p99 {row['p99_us']:.2f}, "
              f"state {row['memory_bytes'] / 2**20:.1f} MiB")
    return 0


# --- bench latency (issue 6: the daemon) -----------------------------------------------------------

def _register_latency(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "latency", help="closed-loop latency through a real daemon and real sockets",
        description="Start the daemon in its own process, stream synthetic frames at --rate over loopback "
                    "TCP or IPC and time each frame from the rig's send to the arrival of its prediction. "
                    "Prints p50/p99/p99.9, lost frames, the stage waterfall, two references measured in the "
                    "same run at the same pace (the bare model step, the raw ZeroMQ + msgpack round trip) "
                    "and the targets (512 neurons at 30 Hz: p99 <= 2.5 ms, all but the model <= 0.3 ms "
                    "median, model stage <= 1.2x the bare step; 4096 at 30 Hz: p99 <= 10 ms; any size: no "
                    "frame lost, p99 under one frame period). With --rules, the trigger path is timed in the "
                    "same run: rig send -> trigger received against rig send -> prediction received for the "
                    "frames that fired, and the daemon's rules stage (targets: the trigger path adds <= 0.1 ms "
                    "to the median; with 16 rules at 4096 neurons, p99 under one frame period).")
    parser.add_argument("--neurons", type=int, default=512, help="neurons per frame (default 512)")
    parser.add_argument("--rate", type=float, default=30.0, metavar="HZ", help="frames per second (default 30)")
    parser.add_argument("--frames", type=int, default=1800, help="measured frames (default 1800: 1 min at 30 Hz)")
    add_model_argument(parser)
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                        help="loopback TCP (default) or IPC (Unix domain sockets)")
    parser.add_argument("--no-references", action="store_true",
                        help="skip the bare-step and raw-transport references (about 45 s at 30 Hz)")
    parser.add_argument("--rules", metavar="FILE", default=None,
                        help="a trigger rules file (docs/triggers.md; e.g. configs/bench_rules.toml) to load into "
                             "the bench's session, all rules armed, and time the trigger path too")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a daemon config file for the daemon under test (its socket addresses are the bench's), "
                             "e.g. configs/bench_intervals.toml to time forecast intervals")
    parser.add_argument("--head", action="append", default=[], metavar="PATH|KIND",
                        help="decode with this head (a fit-head .json for --neurons and --model), or a head of KIND "
                             "raw, backbone or both with random weights in fit-head's 2 s shape; repeat for several")
    add_json_argument(parser)
    parser.set_defaults(handler=_run_latency)


def _run_latency(args: argparse.Namespace) -> int:
    import sys

    from rtcalm.bench.latency import format_report, run_latency_benchmark

    if args.neurons < 1 or args.frames < 1 or not 0 < args.rate <= 10000:
        raise RtcalmError("--neurons and --frames must be positive and --rate in (0, 10000]")
    if args.rules is not None and not args.rules.strip():
        raise RtcalmError("--rules needs a rules file's path")
    if args.config is not None:
        from rtcalm.daemon.config import load_config

        load_config(args.config)  # a bad file fails here, in one line, not in the daemon's log
    result = run_latency_benchmark(neurons=args.neurons, rate_hz=args.rate, frames=args.frames, model=args.model,
                                   transport=args.transport, references=not args.no_references, rules=args.rules,
                                   config=args.config, heads=args.head,
                                   progress=lambda line: print(f"rtcalm bench latency: {line}", file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


# Order is the order in `rtcalm bench --help`.
# --- bench step ----------------------------------------------------------------------------------

def _register_step(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "step", help="time of one incremental model step (Calm.step) per neuron count and history",
        description="Median and p99 of one Calm.step (torch eager) per neuron count, at two history lengths "
                    "stepped in turn (the cost must not grow with the history). Targets for the default "
                    "model on one thread: <= 1.5 ms at 512 neurons, <= 12 ms at 4096, history ratio ~1.")
    add_model_argument(parser)
    parser.add_argument("--neurons", type=_neuron_counts, default=[512, 4096])
    parser.add_argument("--history", type=_neuron_counts, default=[32, 1024], help="frames consumed before timing")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per cell (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_json_argument(parser)
    parser.set_defaults(handler=_run_step)


def _run_step(args: argparse.Namespace) -> int:
    import torch

    from rtcalm.bench.step import run_step_benchmark
    from rtcalm.model import load_model

    if args.steps < 100:
        raise RtcalmError(f"--steps must be at least 100 for a p99, got {args.steps}")
    if args.threads < 1:
        raise RtcalmError(f"--threads must be positive, got {args.threads}")
    torch.set_num_threads(args.threads)
    document = run_step_benchmark(load_model(args.model), args.neurons, args.history, args.steps)
    document["model"] = args.model
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(f"Calm.step, model {args.model} ({document['parameters']:,} parameters, input "
          f"{document['config']['input_mode']}), {document['threads']} thread(s), load average "
          f"{document['load_average_before']:.2f} on {document['cpus']} CPUs (ms):")
    print(f"  {'neurons':>8} {'history':>8} {'median':>8} {'p99':>8} {'cpu median':>10}")
    for row in document["rows"]:
        print(f"  {row['neurons']:>8} {row['history']:>8} {row['median_ms']:>8.3f} {row['p99_ms']:>8.3f} "
              f"{row['cpu_median_ms']:>10.3f}")
    by_neurons = {}
    for row in document["rows"]:
        by_neurons.setdefault(row["neurons"], []).append(row["median_ms"])
    for n, medians in by_neurons.items():
        print(f"  {n} neurons: longest / shortest history median ratio {medians[-1] / medians[0]:.2f}")
    return 0


_BENCHMARKS = [_register_stats, _register_latency, _register_step]
