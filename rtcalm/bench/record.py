"""The JSON record every ``rtcalm bench BENCHMARK --json FILE`` writes, one shape for all of them:

    {"command": "rtcalm bench step --neurons 512 --json step.json",   # the argv as run
     "commit": "3d84d71-dirty",          # git short hash (-dirty: tracked changes); null outside git
     "machine": {"platform": ..., "cpu": ..., "cores": 2, "python": "3.11.7",
                 "libraries": {"rtcalm": "0.1.0", "numpy": ..., "torch": ..., ...},
                 "load_average_1min": {"before": 0.4, "after": 0.9}},
     "result": {...}}                    # the benchmark's own numbers, durations as p50_ms, p99_ms, ...

The first three keys are rtcalm.eval.report.provenance's, as every stored result has them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rtcalm.eval.report import provenance


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): a busy machine shows in every number."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def bench_record(command_line: list[str], result: dict, *, load_before: float | None) -> dict:
    """The record of one run: ``command_line`` as run, the code and machine it ran on, and ``result``."""
    record = provenance(command_line)
    record["machine"]["load_average_1min"] = {"before": load_before, "after": load_average()}
    return {**record, "result": result}


def _finite_or_null(value):
    """``value`` with every NaN or infinity replaced by None: strict JSON has no such numbers, and a figure
    that could not be measured (a ratio to a zero) is better recorded as absent than lose the whole run."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def write_record(record: dict, path: str) -> None:
    """``record`` as strict JSON to ``path`` (``-``: standard output)."""
    text = json.dumps(_finite_or_null(record), indent=2, allow_nan=False)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
