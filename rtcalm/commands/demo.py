"""``rtcalm demo``: the daemon with the default model, fed by the rig simulator, with a live terminal view."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque

import numpy as np

SESSION = "demo"
SEND_RING = 1 << 16


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the daemon, stream a synthetic rig into it, show live latency and accuracy",
        description="Start the daemon (its own process, free loopback ports) with the default model, stream a "
                    "synthetic recording into it at its frame rate, and show a live view: latency percentiles, "
                    "frames, forecast accuracy so far against the copy-last baseline, decoded values. "
                    "Ctrl-C stops everything cleanly.")
    parser.add_argument("--model", default="default", help="shipped model name or checkpoint directory")
    parser.add_argument("--neurons", type=int, default=512, help="neurons of the synthetic rig (default 512)")
    parser.add_argument("--rate", type=float, default=30.0, metavar="HZ", help="frame rate (default 30)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    parser.add_argument("--plain", action="store_true",
                        help="print a status line every 2 s instead of redrawing the screen (for logs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic recording")
    parser.set_defaults(handler=run)


class Accuracy:
    """Running mean squared error of the model's forecasts and of the copy-last baseline, over the
    neurons the daemon marks predictable, at two horizons: the next frame and the last forecast step."""

    def __init__(self):
        self.sums = {}  # horizon steps -> [model squared error, copy-last squared error, values]

    def add(self, steps: int, forecast: np.ndarray, last: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> None:
        valid = mask & np.isfinite(forecast) & np.isfinite(actual) & np.isfinite(last)
        if not valid.any():
            return
        row = self.sums.setdefault(steps, [0.0, 0.0, 0])
        row[0] += float(np.sum((forecast[valid] - actual[valid]) ** 2))
        row[1] += float(np.sum((last[valid] - actual[valid]) ** 2))
        row[2] += int(valid.sum())

    def lines(self, rate_hz: float) -> list[str]:
        if not self.sums:
            return ["  (no scored forecasts yet: neurons need a warm-up of running statistics)"]
        out = []
        for steps, (model, copy_last, count) in sorted(self.sums.items()):
            skill = 1.0 - model / copy_last if copy_last > 0 else float("nan")
            out.append(f"  {steps:3d} frame(s) ahead ({steps / rate_hz * 1e3:6.0f} ms): MSE model {model / count:.5f}, "
                       f"copy-last {copy_last / count:.5f}, skill {skill:+.1%}  ({count} values)")
        return out


def run(args: argparse.Namespace) -> int:
    from rtcalm.client import ErrorMessage, Prediction, PredictionSubscriber, RigSender
    from rtcalm.commands.replay import check_rate, stream
    from rtcalm.daemon.process import DaemonProcess
    from rtcalm.data import make_synthetic
    from rtcalm.errors import RtcalmError
    from rtcalm.model import resolve_model

    if args.neurons < 1:
        raise RtcalmError(f"--neurons must be positive, got {args.neurons}")
    rate_hz = check_rate(args.rate)
    plain = args.plain or not sys.stdout.isatty()
    model_dir = resolve_model(args.model)  # a clear one-line error before anything starts
    recording = make_synthetic(n_neurons=args.neurons, n_frames=9000, seed=args.seed)
    dff = recording.dff
    n_frames = dff.shape[0]
    print(f"rtcalm demo: starting the daemon with model {model_dir.name} ...", file=sys.stderr)

    send_times = np.full(SEND_RING, np.nan)  # perf_counter of each sent frame, by seq % SEND_RING
    latencies = deque(maxlen=2000)  # closed loop, ms
    daemon_latencies = deque(maxlen=2000)
    accuracy = Accuracy()
    state = {"predictions": 0, "errors": 0, "last_error": "", "decoded": {}, "batched": 0, "model": "",
             "horizon": 0}
    stop = threading.Event()

    with DaemonProcess(model=str(model_dir)) as daemon, \
            PredictionSubscriber(daemon.endpoints["publish"], sessions=SESSION) as subscriber, \
            RigSender(daemon.endpoints["ingest"], session=SESSION) as sender:
        time.sleep(0.2)  # let the subscription reach the daemon

        def on_sent(seq, _frame, now):
            send_times[seq % SEND_RING] = now

        streamer = threading.Thread(target=stream, args=(dff, sender, rate_hz),
                                    kwargs={"loop": True, "stop": stop, "on_sent": on_sent}, daemon=True)
        started = time.monotonic()
        streamer.start()
        last_draw = 0.0
        try:
            while args.duration is None or time.monotonic() - started < args.duration:
                message = subscriber.receive(timeout_ms=50)
                now = time.perf_counter()
                if isinstance(message, Prediction):
                    _record(message, now, send_times, latencies, daemon_latencies, accuracy, state, dff, n_frames)
                elif isinstance(message, ErrorMessage):
                    state["errors"] += 1
                    state["last_error"] = f"{message.code}: {message.message}"
                if time.monotonic() - last_draw >= (2.0 if plain else 0.5):
                    last_draw = time.monotonic()
                    _draw(args, sender, state, latencies, daemon_latencies, accuracy, daemon.endpoints,
                          time.monotonic() - started, rate_hz, plain=plain)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            streamer.join(5.0)
        _draw(args, sender, state, latencies, daemon_latencies, accuracy, daemon.endpoints,
              time.monotonic() - started, rate_hz, plain=True)
    print("rtcalm demo: stopped", file=sys.stderr)
    return 0


def _record(message, now, send_times, latencies, daemon_latencies, accuracy, state, dff, n_frames) -> None:
    sent = send_times[message.seq % SEND_RING]
    if np.isfinite(sent):
        latencies.append((now - sent) * 1e3)
    daemon_latencies.append((message.t_pub_ns - message.t_recv_ns) / 1e6)
    state["predictions"] += 1
    state["batched"] += message.folded
    state["decoded"] = message.decoded
    state["model"] = message.model_version
    state["horizon"] = message.horizon
    # Score against the frames the simulator will send next, within the same pass of the recording
    # (every pass starts a fresh stream).
    index = message.seq % n_frames
    last = dff[index]
    for steps in sorted({1, message.horizon}):
        if index + steps < n_frames:
            accuracy.add(steps, message.forecast[:, steps - 1], last, dff[index + steps], message.predictable)


def _percentiles(values) -> str:
    if not values:
        return "-"
    p50, p99, p999 = np.percentile(np.fromiter(values, float), [50, 99, 99.9])
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   p99.9 {p999:6.2f} ms"


def _draw(args, sender, state, latencies, daemon_latencies, accuracy, endpoints, elapsed, rate_hz, *, plain) -> None:
    decoded = state["decoded"]
    lines = [
        f"rtcalm demo — {args.neurons} neurons at {rate_hz:g} Hz, model {state['model'] or '(waiting)'}, "
        f"running {elapsed:5.0f} s",
        f"frames      sent {sender.sent}, dropped by the sender {sender.dropped}, predictions {state['predictions']}, "
        f"folded into batches {state['batched']}, errors {state['errors']}",
        f"latency     rig send -> prediction   {_percentiles(latencies)}",
        f"            inside the daemon        {_percentiles(daemon_latencies)}",
        "accuracy    predictable neurons, forecast vs copy-last (skill > 0: better than copy-last)",
        *accuracy.lines(rate_hz),
        "decoded     " + (", ".join(f"{k} = {v}" for k, v in decoded.items())
                          if decoded else "none (no decoding head loaded for this session: control load_head)"),
        f"metrics     {endpoints.get('metrics', '-')}",
    ]
    if state["last_error"]:
        lines.append(f"last error  {state['last_error']}")
    if plain:
        print("\n".join(lines) + "\n", flush=True)
    else:
        lines.append("Ctrl-C to stop")
        sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        sys.stdout.flush()
