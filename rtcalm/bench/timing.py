"""What every benchmark does with its clock: pace a loop at a rate, and summarise durations as the
milliseconds percentiles the JSON results carry (``p50_ms``, ``p99_ms``, ``p999_ms``)."""

from __future__ import annotations

import time

import numpy as np

from rtcalm.stats.percentile import percentile


def pace(start: float, index: int, period: float) -> None:
    """Sleep until call ``index`` of a loop started at ``start`` (perf_counter) with ``period`` seconds:
    an absolute schedule, so one late call does not delay the ones after it."""
    delay = start + index * period - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def percentiles_ms(durations_ns) -> dict:
    """p50, p99 and p99.9 of durations in nanoseconds, in milliseconds (None each when there are none)."""
    values = np.asarray(durations_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    p50, p99, p999 = percentile(values, [50, 99, 99.9])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999)}


def format_targets(targets: dict, name_width: int) -> list[str]:
    """The report lines of a result's ``targets`` map (each: value or value_ms, limit or limit_ms, met)."""
    lines = []
    for name, target in targets.items():
        value = target.get("value_ms", target.get("value"))
        limit = target.get("limit_ms", target.get("limit"))
        lines.append(f"    {name:<{name_width}} {'met' if target['met'] else 'NOT met':8} (measured {value:.3f}, limit {limit:.3f})")
    return lines
