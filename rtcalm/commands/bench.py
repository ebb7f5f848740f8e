"""``rtcalm bench BENCHMARK ...``: the benchmarks, one sub-command each, every one with ``--json FILE``.

Adding a benchmark: write its code in ``rtcalm/bench/<name>.py`` (a ``run_...`` function returning a plain
dict, durations as ``p50_ms``/``p99_ms``..., and a ``format_report``), then here ``_register_<name>`` that
adds its arguments and ``_run_<name>`` that checks them and returns a :class:`BenchOutcome`; append the
register function to ``_BENCHMARKS``. ``_run_benchmark`` prints the report and writes the JSON record
(rtcalm/bench/record.py) the same way for all. Import the code under test inside the ``_run_`` function so
``rtcalm --help`` stays fast and the CLI never loads rtcalm.bench unless a benchmark runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from rtcalm.commands.arguments import add_model_argument, positive_float, positive_int
from rtcalm.commands.serve import BACKENDS as SERVE_BACKENDS
from rtcalm.errors import RtcalmError

MIN_SAMPLES_FOR_P99 = 100
MAX_RATE_HZ = 10000.0  # a frame every 0.1 ms: beyond it pacing is below the timer's resolution


class BenchOutcome(NamedTuple):
    result: dict  # the JSON record's "result"
    report: str  # the text printed for a person
    status: int = 0  # the exit status (a soak whose checks fail: 1)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks of this install (model step, latency, soak, ...)",
                                   description="Benchmarks of this install. Each prints a report; --json FILE "
                                               "also writes the result with the command, commit and machine.")
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in _BENCHMARKS:
        add(benchmarks)


def _json_path(text: str) -> str:
    """``--json``'s FILE: ``-`` or a file path whose directory exists, checked before a long run starts."""
    if text == "-":
        return text
    path = Path(text)
    if not text.strip() or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path or '-', got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of {text!r} does not exist")
    return text


def _add_benchmark(benchmarks, name: str, run, **parser_options) -> argparse.ArgumentParser:
    parser = benchmarks.add_parser(name, **parser_options)
    parser.add_argument("--json", metavar="FILE", type=_json_path, default=None,
                        help="also write the result as JSON to FILE, with the command, commit and machine it "
                             "ran on ('-': print only that JSON, on standard output)")
    parser.set_defaults(handler=lambda args: _run_benchmark(run, args))
    return parser


def _run_benchmark(run, args: argparse.Namespace) -> int:
    from rtcalm.bench.record import bench_record, load_average, write_record

    load_before = load_average()
    outcome = run(args)
    if args.json != "-":
        print(outcome.report)
    if args.json is not None:
        write_record(bench_record(args.command_line, outcome.result, load_before=load_before), args.json)
    return outcome.status


def _progress(benchmark: str):
    return lambda line: print(f"rtcalm bench {benchmark}: {line}", file=sys.stderr, flush=True)


def _positive_ints(what: str):
    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values or any(n < 1 for n in values):
            raise argparse.ArgumentTypeError(f"{what} must be positive integers, got {text!r}")
        return values
    return parse


_neuron_counts = _positive_ints("neuron counts")


def _at_least_for_p99(option: str, value: int) -> None:
    if value < MIN_SAMPLES_FOR_P99:
        raise RtcalmError(f"{option} must be at least {MIN_SAMPLES_FOR_P99} for a p99, got {value}")


def _at_most_max_rate(rate_hz: float) -> None:
    if rate_hz > MAX_RATE_HZ:
        raise RtcalmError(f"--rate must be at most {MAX_RATE_HZ:g} Hz, got {rate_hz:g}")


# --- bench stats ---------------------------------------------------------------------------------

def _register_stats(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "stats", _run_stats, help="per-frame update time of the streaming statistics",
        description="Time StreamingStats.update per Python call (p50 and p99) with the frame in cache "
                    "('warm', as in the daemon) and streamed from memory ('cold'), with forgetting, "
                    "update_many per frame, and OnlineDff.update. Target: <= 5 us per warm update at 4096 "
                    "neurons.")
    parser.add_argument("--neurons", type=_neuron_counts, default=[512, 4096],
                        help="comma-separated neuron counts (default 512,4096)")
    parser.add_argument("--frames", type=int, default=20000, help="timed calls per case (default 20000)")


def _run_stats(args: argparse.Namespace) -> BenchOutcome:
    from rtcalm.bench.stats import format_report, run_stats_benchmark

    _at_least_for_p99("--frames", args.frames)
    result = run_stats_benchmark(args.neurons, args.frames)
    return BenchOutcome(result, format_report(result))


# --- bench latency (issue 6: the daemon) -----------------------------------------------------------

