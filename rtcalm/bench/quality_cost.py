"""What live forecast quality adds to the daemon's per-frame path, timed alone in this process.

:func:`time_quality_cost` drives the daemon's own objects frame by frame, as its pipeline does after the
model step: :class:`rtcalm.daemon.quality.SessionQuality` and :class:`rtcalm.daemon.wire.PredictionEncoder`.
Per frame it times, one after the other on the same truth and forecast,

- ``skill only (the default)``: ``SessionQuality.observe`` with skill tracking only;
- ``encoding without intervals``: encoding the prediction message without intervals;
- ``skill and intervals <levels>``: ``observe`` with skill and intervals, then filling the message's
  interval buffers (``fill_message_intervals``);
- ``encoding with intervals``: encoding the prediction message with them (the larger message);
- ``skill and intervals, filled and encoded``: the sum of the two before;
- ``added by intervals``: that sum minus skill only minus encoding without intervals, frame by frame:
  what turning intervals on adds to a frame (sending the larger message is not counted; ZeroMQ copies it).

Each is summarised as p50 and p99 in milliseconds over the timed frames. The sockets, the model and the
cold caches of a 30 Hz stream are not in these numbers (``rtcalm bench latency`` measures the loop).
"""

from __future__ import annotations

import gc
import time

import numpy as np

from rtcalm.daemon.quality import SessionQuality
from rtcalm.daemon.wire import PredictionEncoder
from rtcalm.stats.percentile import percentile

SKILL_HORIZONS = (1, 5, 15, 30)  # the daemon's default [quality] skill_horizons
WINDOW_FRAMES = 1800.0  # and [quality] window_frames
ADDED_P50_LIMIT_MS = 0.05  # issue 25: intervals add at most this to a frame's median at 512 neurons


def time_quality_cost(neurons: int = 512, horizon: int = 30, levels: tuple[float, ...] = (0.8, 0.95),
                      frames: int = 3000, warm_up_frames: int = 300, seed: int = 0) -> dict[str, dict[str, float]]:
    """p50 / p99 (``{"p50_ms", "p99_ms"}``) of each timed part (module docstring), keyed by its name, over
    ``frames`` frames after ``warm_up_frames`` untimed ones (the numba kernels load in the first)."""
    if not levels:
        raise ValueError("time_quality_cost needs at least one interval level")
    rng = np.random.default_rng(seed)
    total = warm_up_frames + frames
    truth = rng.standard_normal((total, neurons)).astype(np.float32)
    forecast_z = rng.standard_normal((neurons, horizon)).astype(np.float32)
    std = rng.uniform(0.1, 2.0, neurons).astype(np.float32)
    skill_only = SessionQuality(neurons, horizon, skill_horizons=SKILL_HORIZONS, interval_levels=(),
                                window_frames=WINDOW_FRAMES)
    with_intervals = SessionQuality(neurons, horizon, skill_horizons=SKILL_HORIZONS, interval_levels=tuple(levels),
                                    window_frames=WINDOW_FRAMES)
    # the message the daemon sends for this frame (its encoder reuses one buffer per size of message)
    message = dict(session="bench", seq=0, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3,
                   forecast=rng.standard_normal((neurons, horizon)).astype(np.float32),
                   predictable=np.ones(neurons, np.uint8), decoded={}, model_version="default@01bbfdfcc4d5",
                   rate_hz=30.0, stream_id=1, stream_frame=0, folded=0,
                   stage_ns={"validate": 100_000, "stats": 60_000, "model": 1_900_000})
    plain_encoder, interval_encoder = PredictionEncoder(), PredictionEncoder()
    interval_fields = dict(interval_levels=[float(level) for level in levels],
                           interval_scale=with_intervals.interval_scale,
                           interval_multiplier=with_intervals.interval_multiplier)
    # per frame: skill only, encoding without, observe and fill with intervals, encoding with them
    durations = np.empty((4, total), np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    for t in range(total):
        frame = truth[t]
        start = clock()
        skill_only.observe(frame, forecast_z)
        observed = clock()
        plain_encoder.encode(**message)
        encoded = clock()
        with_intervals.observe(frame, forecast_z)
        with_intervals.fill_message_intervals(std)
        filled = clock()
        interval_encoder.encode(**message, **interval_fields)
        done = clock()
        durations[:, t] = (observed - start, encoded - observed, filled - encoded, done - filled)
    skill, plain, intervals, interval_encoding = durations[:, warm_up_frames:]
    level_names = ", ".join(f"{level:g}" for level in levels)
    return {"skill only (the default)": _p50_p99_ms(skill),
            "encoding without intervals": _p50_p99_ms(plain),
            f"skill and intervals {level_names}": _p50_p99_ms(intervals),
            "encoding with intervals": _p50_p99_ms(interval_encoding),
            "skill and intervals, filled and encoded": _p50_p99_ms(intervals + interval_encoding),
            "added by intervals": _p50_p99_ms(intervals + interval_encoding - skill - plain)}


def _p50_p99_ms(durations_ns: np.ndarray) -> dict[str, float]:
    p50, p99 = percentile(durations_ns, [50, 99])
    return {"p50_ms": float(p50) / 1e6, "p99_ms": float(p99) / 1e6}


def format_report(result: dict) -> str:
    """The text ``rtcalm bench quality`` prints: one line per timed part."""
    rows = result["parts"]
    width = max(len(name) for name in rows)
    lines = [f"forecast quality per frame, {result['neurons']} neurons x {result['horizon']} steps, "
             f"{result['frames']} frames (ms):"]
    lines += [f"  {name:<{width}}  p50 {times['p50_ms']:.4f}  p99 {times['p99_ms']:.4f}" for name, times in rows.items()]
    added = rows["added by intervals"]["p50_ms"]
    lines.append(f"  target: intervals add <= {ADDED_P50_LIMIT_MS} ms p50: {'met' if added <= ADDED_P50_LIMIT_MS else 'not met'}")
    return "\n".join(lines)
