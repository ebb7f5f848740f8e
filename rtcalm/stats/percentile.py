"""The one percentile definition of every latency figure rtcalm reports: the benchmarks (``rtcalm bench``),
the daemon's ``status`` (``StageTimes``) and the demo's summary.

Definition: linear interpolation between closest ranks (numpy's default, ``method="linear"``, Hyndman &
Fan's type 7). For n sorted values x[0] <= ... <= x[n-1], the q-th percentile is read at the fractional
rank h = (n - 1) * q / 100: x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). The 50th
percentile is the usual median, p0 the minimum and p100 the maximum. Chosen over nearest rank (which two
of the benchmarks once used) because the daemon and most benchmarks already used it, and because it moves
smoothly between samples as n grows; the two differ by less than one gap between neighbouring samples.

numpy only, so the daemon imports it without loading any benchmark code.
"""

from __future__ import annotations

import numpy as np

METHOD = "linear"


def percentile(values, q, *, axis: int | None = None):
    """The ``q``-th percentile(s) of ``values`` (``q`` a number or a sequence, in [0, 100]), by the one
    definition above: a float for one ``q`` over all values, else an array as ``np.percentile`` shapes it."""
    result = np.percentile(np.asarray(values, dtype=np.float64), q, axis=axis, method=METHOD)
    return float(result) if np.ndim(result) == 0 else result
