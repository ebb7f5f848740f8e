"""Errors that mean "the user gave us something bad", as opposed to bugs.

The CLI prints these as one line (``rtcalm: error: ...``) without a traceback; anything else is a bug
and keeps its traceback.
"""


class RtcalmError(Exception):
    """Base class for user-facing errors (bad files, bad configs, bad arguments)."""


class RecordingError(RtcalmError, ValueError):
    """A recording file cannot be read: unknown format, corrupt, missing keys, bad shapes or values."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
