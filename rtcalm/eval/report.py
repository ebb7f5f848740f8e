"""Generated blocks in the docs: what tools/*_experiment.py and tools/closed_loop_bench.py write between
their markers, and the check that a doc still holds what its stored results render."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def replace_block(text: str, begin: str, end: str, block: str, where: str) -> str:
    """``text`` with everything from ``begin`` through ``end`` replaced by ``block`` (which carries the
    markers itself). SystemExit naming ``where`` if the markers are missing."""
    if begin not in text or end not in text:
        raise SystemExit(f"{where}: no generated block ({begin} ... {end})")
    head, rest = text.split(begin, 1)
    return head + block + rest.split(end, 1)[1]


def write_or_check(doc: Path, begin: str, end: str, block: str, *, check: bool, command: str) -> int:
    """Write ``block`` into ``doc``; with ``check``, only report (exit status 1) whether it differs."""
    current = doc.read_text()
    updated = replace_block(current, begin, end, block, str(doc))
    if check:
        if updated != current:
            print(f"{doc} differs from what its stored results render: run {command}", file=sys.stderr)
            return 1
        return 0
    doc.write_text(updated)
    return 0


def code_state(repository: Path) -> str:
    """The commit the results come from, marked when the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "rtcalm", "configs")
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")
