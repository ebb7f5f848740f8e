"""Interleaved A/B comparison of decoding heads inside one closed-loop run (``rtcalm bench latency --head
KIND --interleave FRAMES``).

Two runs one after the other differ by more than a head costs: on the 2-core VM the receive→publish
median of the same daemon moves by about 0.1 ms between runs, the size of the limit a head is held to
(issue 22: at most 0.1 ms added to p50). So the heads are compared within one run. The measured frames
are cut into blocks of ``block_frames``; the blocks go in cycles, each cycle one block per arm (no head,
then each head alone), the arms' order rotated by one position every cycle so that no arm always follows
the same neighbour. The bench loads and unloads heads between blocks (control commands, answered before
the block's first frame is sent), and the first ``settle_frames`` of each block are not scored.

A head's added cost is, per cycle, the median of its block minus the median of the same cycle's
no-head block; the report gives the median of those paired differences over the cycles, with their
25th and 75th percentiles (rtcalm.stats.percentile, as every benchmark), for the daemon's
receive→publish time, its model stage (where the heads' work runs) and the closed loop (rig send →
prediction received).
"""

from __future__ import annotations

import numpy as np

from rtcalm.errors import RtcalmError
from rtcalm.stats.percentile import percentile

NO_HEAD = "none"
SETTLE_FRAMES = 10  # the first frames of a block: a head just loaded, caches refilled; not scored
MIN_CYCLES = 3
METRICS = ("receive_to_publish", "model", "closed_loop")


def check_interleave(block_frames: int, frames: int, n_heads: int) -> int:
    """The number of cycles, or RtcalmError (one line) when the run cannot be interleaved."""
    if n_heads < 1:
        raise RtcalmError("--interleave compares heads: give at least one --head")
    if block_frames <= SETTLE_FRAMES:
        raise RtcalmError(f"--interleave must be more than {SETTLE_FRAMES} frames (each block's first "
                          f"{SETTLE_FRAMES} are not scored), got {block_frames}")
    cycle = block_frames * (n_heads + 1)
    if frames % cycle or frames // cycle < MIN_CYCLES:
        raise RtcalmError(f"--frames must be a whole number of cycles, at least {MIN_CYCLES}: a cycle is --interleave "
                          f"x (1 + heads) = {cycle} frames, got --frames {frames}")
    return frames // cycle


def block_schedule(n_arms: int, n_cycles: int) -> np.ndarray:
    """(n_cycles * n_arms,) the arm of every block: cycle c plays arms c, c+1, ... (mod n_arms)."""
    position = np.arange(n_arms)
    return np.concatenate([(position + c) % n_arms for c in range(n_cycles)])


def compare_arms(arms: list[str], schedule: np.ndarray, block_frames: int, seqs: np.ndarray,
                 samples: dict[str, np.ndarray]) -> dict:
    """The A/B report. ``arms[0]`` is the no-head arm; ``seqs``: measured frame index (0 = first measured
    frame) of each prediction that answered its own frame; ``samples``: per metric, that prediction's
    value in nanoseconds."""
    n_arms = len(arms)
    block = seqs // block_frames
    scored = (seqs % block_frames >= SETTLE_FRAMES) & (block < schedule.size)
    arm_of = np.where(scored, schedule[np.minimum(block, schedule.size - 1)], -1)  # (predictions,) -1: unscored
    block_medians = {}  # metric -> (blocks,) ms
    for metric, values in samples.items():
        medians = np.full(schedule.size, np.nan)
        for b in range(schedule.size):
            chosen = values[scored & (block == b)]
            if chosen.size:
                medians[b] = percentile(chosen / 1e6, 50)
        block_medians[metric] = medians
    by_cycle = schedule.reshape(-1, n_arms)  # (cycles, n_arms): the arm of each block of a cycle
    block_of = np.argsort(by_cycle, axis=1) + np.arange(by_cycle.shape[0])[:, None] * n_arms  # (cycles, arm): block
    per_arm = {arm: {"frames": int((arm_of == a).sum()),
                     **{metric: _summary(values[arm_of == a] / 1e6) for metric, values in samples.items()}}
               for a, arm in enumerate(arms)}
    added = {}
    for a, arm in enumerate(arms[1:], start=1):
        added[arm] = {}
        for metric, medians in block_medians.items():
            differences = medians[block_of[:, a]] - medians[block_of[:, 0]]
            differences = differences[np.isfinite(differences)]
            added[arm][metric] = {"cycles": int(differences.size),
                                  **({"median_ms": None, "p25_ms": None, "p75_ms": None} if differences.size == 0 else
                                     dict(zip(("p25_ms", "median_ms", "p75_ms"),
                                              (float(v) for v in percentile(differences, [25, 50, 75])), strict=True))),
                                  "per_cycle_ms": [float(d) for d in differences]}
    return {"block_frames": block_frames, "settle_frames": SETTLE_FRAMES, "cycles": int(by_cycle.shape[0]),
            "arms": arms, "schedule": [arms[a] for a in schedule], "per_arm": per_arm, "added": added}


def _summary(values_ms: np.ndarray) -> dict:
    if values_ms.size == 0:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = percentile(values_ms, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99)}
