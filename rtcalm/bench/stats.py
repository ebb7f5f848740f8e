"""Per-frame timing of the streaming statistics (``rtcalm bench stats``).

Every number is the wall time of one Python call, ``stats.update(frame)`` as the daemon makes it,
timed with ``time.perf_counter_ns`` around the call (so the ~20-40 ns of the timer itself are
included). Frames are float32 and hold random ΔF/F-like values.

Two frame sources:

- ``warm``: the call cycles over 16 preallocated frames (256 KB at 4096 neurons), so the frame is in
  cache as it is in the daemon, where it was just written by the message decoder.
- ``cold``: the frames are read in order from a (frames, neurons) array far larger than the caches, so
  each call also pays for fetching the frame from memory.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from rtcalm.stats.dff import OnlineDff
from rtcalm.stats.moments import StreamingStats
from rtcalm.stats.percentile import percentile

WARM_FRAMES = 16
COLD_BYTES = 64 * 2**20  # cold frames come from an array this large (well past L2 and most L3 slices)


def _frames(n_frames: int, n_neurons: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Gamma-distributed values: right-skewed like ΔF/F. No NaNs: a missing value is rare on a rig, and
    # a frame with one takes the (slower) run-edge pass as well.
    return (rng.gamma(0.5, 0.2, size=(n_frames, n_neurons)) - 0.05).astype(np.float32)


def _summary(durations_ns: np.ndarray) -> dict:
    """Milliseconds, as every benchmark's JSON has them (the text report prints microseconds)."""
    p50, p99 = percentile(durations_ns, [50, 99]) / 1e6
    return {"calls": int(durations_ns.size), "p50_ms": float(p50), "p99_ms": float(p99),
            "mean_ms": float(durations_ns.mean()) / 1e6, "min_ms": float(durations_ns.min()) / 1e6}


def _time_calls(call, rows: list, n_calls: int) -> np.ndarray:
    """Durations (ns) of ``call(*rows[j % len(rows)])`` for ``n_calls`` calls, after a warm-up."""
    n_rows = len(rows)
    clock = time.perf_counter_ns
    durations = np.empty(n_calls, dtype=np.int64)
    for j in range(min(n_calls, 1000)):  # warm-up; compilation happened before
        call(*rows[j % n_rows])
    gc.collect()
    if len(rows[0]) == 1:  # the common case without argument unpacking in the timed region
        frames = [row[0] for row in rows]
        for j in range(n_calls):
            frame = frames[j % n_rows]
            start = clock()
            call(frame)
            durations[j] = clock() - start
    else:
        for j in range(n_calls):
            first, second = rows[j % n_rows]
            start = clock()
            call(first, second)
            durations[j] = clock() - start
    return durations


def bench_update(n_neurons: int, n_calls: int, *, source: str = "warm", time_constant_frames=None,
                 seed: int = 0) -> dict:
    """Timing of ``StreamingStats.update`` per call (see the module docstring for ``source``)."""
    if source == "warm":
        frames = _frames(WARM_FRAMES, n_neurons, seed)
    elif source == "cold":
        frames = _frames(max(WARM_FRAMES, COLD_BYTES // (4 * n_neurons)), n_neurons, seed)
    else:
        raise ValueError(f"unknown frame source {source!r}")
    stats = StreamingStats(n_neurons, time_constant_frames=time_constant_frames)
    stats.update(frames[0])  # compile (or load from the numba cache) outside the timing
    result = _summary(_time_calls(stats.update, [(frame,) for frame in frames], n_calls))
    result.update(neurons=n_neurons, source=source, forgetting=time_constant_frames is not None,
                  call="StreamingStats.update")
    return result


def bench_update_many(n_neurons: int, batch_frames: int, *, repeats: int = 20, seed: int = 0) -> dict:
    """Per-frame cost of ``StreamingStats.update_many`` on a (batch_frames, neurons) batch: best of
    ``repeats`` calls (a small batch is in cache, as when the daemon catches up; a large one is read
    from memory, as in the trainer)."""
    frames = _frames(batch_frames, n_neurons, seed)
    stats = StreamingStats(n_neurons)
    stats.update_many(frames[:2])
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter_ns()
        stats.update_many(frames)
        best = min(best, time.perf_counter_ns() - start)
    return {"neurons": n_neurons, "batch_frames": batch_frames, "per_frame_ms": best / batch_frames / 1e6,
            "call": f"StreamingStats.update_many (best of {repeats})"}


def bench_dff(n_neurons: int, n_calls: int, *, seed: int = 0) -> dict:
    """Timing of ``OnlineDff.update`` per call (raw F with neuropil, default configuration)."""
    rng = np.random.default_rng(seed)
    raw = (100.0 + 10.0 * rng.gamma(0.5, 1.0, size=(WARM_FRAMES, n_neurons))).astype(np.float32)
    neuropil = (60.0 + rng.standard_normal((WARM_FRAMES, n_neurons))).astype(np.float32)
    dff = OnlineDff(n_neurons)
    dff.update(raw[0], neuropil[0])
    result = _summary(_time_calls(dff.update, list(zip(raw, neuropil, strict=True)), n_calls))
    result.update(neurons=n_neurons, source="warm", call="OnlineDff.update(raw, neuropil)",
                  memory_bytes=dff.memory_bytes)
    return result


def run_stats_benchmark(neuron_counts, n_calls: int) -> dict:
    """Everything ``rtcalm bench stats`` reports."""
    results = {"update": [], "update_forgetting": [], "update_many": [], "dff": []}
    for n in neuron_counts:
        results["update"].append(bench_update(n, n_calls, source="warm"))
        results["update"].append(bench_update(n, n_calls, source="cold"))
        results["update_forgetting"].append(bench_update(n, n_calls, source="warm", time_constant_frames=9000))
        results["update_many"].append(bench_update_many(n, 64))
        results["update_many"].append(bench_update_many(n, 4096, repeats=3))
        results["dff"].append(bench_dff(n, max(1000, n_calls // 4)))
    return results


def format_report(result: dict) -> str:
    """The text report, in microseconds (the JSON has milliseconds)."""
    def us(ms: float) -> str:
        return f"{ms * 1e3:>8.2f}"

    lines = ["StreamingStats.update, one Python call per frame (us):",
             f"  {'neurons':>8} {'frame':>6} {'forgetting':>10} {'p50':>8} {'p99':>8} {'min':>8} {'calls':>7}"]
    for row in result["update"] + result["update_forgetting"]:
        lines.append(f"  {row['neurons']:>8} {row['source']:>6} {'yes' if row['forgetting'] else 'no':>10} "
                     f"{us(row['p50_ms'])} {us(row['p99_ms'])} {us(row['min_ms'])} {row['calls']:>7}")
    lines.append("StreamingStats.update_many (us per frame):")
    for row in result["update_many"]:
        lines.append(f"  {row['neurons']:>8} neurons, batches of {row['batch_frames']:>5} frames: "
                     f"{row['per_frame_ms'] * 1e3:.2f}")
    lines.append("OnlineDff.update(raw, neuropil), one call per frame (us):")
    for row in result["dff"]:
        lines.append(f"  {row['neurons']:>8} neurons: p50 {row['p50_ms'] * 1e3:.2f}, p99 {row['p99_ms'] * 1e3:.2f}, "
                     f"state {row['memory_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)
