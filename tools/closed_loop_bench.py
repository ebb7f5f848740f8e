"""What the closed loop's new stages cost: trigger rules and forecast intervals, through real sockets.

    python tools/closed_loop_bench.py run      # the runs below, one after another; docs/results/closed_loop_bench.json
    python tools/closed_loop_bench.py render [--check]   # its block in docs/benchmarks.md

Every run is ``rtcalm bench latency`` (rtcalm.bench.latency.run_latency_benchmark) with the shipped
default model at 30 Hz over loopback TCP, on a machine with nothing else running. The stored JSON keeps
each run's summary (the percentiles the bench reports, its targets), not its per-frame samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rtcalm.eval.report import code_state, write_or_check

REPOSITORY = Path(__file__).resolve().parents[1]
RESULT = REPOSITORY / "docs" / "results" / "closed_loop_bench.json"
DOC = REPOSITORY / "docs" / "benchmarks.md"
BEGIN, END = "<!-- closed-loop-bench:begin (tools/closed_loop_bench.py render) -->", "<!-- closed-loop-bench:end -->"
FRAMES = 1800  # one minute at 30 Hz per run
RUNS = {  # name -> run_latency_benchmark arguments
    "512": dict(neurons=512),
    "512, 16 rules": dict(neurons=512, rules="configs/bench_rules.toml"),
    "4096, 16 rules": dict(neurons=4096, rules="configs/bench_rules.toml"),
    "512, intervals 0.8 and 0.95": dict(neurons=512, config="configs/bench_intervals.toml"),
    "512, raw head": dict(neurons=512, heads=("raw",)),
    "512, backbone head": dict(neurons=512, heads=("backbone",)),
    "512, both head": dict(neurons=512, heads=("both",)),
}
HEAD_RUNS = ("512, raw head", "512, backbone head", "512, both head")


def summary(result: dict) -> dict:
    """The bench's percentile maps and targets, without its per-frame arrays."""
    def small(value):
        if isinstance(value, dict):
            return {k: small(v) for k, v in value.items() if not (isinstance(v, list) and len(v) > 64)}
        return value
    return small(result)


def quality_cost(neurons: int = 512, horizon: int = 30, frames: int = 3000) -> dict:
    """What forecast quality adds to a frame, timed alone in this process: SessionQuality.observe (skill,
    and with intervals their update) plus, with intervals, the message's half-widths; p50 / p99 in ms."""
    import numpy as np

    from rtcalm.daemon.quality import SessionQuality
    from rtcalm.stats.percentile import percentile

    rng = np.random.default_rng(0)
    truth = rng.standard_normal((frames, neurons)).astype(np.float32)
    forecast = rng.standard_normal((neurons, horizon)).astype(np.float32)
    std = np.ones(neurons, np.float32)
    out = {}
    for name, levels in (("skill only (the default)", ()), ("skill and intervals 0.8, 0.95", (0.8, 0.95))):
        quality = SessionQuality(neurons, horizon, skill_horizons=(1, 5, 15, 30), interval_levels=levels,
                                 window_frames=1800.0)
        times = np.empty(frames)
        for t in range(frames):
            start = time.perf_counter_ns()
            quality.observe(truth[t], forecast)
            if levels:
                quality.half_widths_into_message(std)
            times[t] = time.perf_counter_ns() - start
        times = times[frames // 10:] / 1e6  # after the kernels are loaded
        out[name] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}
    return out


def run() -> dict:
    from rtcalm.bench.latency import run_latency_benchmark

    os.chdir(REPOSITORY)
    runs, started = {}, time.time()
    for name, arguments in RUNS.items():
        print(f"closed_loop_bench: {name}", file=sys.stderr)
        runs[name] = summary(run_latency_benchmark(frames=FRAMES, references=False, **arguments))
    return {"quality_cost_512": quality_cost(),"command": "python tools/closed_loop_bench.py run", "commit": code_state(REPOSITORY),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - started), "frames": FRAMES, "runs": runs}


# --- rendering: reads the stored result only ---------------------------------------------------------------
def _ms(stats: dict | None, key: str) -> str:
    return "–" if not stats or stats.get(key) is None else f"{stats[key]:.3f}"


def _target(verdict: dict) -> str:
    measured = verdict.get("value_ms", verdict.get("value"))
    limit = verdict.get("limit_ms", verdict.get("limit"))
    return f"{'met' if verdict['met'] else 'not met'} (measured {measured:.3f}, limit {limit:.3f})"


