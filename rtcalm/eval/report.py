"""Generated blocks in the docs: what tools/*_experiment.py and tools/closed_loop_bench.py write between
their markers, the check that a doc still holds what its stored results render, and the commit results
come from (also recorded by every ``rtcalm bench --json``)."""

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
