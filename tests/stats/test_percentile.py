"""The one percentile definition (rtcalm/stats/percentile.py) and that nothing else computes latency
percentiles its own way."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rtcalm.stats.percentile import percentile

ROOT = Path(__file__).resolve().parents[2]


def test_linear_interpolation_between_closest_ranks_on_a_hand_checked_example():
    values = [10.0, 1.0, 4.0, 2.0, 3.0]  # sorted: 1 2 3 4 10, ranks 0..4
    assert percentile(values, 50) == 3.0  # rank 2
    assert percentile(values, 25) == 2.0  # rank 1
    assert percentile(values, 90) == pytest.approx(7.6)  # rank 3.6: 4 + 0.6 * (10 - 4); nearest rank says 10
    assert percentile(values, 99) == pytest.approx(9.76)  # rank 3.96: 4 + 0.96 * 6
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 10.0)
    assert percentile([0, 10], 99.9) == pytest.approx(9.99)
    assert percentile([5], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5  # the usual median of an even count


def test_several_percentiles_and_an_axis_as_the_daemon_asks_for_them():
    rows = np.array([[1, 100], [2, 200], [3, 300], [4, 400], [10, 1000]], dtype=np.int64)  # ns, as StageTimes
    out = percentile(rows, [50, 90], axis=0)
    np.testing.assert_allclose(out, [[3.0, 300.0], [7.6, 760.0]])
    assert isinstance(percentile(rows[:, 0], 50), float)


# Where np.percentile / np.quantile may be called: the definition itself, and two places that are not
# latency percentiles (the trigger sweep's threshold grid, the spread of interval coverage over neurons).
ALLOWED = {"rtcalm/stats/percentile.py": "the definition",
           "rtcalm/eval/triggers.py": "the trigger sweep's threshold grid",
           "tools/intervals_tuning.py": "coverage spread over neurons"}
OTHER_DEFINITION = re.compile(r"\b(np|numpy)\.(nan)?(percentile|quantile)\s*\(|\bstatistics\.(median|quantiles)\b"
                              r"|^\s*def percentile\b", re.MULTILINE)


def test_no_other_module_computes_percentiles_its_own_way():
    offenders = []
    for path in sorted([*(ROOT / "rtcalm").rglob("*.py"), *(ROOT / "tools").glob("*.py")]):
        relative = path.relative_to(ROOT).as_posix()
        for match in OTHER_DEFINITION.finditer(path.read_text()):
            found = match.group(0).strip()
            # a function named percentile is the definition's alone; calls only in the allowed files
            allowed = relative == "rtcalm/stats/percentile.py" if found.startswith("def") else relative in ALLOWED
            if not allowed:
                offenders.append(f"{relative}: {found}")
    assert not offenders, ("use rtcalm.stats.percentile.percentile, the one definition: " + "; ".join(offenders))


def test_the_check_above_would_catch_a_second_definition():
    for text in ("x = np.percentile(a, 99)", "numpy.quantile(a, 0.5)", "np.nanpercentile(a, 9)",
                 "statistics.median(t)", "def percentile(values, q):"):
        assert OTHER_DEFINITION.search(text), text
    assert not OTHER_DEFINITION.search("from rtcalm.stats.percentile import percentile\npercentile(a, 99)")
