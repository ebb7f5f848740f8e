"""Soak test: `rtcalm serve` under a steady rig load for a long time; memory growth and latency over time.

    python tools/soak.py                                   # 512 neurons at 30 Hz for 20 minutes
    python tools/soak.py --minutes 60 --json soak.json     # longer, with the report as JSON
    python tools/soak.py --minutes 1 --window-s 10         # a quick check of the script itself

The daemon runs as its own process (as deployed, default backend unless --backend). A simulated rig
sends a synthetic recording (looped, a reset at every pass) on an absolute 30 Hz schedule; a subscriber
receives every prediction. Per window (default 60 s) it records the daemon's resident memory (VmRSS from
/proc), rig-send-to-prediction latency p50/p99/max, and frames sent, answered and lost.

Verdict (exit status 1 when not met):
- memory: resident size growth from the end of the first window (start-up allocations done) to the
  last window is under --max-growth-mib (default 50 MiB);
- latency: the p99 of every window is under --max-p99-ms (default: one frame period);
- no frame is lost (every sent frame answered or folded: the daemon's status counts agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class LatencyCollector(threading.Thread):
    """Receives predictions; keeps (receive time, latency) per prediction for the windows."""

    def __init__(self, subscriber):
        super().__init__(daemon=True, name="soak-subscriber")
        self.subscriber = subscriber
        self.samples: list[tuple[float, float]] = []  # (monotonic receive time, latency ms)
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
                    self.samples.append((time.monotonic(), (now_ns - message.t_acq_ns) / 1e6))
            else:
                self.errors += 1

    def window(self, start: float, end: float) -> np.ndarray:
        with self.lock:
            return np.array([latency for t, latency in self.samples if start <= t < end])


def soak(*, minutes: float, neurons: int, rate_hz: float, window_s: float, model: str | None,
         backend: str | None) -> dict:
    from rtcalm.client import ControlClient, PredictionSubscriber, RigSender
    from rtcalm.daemon.process import DaemonProcess
    from rtcalm.sim import make_synthetic

    recording = make_synthetic(n_neurons=neurons, n_frames=int(rate_hz * 120), seed=0).dff.astype(np.float32)
    extra = ["--backend", backend] if backend else []
    windows = []
    with DaemonProcess(model=model, extra_args=extra) as daemon:
        pid = daemon.process.pid
        subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions="soak")
        collector = LatencyCollector(subscriber)
        collector.start()
        sender = RigSender(daemon.endpoints["ingest"], session="soak")
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
                latencies = collector.window(window_start, now)
                windows.append({
                    "t_s": round(now - start, 1), "rss_mib": round(rss_mib(pid), 1), "frames_sent": sent_in_window,
                    "predictions": int(latencies.size),
                    "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
                    "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
                    "max_ms": float(latencies.max()) if latencies.size else None})
                print(json.dumps(windows[-1]), file=sys.stderr)
                window_start, next_window, sent_in_window = now, now + window_s, 0
        time.sleep(1.0)  # the last predictions
        session = {s["session"]: s for s in control.status()["sessions"]}.get("soak", {})
        collector.stop.set()
        collector.join()
        for client in (sender, subscriber, control):
            client.close()
    return {"minutes": minutes, "neurons": neurons, "rate_hz": rate_hz, "frames_sent": frame_index,
            "rig_dropped": sender.dropped, "error_messages": collector.errors, "daemon_session": session,
            "windows": windows}


def verdict(report: dict, max_growth_mib: float, max_p99_ms: float) -> dict:
    windows = report["windows"]
    checks = {}
    if len(windows) >= 2:
        growth = windows[-1]["rss_mib"] - windows[0]["rss_mib"]
        checks["memory_growth_mib"] = {"value": round(growth, 1), "limit": max_growth_mib,
                                       "met": growth < max_growth_mib}
    worst = max((w["p99_ms"] for w in windows if w["p99_ms"] is not None), default=None)
    checks["worst_window_p99_ms"] = {"value": worst, "limit": max_p99_ms,
                                     "met": worst is not None and worst < max_p99_ms}
    # Frames of the last pass: the daemon counts per stream, and every reset starts a fresh one.
    session = report["daemon_session"]
    lost = report["rig_dropped"] + session.get("gap_frames", 0)
    checks["lost_frames"] = {"value": lost, "limit": 0, "met": lost == 0}
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second (default 30)")
    parser.add_argument("--window-s", type=float, default=60.0, help="report interval (default 60 s)")
    parser.add_argument("--model", help="model name or checkpoint directory (default: serve's default)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx", "tensorrt"))
    parser.add_argument("--max-growth-mib", type=float, default=50.0)
    parser.add_argument("--max-p99-ms", type=float, help="default: one frame period")
    parser.add_argument("--json", metavar="FILE", help="write the report here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.neurons < 1 or args.rate <= 0 or args.window_s <= 0:
        parser.error("--minutes, --neurons, --rate and --window-s must be positive")
    report = soak(minutes=args.minutes, neurons=args.neurons, rate_hz=args.rate, window_s=args.window_s,
                  model=args.model, backend=args.backend)
    report["checks"] = verdict(report, args.max_growth_mib, args.max_p99_ms or 1000.0 / args.rate)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(json.dumps(report["checks"], indent=2))
    return 0 if all(check["met"] for check in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
