"""Streaming predictability statistics, POYO-CAP neuron selection and online ΔF/F.

::

    from rtcalm.stats import StreamingStats, select_predictable

    stats = StreamingStats(n_neurons)           # one per session
    stats.update(frame)                         # per frame: float32 (neurons,), NaN = missing
    stats.update_many(frames)                   # a batch (time, neurons), contiguous in time
    stats.mark_epoch_boundary()                 # between trials: no lag-1 pair across
    snap = stats.snapshot()                     # NeuronStats: mean, std, skewness, kurtosis, ...
    split = select_predictable(snap.skewness, snap.kurtosis, method="knee")

    intervals = OnlineIntervals(n_neurons, horizon=30)   # conformal forecast bands, calibrated online
    intervals.update(truth_z, forecast_z)       # per frame, z units; then bounds_into / half_widths_into

See docs/statistics.md for the definitions, the knee method and the numbers on the real data, and
docs/intervals.md for the forecast intervals.
"""

from rtcalm.stats.dff import OnlineDff
from rtcalm.stats.errors import StatsError
from rtcalm.stats.intervals import OnlineIntervals
from rtcalm.stats.moments import NeuronStats, StreamingStats, stats_of_epochs, stats_of_recording
from rtcalm.stats.selection import (
    POYO_CAP,
    POYO_CAP_KURTOSIS,
    POYO_CAP_SKEWNESS,
    KneeResult,
    Selection,
    Threshold,
    Thresholds,
    choose_thresholds,
    is_predictable,
    line_table,
    select_predictable,
    sorted_knee,
)

__all__ = [
    "POYO_CAP",
    "POYO_CAP_KURTOSIS",
    "POYO_CAP_SKEWNESS",
    "KneeResult",
    "NeuronStats",
    "OnlineDff",
    "OnlineIntervals",
    "Selection",
    "StatsError",
    "StreamingStats",
    "Threshold",
    "Thresholds",
    "choose_thresholds",
    "is_predictable",
    "line_table",
    "select_predictable",
    "sorted_knee",
    "stats_of_epochs",
    "stats_of_recording",
]