def render(result: dict) -> str:
    runs = result["runs"]
    lines = [BEGIN, "",
             f"Made by `{result['command']}` at commit {result['commit']} on {result['machine']} ({result['date']}; "
             f"{result['frames']} frames a run at 30 Hz, the default model on ONNX Runtime, loopback TCP); stored in "
             "docs/results/closed_loop_bench.json. Milliseconds.", "",
             "| run | rig send→prediction p50 | p99 | receive→publish p50 | p99 | model stage p50 | rules stage p50 | p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        stages = run["stages"]
        rules = (run.get("triggers") or {}).get("rules_stage")
        lines.append(f"| {name} | {_ms(run, 'p50_ms')} | {_ms(run, 'p99_ms')} "
                     f"| {_ms(stages['receive_to_publish'], 'p50_ms')} | {_ms(stages['receive_to_publish'], 'p99_ms')} "
                     f"| {_ms(stages['model'], 'p50_ms')} | {_ms(rules, 'p50_ms')} | {_ms(rules, 'p99_ms')} |")
    lines += ["", "Triggers, in the runs with rules (each frame that fired: its last trigger against its own prediction; "
              "negative: the trigger arrived first):", "",
              "| run | triggers | frames fired | rig send→trigger p50 | p99 | trigger minus prediction p50 | p99 |",
              "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        triggers = run.get("triggers")
        if triggers:
            lines.append(f"| {name} | {triggers['count']} | {triggers['frames_fired']} "
                         f"| {_ms(triggers['rig_to_last_trigger'], 'p50_ms')} "
                         f"| {_ms(triggers['rig_to_last_trigger'], 'p99_ms')} "
                         f"| {_ms(triggers['trigger_minus_prediction'], 'p50_ms')} "
                         f"| {_ms(triggers['trigger_minus_prediction'], 'p99_ms')} |")
    lines += ["", "Targets, as each run judged them:", ""]
    for name, run in runs.items():
        lines += [f"- {name}: `{target}` {_target(verdict)}" for target, verdict in run["targets"].items()]
    base, intervals = runs["512"], runs["512, intervals 0.8 and 0.95"]
    added = intervals["stages"]["receive_to_publish"]["p50_ms"] - base["stages"]["receive_to_publish"]["p50_ms"]
    model_added = intervals["stages"]["model"]["p50_ms"] - base["stages"]["model"]["p50_ms"]
    cost = result["quality_cost_512"]
    with_intervals = cost["skill and intervals 0.8, 0.95"]["p50_ms"]
    lines += ["", "Forecast quality per frame at 512 neurons and 30 steps, timed alone in the same process "
              "(SessionQuality.observe, and with intervals the message's half-widths):", "",
              "| tracking | p50 | p99 |", "|---|---|---|"]
    lines += [f"| {name} | {times['p50_ms']:.3f} | {times['p99_ms']:.3f} |" for name, times in cost.items()]
    lines += ["", f"Intervals add {with_intervals:.3f} ms p50 per frame timed alone (the limit is 0.05 ms: "
              f"{'met' if with_intervals <= 0.05 else 'not met'}). Through the daemon, the run with them has "
              f"receive→publish p50 {added:+.3f} ms and model stage p50 {model_added:+.3f} ms against the run "
              "without them: two runs one after the other, so that difference also carries their run-to-run "
              "noise.", ""]
    lines += ["Decoding heads at 512 neurons (random weights in fit-head's 2 s shape: 8 bins, 8 classes): receive→publish "
              "and model stage p50 against the run without a head (runs one after the other; the limit is 0.1 ms p50):", ""]
    for name in HEAD_RUNS:
        head_added = runs[name]["stages"]["receive_to_publish"]["p50_ms"] - base["stages"]["receive_to_publish"]["p50_ms"]
        head_model = runs[name]["stages"]["model"]["p50_ms"] - base["stages"]["model"]["p50_ms"]
        lines.append(f"- {name}: receive→publish p50 {head_added:+.3f} ms, model stage p50 {head_model:+.3f} ms: "
                     f"{'met' if head_added <= 0.1 else 'not met'}")
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "render"))
    parser.add_argument("--check", action="store_true", help="render: fail if docs/benchmarks.md is not up to date")
    args = parser.parse_args(argv)
    if args.action == "run":
        RESULT.write_text(json.dumps(run(), indent=1) + "\n")
        print(f"wrote {RESULT}")
        return 0
    return write_or_check(DOC, BEGIN, END, render(json.loads(RESULT.read_text())), check=args.check,
                          command="python tools/closed_loop_bench.py render")


if __name__ == "__main__":
    sys.exit(main())
