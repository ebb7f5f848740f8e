"""Soak (``rtcalm bench soak``): ``rtcalm serve`` under a steady rig load for a long time; the daemon's
memory and the latency over time.

The daemon runs as its own process (as deployed). A simulated rig sends a synthetic recording (looped, a
reset at every pass) on an absolute schedule at the rate; a subscriber receives every prediction. Per
window (default 60 s) it records the daemon's resident memory (VmRSS from /proc, so Linux only), the
latency rig send -> prediction received (the frame's acquisition stamp against the arrival, both on this
machine's wall clock) as p50 / p99 / max, and the frames sent and predictions received.

Checks (``rtcalm bench soak`` exits with status 1 when one is not met):
- memory: resident size growth from the end of the first window (start-up allocations done) to the
  last window under ``max_growth_mib`` (needs two windows or more);
- latency: the p99 of every window under ``max_p99_ms`` (default: one frame period);
- no frame lost: none dropped by the rig and no gap in the daemon's count of the last pass.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from rtcalm.bench.timing import percentiles_ms
from rtcalm.errors import RtcalmError

SESSION = "soak"
RECORDING_SECONDS = 120  # the synthetic recording the rig loops over


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RtcalmError(f"/proc/{pid}/status has no VmRSS line")


class LatencyCollector(threading.Thread):
    """Receives predictions; keeps (receive time, latency in ns) per prediction for the windows."""

    def __init__(self, subscriber):
        super().__init__(daemon=True, name="soak-subscriber")
        self.subscriber = subscriber
        self.samples: list[tuple[float, int]] = []  # (monotonic receive time, latency ns)
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        from rtcalm.client import Prediction

        while not self.stop.is_set():
            message = self.subscriber.receive(timeout_ms=200)
            if message is None:
                continue
            now_ns = time.time_ns()
            if isinstance(message, Prediction):
                with self.lock:
                    self.samples.append((time.monotonic(), now_ns - message.t_acq_ns))
            else:
                self.errors += 1

    def window(self, start: float, end: float) -> np.ndarray:
        with self.lock:
            return np.array([latency for t, latency in self.samples if start <= t < end], dtype=np.int64)


def _window_row(t_s: float, rss: float, frames_sent: int, latencies_ns: np.ndarray) -> dict:
    summary = percentiles_ms(latencies_ns)
    return {"t_s": round(t_s, 1), "rss_mib": round(rss, 1), "frames_sent": frames_sent,
            "predictions": int(latencies_ns.size), "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "max_ms": float(latencies_ns.max()) / 1e6 if latencies_ns.size else None}


def soak(*, minutes: float, neurons: int, rate_hz: float, window_s: float, model: str, backend: str | None,
         progress=None) -> dict:
    """Run the soak (module docstring); every window is also passed to ``progress`` as it closes."""
    from rtcalm.client import ControlClient, PredictionSubscriber, RigSender
    from rtcalm.daemon.process import DaemonProcess
    from rtcalm.sim import make_synthetic

    if not Path("/proc/self/status").is_file():
        raise RtcalmError("bench soak reads the daemon's memory from /proc/PID/status, which only Linux has")
    if minutes <= 0 or neurons < 1 or rate_hz <= 0 or window_s <= 0:
        raise RtcalmError("minutes, neurons, rate and window must be positive")
    if window_s > minutes * 60:
        raise RtcalmError(f"a window of {window_s:g} s is longer than the soak ({minutes * 60:g} s): no window "
                          "would close")
    recording = make_synthetic(n_neurons=neurons, n_frames=int(rate_hz * RECORDING_SECONDS), seed=0).dff
    recording = recording.astype(np.float32)
    extra = ["--backend", backend] if backend else []
    windows = []
    with DaemonProcess(model=model, extra_args=extra) as daemon:
        pid = daemon.process.pid
        subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions=SESSION)
        collector = LatencyCollector(subscriber)
        collector.start()
        sender = RigSender(daemon.endpoints["ingest"], session=SESSION)
        control = ControlClient(daemon.endpoints["control"], timeout_ms=30000)
        period = 1.0 / rate_hz
        start = time.monotonic()
        end = start + minutes * 60
        next_window = start + window_s
        window_start, sent_in_window, frame_index = start, 0, 0
        while time.monotonic() < end:
            due = start + frame_index * period  # absolute schedule: no drift from send jitter
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            position = frame_index % recording.shape[0]
            sender.send(recording[position], reset=frame_index > 0 and position == 0)
            frame_index += 1
            sent_in_window += 1
            now = time.monotonic()
            if now >= next_window:
                windows.append(_window_row(now - start, rss_mib(pid), sent_in_window,
                                           collector.window(window_start, now)))
                if progress is not None:
                    progress(windows[-1])
                window_start, next_window, sent_in_window = now, now + window_s, 0
        time.sleep(1.0)  # the last predictions
        session = {s["session"]: s for s in control.status()["sessions"]}.get(SESSION, {})
        collector.stop.set()
        collector.join()
        for client in (sender, subscriber, control):
            client.close()
    return {"minutes": minutes, "neurons": neurons, "rate_hz": rate_hz, "window_s": window_s,
            "frames_sent": frame_index, "rig_dropped": sender.dropped, "error_messages": collector.errors,
            "daemon_session": session, "windows": windows}


def check(result: dict, max_growth_mib: float, max_p99_ms: float) -> dict:
    """The soak's checks (module docstring), each with its value, limit and whether it is met."""
    windows = result["windows"]
    checks = {}
    if len(windows) >= 2:
        growth = windows[-1]["rss_mib"] - windows[0]["rss_mib"]
        checks["memory_growth_mib"] = {"value": round(growth, 1), "limit": max_growth_mib,
                                       "met": growth < max_growth_mib}
    worst = max((w["p99_ms"] for w in windows if w["p99_ms"] is not None), default=None)
    checks["worst_window_p99_ms"] = {"value": worst, "limit": max_p99_ms,
                                     "met": worst is not None and worst < max_p99_ms}
    # Frames of the last pass: the daemon counts per stream, and every reset starts a fresh one.
    lost = result["rig_dropped"] + result["daemon_session"].get("gap_frames", 0)
    checks["lost_frames"] = {"value": lost, "limit": 0, "met": lost == 0}
    return checks


def format_report(result: dict) -> str:
    lines = [f"soak: {result['neurons']} neurons at {result['rate_hz']:g} Hz for {result['minutes']:g} min, "
             f"{result['frames_sent']} frames sent, {result['rig_dropped']} dropped by the rig, "
             f"{result['error_messages']} error messages",
             f"  {'t (s)':>8} {'RSS MiB':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'sent':>6} {'predictions':>11}"]

    def ms(value):
        return f"{'-':>8}" if value is None else f"{value:8.2f}"

    for w in result["windows"]:
        lines.append(f"  {w['t_s']:>8.1f} {w['rss_mib']:>8.1f} {ms(w['p50_ms'])} {ms(w['p99_ms'])} {ms(w['max_ms'])} "
                     f"{w['frames_sent']:>6} {w['predictions']:>11}")
    lines.append("  checks:")
    for name, item in result["checks"].items():
        lines.append(f"    {name:<22} {'met' if item['met'] else 'NOT met':8} (measured {item['value']}, "
                     f"limit {item['limit']})")
    if "memory_growth_mib" not in result["checks"]:
        lines.append("    memory_growth_mib      not checked (needs two windows)")
    return "\n".join(lines)
