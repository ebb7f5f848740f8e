"""The error raised for bad input to :mod:`rtcalm.stats` (wrong shapes, dtypes, values, settings)."""

from rtcalm.errors import RtcalmError


class StatsError(RtcalmError, ValueError):
    """Bad input to the statistics module. Raised before any state is changed."""
