"""``rtcalm bench latency --head KIND --interleave FRAMES``: heads timed against no head within one run.

Fast tests: the block schedule, the paired-difference arithmetic on made-up samples (a known added cost
is recovered, the unscored first frames of a block cannot move it) and the argument checks (one line,
exit 2, before any daemon starts). The run with a real daemon is in tests/daemon/test_end_to_end.py."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.bench import latency
from rtcalm.bench.interleave import NO_HEAD, SETTLE_FRAMES, block_schedule, check_interleave, compare_arms
from rtcalm.cli import main
from rtcalm.errors import RtcalmError


def test_every_cycle_plays_every_arm_once_and_the_order_rotates():
    schedule = block_schedule(4, 6).reshape(6, 4)
    assert all(sorted(cycle) == [0, 1, 2, 3] for cycle in schedule)
    assert [list(cycle) for cycle in schedule[:2]] == [[0, 1, 2, 3], [1, 2, 3, 0]]
    assert all(sorted(schedule[:4, position]) == [0, 1, 2, 3] for position in range(4))  # each arm in each slot


def made_up_run(added_ms: dict[int, float], cycles: int = 5, block: int = 30, settle_ns: float = 0.0):
    """Predictions for every measured frame: 1 ms + the block arm's added cost + a slow drift across the
    run (which a comparison of whole runs would mistake for a head's cost); ``settle_ns`` on each block's
    unscored frames."""
    arms = 1 + len(added_ms)
    schedule = block_schedule(arms, cycles)
    seqs = np.arange(schedule.size * block)
    arm = schedule[seqs // block]
    values = 1e6 + np.array([0.0, *added_ms.values()])[arm] * 1e6 + seqs * 50.0
    values[seqs % block < SETTLE_FRAMES] += settle_ns
    return schedule, seqs, values


def test_the_paired_differences_recover_a_known_added_cost_despite_drift():
    schedule, seqs, values = made_up_run({1: 0.05, 2: 0.2})
    report = compare_arms([NO_HEAD, "a", "b"], schedule, 30, seqs, {"receive_to_publish": values})
    drift_between_blocks_ms = 30 * 50.0 / 1e6  # one block later: 0.0015 ms more drift
    for head, true in (("a", 0.05), ("b", 0.2)):
        added = report["added"][head]["receive_to_publish"]
        assert added["cycles"] == 5
        assert abs(added["median_ms"] - true) <= 2 * drift_between_blocks_ms
        assert added["p25_ms"] <= added["median_ms"] <= added["p75_ms"]
    assert report["per_arm"][NO_HEAD]["frames"] == 5 * (30 - SETTLE_FRAMES)
    assert report["schedule"][:3] == [NO_HEAD, "a", "b"]


def test_the_unscored_first_frames_of_a_block_do_not_count():
    schedule, seqs, values = made_up_run({1: 0.05}, settle_ns=50e6)
    report = compare_arms([NO_HEAD, "a"], schedule, 30, seqs, {"model": values})
    assert abs(report["added"]["a"]["model"]["median_ms"] - 0.05) < 0.01
    assert report["per_arm"]["a"]["model"]["p99_ms"] < 2.0


def test_a_folded_or_missing_block_is_left_out_of_the_pairs():
    schedule, seqs, values = made_up_run({1: 0.05}, cycles=4)
    keep = seqs // 30 != 2  # block 2 (cycle 1, head "a") was folded: none of its frames answered on its own
    report = compare_arms([NO_HEAD, "a"], schedule, 30, seqs[keep], {"model": values[keep]})
    assert report["added"]["a"]["model"]["cycles"] == 3


@pytest.mark.parametrize(("block", "frames", "heads", "expected"), [
    (40, 240, 0, "give at least one --head"),
    (SETTLE_FRAMES, 120, 1, f"more than {SETTLE_FRAMES} frames"),
    (40, 250, 1, "whole number of cycles"),
    (40, 160, 1, "at least 3"),
])
def test_bad_interleave_arguments_are_refused(block, frames, heads, expected):
    with pytest.raises(RtcalmError, match=expected):
        check_interleave(block, frames, heads)
    assert check_interleave(40, 240, 1) == 3


def test_a_bad_interleave_is_one_line_and_exit_2_before_any_daemon(capsys, monkeypatch):
    monkeypatch.setattr(latency, "DaemonProcess", lambda *a, **k: pytest.fail("a daemon was started"))
    assert main(["bench", "latency", "--head", "raw", "--interleave", "40", "--frames", "250"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtcalm: error: --frames must be a whole number of cycles") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "latency", "--head", "raw", "--interleave", "0"])
    assert exit_info.value.code == 2