def _register_latency(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "latency", _run_latency, help="closed-loop latency through a real daemon and real sockets",
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
    parser.add_argument("--interleave", type=positive_int, default=None, metavar="FRAMES",
                        help="with --head: time the heads against no head in this one run, in blocks of FRAMES "
                             "frames (one head or none per block, in rotating order; the heads are loaded and "
                             "unloaded between blocks); --frames must be a whole number of cycles of (1 + heads) "
                             "blocks. Reports each head's added median per cycle (target: <= 0.1 ms receive->publish)")


def _run_latency(args: argparse.Namespace) -> BenchOutcome:
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
                                   config=args.config, heads=args.head, interleave_frames=args.interleave,
                                   progress=_progress("latency"))
    return BenchOutcome(result, format_report(result))


# --- bench step ----------------------------------------------------------------------------------

def _register_step(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "step", _run_step, help="time of one incremental model step (Calm.step) per neuron count and history",
        description="p50 and p99 of one Calm.step (torch eager) per neuron count, at two history lengths "
                    "stepped in turn (the cost must not grow with the history). Targets (issue 4) for the "
                    "default model on one thread: p50 <= 2 ms at 512 neurons, under one frame period at 30 Hz "
                    "(33.3 ms) at 4096, longest / shortest history p50 <= 1.2.")
    add_model_argument(parser)
    parser.add_argument("--neurons", type=_neuron_counts, default=[512, 4096],
                        help="comma-separated neuron counts (default 512,4096)")
    parser.add_argument("--history", type=_positive_ints("history lengths"), default=[32, 1024],
                        help="comma-separated frames consumed before timing (default 32,1024)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per cell (default 300)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")


def _run_step(args: argparse.Namespace) -> BenchOutcome:
    import torch

    from rtcalm.bench.step import format_report, run_step_benchmark
    from rtcalm.model import load_model

    _at_least_for_p99("--steps", args.steps)
    torch.set_num_threads(args.threads)
    result = {"model": args.model, **run_step_benchmark(load_model(args.model), args.neurons, args.history,
                                                        args.steps)}
    return BenchOutcome(result, format_report(result))


# --- bench backends ------------------------------------------------------------------------------

def _register_backends(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "backends", _run_backends, help="the model step on every backend here, against torch eager",
        description="Time engine.step (frame in, forecast out, as the daemon calls it) on every backend this "
                    "machine offers (torch, onnx, onnx-static; torch-cuda, torch-cuda-graph, tensorrt, "
                    "tensorrt-fp16 with a GPU), stepped in turn over the same frames: p50, p99, the speed-up "
                    "over torch eager in the same run and the largest difference from torch's forecast.")
    add_model_argument(parser)
    parser.add_argument("--neurons", type=_neuron_counts, default=[512, 4096],
                        help="comma-separated neuron counts (default 512,4096)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per backend and count (default 300)")
    parser.add_argument("--backends", metavar="LIST",
                        help="comma-separated backends (default: every one that can run here; torch, the "
                             "baseline, is always included)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch and ONNX Runtime threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frames (default 0)")


def _run_backends(args: argparse.Namespace) -> BenchOutcome:
    from rtcalm.bench.backends import ALL_BACKENDS, format_report, run_backends_benchmark

    _at_least_for_p99("--steps", args.steps)
    if args.seed < 0:
        raise RtcalmError(f"--seed must be 0 or more, got {args.seed}")
    requested = None
    if args.backends is not None:
        requested = [name.strip() for name in args.backends.split(",") if name.strip()]
        unknown = [name for name in requested if name not in ALL_BACKENDS]
        if not requested or unknown:
            raise RtcalmError(f"--backends: unknown backend(s) {', '.join(unknown) or repr(args.backends)} "
                              f"(choose from {', '.join(ALL_BACKENDS)})")
    result = run_backends_benchmark(model=args.model, neurons=args.neurons, steps=args.steps, backends=requested,
                                    threads=args.threads, seed=args.seed, progress=_progress("backends"))
    return BenchOutcome(result, format_report(result))


# --- bench transport -----------------------------------------------------------------------------

def _register_transport(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "transport", _run_transport, help="the transport's floor: ZeroMQ and a plain socket, paced and back to back",
        description="Round trips of a frame-sized message out and a prediction-sized one back through a bare "
                    "echo process (no daemon): ZeroMQ over TCP and IPC, and one plain TCP socket, each paced "
                    "at --rate and back to back, in one run. What any ZeroMQ daemon in Python pays before "
                    "doing anything.")
    parser.add_argument("--neurons", type=positive_int, default=512, help="neurons per frame (default 512)")
    parser.add_argument("--horizon", type=positive_int, default=30,
                        help="forecast frames in the reply (default 30)")
    parser.add_argument("--rate", type=positive_float, default=30.0, metavar="HZ",
                        help="paced rate (default 30)")
    parser.add_argument("--round-trips", type=int, default=600, help="timed round trips per row (default 600)")


