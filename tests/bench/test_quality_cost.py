"""rtcalm.bench.quality_cost: every timed part is there, in milliseconds, and the added cost is the
frame-by-frame difference of the parts (a small run: the numbers' size is the benchmark's business)."""

from __future__ import annotations

import pytest

from rtcalm.bench.quality_cost import time_quality_cost


def test_the_parts_and_the_added_cost():
    cost = time_quality_cost(neurons=16, horizon=4, levels=(0.5, 0.9), frames=200, warm_up_frames=20)
    assert list(cost) == ["skill only (the default)", "encoding without intervals", "skill and intervals 0.5, 0.9",
                          "encoding with intervals", "skill and intervals, filled and encoded", "added by intervals"]
    for name, times in cost.items():
        assert set(times) == {"p50_ms", "p99_ms"} and times["p50_ms"] <= times["p99_ms"], name
        if name != "added by intervals":  # a difference of timings can be negative on a noisy frame
            assert 0.0 < times["p50_ms"] < 50.0, (name, times)
    total = cost["skill and intervals, filled and encoded"]["p50_ms"]
    assert total >= cost["skill and intervals 0.5, 0.9"]["p50_ms"]
    assert cost["added by intervals"]["p50_ms"] < total


def test_needs_a_level():
    with pytest.raises(ValueError, match="at least one interval level"):
        time_quality_cost(neurons=4, horizon=2, levels=(), frames=2, warm_up_frames=0)
