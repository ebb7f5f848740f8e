"""Errors that mean "the user gave us something bad", as opposed to bugs.

The CLI prints these as one line (``rtcalm: error: ...``) without a traceback; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path


class RtcalmError(Exception):
    """Base class for user-facing errors (bad files, bad configs, bad arguments)."""


class FileError(RtcalmError, ValueError):
    """A file cannot be used; the message starts with its path. Subclasses say which kind of file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RecordingError(FileError):
    """A recording file cannot be read: unknown format, corrupt, missing keys, bad shapes or values."""


def read_json_object(path: Path, error: type[FileError], missing: str) -> dict:
    """The JSON object in the file ``path``, or ``error`` naming it: ``missing`` (why it should be there) when
    there is no such file, else what is wrong with its contents."""
    if not path.is_file():
        raise error(path, missing)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(path, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise error(path, "must be a JSON object")
    return document