def _run_transport(args: argparse.Namespace) -> BenchOutcome:
    from rtcalm.bench.transport import format_report, run_transport_benchmark

    _at_least_for_p99("--round-trips", args.round_trips)
    _at_most_max_rate(args.rate)
    result = run_transport_benchmark(neurons=args.neurons, horizon=args.horizon, rate_hz=args.rate,
                                     round_trips=args.round_trips)
    return BenchOutcome(result, format_report(result))


# --- bench soak ----------------------------------------------------------------------------------

def _register_soak(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "soak", _run_soak, help="rtcalm serve under a steady rig load: memory and latency over time",
        description="Run the daemon as its own process for --minutes with a simulated rig sending at --rate "
                    "and a subscriber; per window, the daemon's resident memory and the latency rig send -> "
                    "prediction received (p50, p99, max). Exit status 1 when a check fails: memory growth "
                    "from the first to the last window under --max-growth-mib, every window's p99 under "
                    "--max-p99-ms, no frame lost. Linux only (the memory is read from /proc).")
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="duration (default 20)")
    parser.add_argument("--neurons", type=positive_int, default=512, help="neurons per frame (default 512)")
    parser.add_argument("--rate", type=positive_float, default=30.0, metavar="HZ",
                        help="frames per second (default 30)")
    parser.add_argument("--window-s", type=positive_float, default=60.0,
                        help="seconds per reported window (default 60)")
    add_model_argument(parser)
    parser.add_argument("--backend", choices=SERVE_BACKENDS, default=None,
                        help="the daemon's backend (default: serve's)")
    parser.add_argument("--max-growth-mib", type=positive_float, default=50.0,
                        help="memory growth limit, first to last window (default 50)")
    parser.add_argument("--max-p99-ms", type=positive_float, default=None,
                        help="limit on every window's p99 (default: one frame period)")


def _run_soak(args: argparse.Namespace) -> BenchOutcome:
    from rtcalm.bench.soak import check, format_report, soak

    _at_most_max_rate(args.rate)
    if args.window_s > args.minutes * 60:
        raise RtcalmError(f"--window-s {args.window_s:g} is longer than --minutes {args.minutes:g}: no window "
                          "would close")
    progress = _progress("soak")
    result = soak(minutes=args.minutes, neurons=args.neurons, rate_hz=args.rate, window_s=args.window_s,
                  model=args.model, backend=args.backend,
                  progress=lambda row: progress(", ".join(f"{key} {value}" for key, value in row.items())))
    result["checks"] = check(result, args.max_growth_mib, args.max_p99_ms or 1000.0 / args.rate)
    met = all(item["met"] for item in result["checks"].values())
    return BenchOutcome(result, format_report(result), 0 if met else 1)


# Order is the order in `rtcalm bench --help`.
# --- bench quality (issue 25: live forecast quality and intervals) -----------------------------------------

def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated coverage levels, got {text!r}") from None
    if not values or any(not 0.0 < v < 1.0 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"levels must be increasing numbers in (0, 1), got {text!r}")
    return values


def _register_quality(benchmarks) -> None:
    parser = _add_benchmark(
        benchmarks, "quality", _run_quality, help="what live forecast skill and intervals add to a frame",
        description="Time the daemon's per-frame forecast-quality work alone in this process "
                    "(rtcalm/bench/quality_cost.py): skill tracking, the conformal intervals' update, filling "
                    "and encoding the larger prediction message, and what intervals add. Target: intervals add "
                    "<= 0.05 ms p50 at 512 neurons.")
    parser.add_argument("--neurons", type=positive_int, default=512, help="neurons (default 512)")
    parser.add_argument("--horizon", type=positive_int, default=30, help="forecast steps (default 30)")
    parser.add_argument("--levels", type=_levels, default=(0.8, 0.95), help="coverage levels (default 0.8,0.95)")
    parser.add_argument("--frames", type=int, default=3000, help="timed frames (default 3000)")


def _run_quality(args: argparse.Namespace) -> BenchOutcome:
    from rtcalm.bench.quality_cost import format_report, time_quality_cost

    _at_least_for_p99("--frames", args.frames)
    parts = time_quality_cost(args.neurons, args.horizon, args.levels, frames=args.frames)
    result = {"neurons": args.neurons, "horizon": args.horizon, "levels": list(args.levels), "frames": args.frames,
              "parts": parts}
    return BenchOutcome(result, format_report(result))


_BENCHMARKS = [_register_step, _register_backends, _register_stats, _register_latency, _register_transport,
               _register_soak, _register_quality]
