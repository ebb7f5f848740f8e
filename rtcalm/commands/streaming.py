"""Streaming a recording to the daemon frame by frame at its frame rate, as a rig does: what ``rtcalm
replay`` and ``rtcalm demo`` both do."""

from __future__ import annotations

import threading
import time

import numpy as np

from rtcalm.errors import RtcalmError


def check_rate(rate_hz: float) -> float:
    """``rate_hz`` as a float; RtcalmError (about ``--rate``, where bad rates come from) unless it can be paced."""
    if not (np.isfinite(rate_hz) and 0 < rate_hz <= 100000):
        raise RtcalmError(f"--rate must be a positive number of frames per second (<= 100000), got {rate_hz}")
    return float(rate_hz)


def stream(dff: np.ndarray, sender, rate_hz: float, *, loop: bool = False, stop: threading.Event | None = None,
           on_sent=None) -> int:
    """Send ``dff`` frame by frame at ``rate_hz`` on an absolute schedule (a late frame does not delay the
    next ones). Returns the number of frames sent. ``on_sent(seq, frame, t_send_perf)`` is called after
    each send; ``stop`` ends the stream early."""
    period = 1.0 / rate_hz
    start = time.perf_counter()
    count = 0
    while True:
        for index in range(dff.shape[0]):
            if stop is not None and stop.is_set():
                return count
            delay = start + count * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            seq = sender.next_seq
            sender.send(dff[index], reset=loop and index == 0 and count > 0)
            if on_sent is not None:
                on_sent(seq, dff[index], time.perf_counter())
            count += 1
        if not loop:
            return count
