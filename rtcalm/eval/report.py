"""Where a stored result comes from: the command as run, the commit of the code that ran and the machine.

Every ``rtcalm bench --json`` record, the ``--json`` documents of forecast-eval and decode-eval, and the
experiments in tools/ carry it, so that docs/render.py can say what made each number it renders.

    {"command": "rtcalm bench step --neurons 512 --json step.json",   # the argv as run
     "commit": "3d84d71-dirty",          # git short hash (-dirty: tracked changes); null outside git
     "machine": {"platform": ..., "cpu": ..., "cores": 2, "python": "3.11.7",
                 "libraries": {"rtcalm": "0.1.0", "numpy": ..., "torch": ..., ...}}}

Library versions come from the installed distributions' metadata, so recording them imports nothing.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import rtcalm

# The distributions whose versions change what a benchmark measures (missing ones are recorded as null).
LIBRARIES = ("numpy", "torch", "onnxruntime", "numba", "pyzmq", "msgpack", "msgspec", "tensorrt")
# The checkout the running package comes from, if it is one (an editable install); else code_state says None.
PACKAGE_ROOT = Path(rtcalm.__file__).resolve().parents[1]


def code_state(repository: Path) -> str | None:
    """The commit results come from: git's short hash, with ``-dirty`` when tracked files differ from it
    (as ``git describe --dirty`` marks it; untracked files, such as results just written, do not count).
    None when ``repository`` is not the top of a git checkout (an installed package, or git missing)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # a package installed inside some other checkout (a venv in a project) must not report that one's commit
    if top is None or Path(top).resolve() != Path(repository).resolve():
        return None
    commit, changes = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    if not commit or changes is None:
        return None
    return commit + ("-dirty" if changes else "")


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


def provenance(command_line: list[str]) -> dict:
    """``{"command", "commit", "machine"}`` of a result made now by ``command_line``."""
    return {"command": shlex.join(command_line), "commit": code_state(PACKAGE_ROOT), "machine": machine_facts()}


def file_digest(path) -> str:
    """SHA-256 of a file; of a directory (a suite2p folder), over its files' relative paths and digests."""
    import hashlib

    from rtcalm.engine.base import weights_sha256

    path = Path(path)
    if path.is_file():
        return weights_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{weights_sha256(item)}\n".encode())
    return digest.hexdigest()
