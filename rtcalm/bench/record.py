"""The JSON record every ``rtcalm bench BENCHMARK --json FILE`` writes, one shape for all of them:

    {"command": "rtcalm bench step --neurons 512 --json step.json",   # the argv as run
     "commit": "3d84d71-dirty",          # git short hash (-dirty: tracked changes); null outside git
     "machine": {"platform": ..., "cpu": ..., "cores": 2, "python": "3.11.7",
                 "libraries": {"rtcalm": "0.1.0", "numpy": ..., "torch": ..., ...},
                 "load_average_1min": {"before": 0.4, "after": 0.9}},
     "result": {...}}                    # the benchmark's own numbers, durations as p50_ms, p99_ms, ...

Library versions come from the installed distributions' metadata, so recording them imports nothing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import rtcalm
from rtcalm.eval.report import code_state

# The distributions whose versions change what a benchmark measures (missing ones are recorded as null).
LIBRARIES = ("numpy", "torch", "onnxruntime", "numba", "pyzmq", "msgpack", "msgspec", "tensorrt")
# The checkout the running package comes from, if it is one (an editable install); else code_state says None.
PACKAGE_ROOT = Path(rtcalm.__file__).resolve().parents[1]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): a busy machine shows in every number."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict:
    facts = {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
             "python": platform.python_version(),
             # rtcalm's own version from the code that ran, not from whichever checkout pip installed
             "libraries": {"rtcalm": rtcalm.__version__, **{name: _version(name) for name in LIBRARIES}}}
    torch = sys.modules.get("torch")  # only a benchmark that ran torch can have used a GPU
    if torch is not None and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
        facts["cuda"] = torch.version.cuda
    return facts


def bench_record(command_line: list[str], result: dict, *, load_before: float | None) -> dict:
    """The record of one run: ``command_line`` as run, the code and machine it ran on, and ``result``."""
    machine = machine_facts()
    machine["load_average_1min"] = {"before": load_before, "after": load_average()}
    return {"command": shlex.join(command_line), "commit": code_state(PACKAGE_ROOT), "machine": machine,
            "result": result}


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
