"""Protocol fuzzing against a live daemon: bad ingest messages interleaved with a valid recording.

    python tools/fuzz_daemon.py --model default --bad 100000 --frames 300     # the full run
    python tools/fuzz_daemon.py --model PATH --bad 3000 --frames 60 --json     # quick (the CI test does this)

A real daemon (torch backend, real sockets on 127.0.0.1) first serves the recording alone in lockstep
(the clean run, session ``clean``); then the same recording again (session ``valid``) with ``--bad``
malformed messages spread between its frames, sent as fast as ZeroMQ takes them. Checked:

- the daemon survives (it still answers ``status`` and its loop is alive);
- every bad message is counted: each one the protocol parser rejects offline (the same limits) adds one
  to ``rtcalm_frames_malformed_total``;
- the predictions for the valid frames equal the clean run's for the same sequence numbers (the daemon
  folds a backlog into one batch, so only some frames get their own prediction; those are compared).

Bad messages come from a seeded generator: random bytes, valid frames (of session ``fuzz``) with bytes
flipped, inserted or cut off, and structured field errors (version, type, seq, neuron count, payload
size, Inf values, two kinds of input, extra message parts, non-map msgpack). A mutation that happens to
be a valid frame is not "bad": it is classified offline and left out of the count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgpack
import numpy as np
import zmq

from rtcalm import protocol
from rtcalm.protocol import ProtocolError

FUZZ_SESSION = "fuzz"
N_NEURONS = 16
STRUCTURED = [
    {"v": 2}, {"v": "1"}, {"v": None}, {"type": "prediction"}, {"type": None}, {"seq": -1}, {"seq": 1.5},
    {"seq": True}, {"seq": "7"}, {"seq": 2**63}, {"session": ""}, {"session": "no spaces"},
    {"session": "x" * 65}, {"session": 5}, {"t_acq_ns": "now"}, {"n": 0}, {"n": -3}, {"n": N_NEURONS + 1},
    {"n": 1 << 40}, {"dff": [0.0] * N_NEURONS}, {"dff": b"\x00" * (4 * N_NEURONS - 1)},
    {"dff": b"\x00" * (4 * N_NEURONS + 4)}, {"dff": np.full(N_NEURONS, np.inf, "<f4").tobytes()},
    {"dff": None}, {"raw": np.zeros(N_NEURONS, "<f4").tobytes()}, {"reset": "yes"},
]


def _fuzz_fields(rng: np.random.Generator) -> dict:
    return {"v": protocol.PROTOCOL_VERSION, "type": "frame", "session": FUZZ_SESSION,
            "seq": int(rng.integers(0, 1000)), "t_acq_ns": 1, "n": N_NEURONS,
            "dff": rng.standard_normal(N_NEURONS).astype("<f4").tobytes()}


def bad_messages(count: int, seed: int):
    """Yield ``count`` lists of message parts, each (almost always) not a valid frame."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        kind = rng.integers(0, 6)
        if kind == 0:  # random bytes
            yield [rng.bytes(int(rng.integers(0, 200)))]
        elif kind in (1, 2, 3):  # a valid frame, damaged
            data = bytearray(msgpack.packb(_fuzz_fields(rng), use_bin_type=True))
            where = int(rng.integers(0, len(data)))
            if kind == 1:
                data[where] ^= 1 << int(rng.integers(0, 8))
            elif kind == 2:
                data = data[:where]
            else:
                data[where:where] = rng.bytes(int(rng.integers(1, 8)))
            yield [bytes(data)]
        elif kind == 4:  # one field wrong
            fields = _fuzz_fields(rng)
            fields.update(STRUCTURED[int(rng.integers(0, len(STRUCTURED)))])
            yield [msgpack.packb({k: v for k, v in fields.items() if v is not None}, use_bin_type=True)]
        else:  # wrong shape of message
            choice = int(rng.integers(0, 3))
            if choice == 0:
                yield [msgpack.packb(_fuzz_fields(rng), use_bin_type=True), b"extra part"]
            elif choice == 1:
                yield [msgpack.packb([1, "frame", FUZZ_SESSION])]
            else:
                yield [msgpack.packb(_fuzz_fields(rng), use_bin_type=True) + b"\x00trailing"]


def is_rejected(parts: list[bytes], limits) -> bool:
    """What the daemon's validation stage decides, computed offline with the same parser and limits."""
    if len(parts) != 1:
        return True
    try:
        protocol.parse_frame(parts[0], max_bytes=limits.max_message_bytes, max_neurons=limits.max_neurons,
                             max_abs_dff=limits.max_abs_dff, max_abs_fluorescence=limits.max_abs_fluorescence)
    except ProtocolError:
        return True
    return False


def _malformed_total(daemon) -> float:
    return sum(counter._value.get() for counter in daemon.metrics.malformed.values())


def _receive_until(subscriber: zmq.Socket, session: str, last_seq: int, timeout_s: float) -> dict[int, np.ndarray]:
    got, deadline = {}, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not subscriber.poll(500):
            continue
        message = protocol.parse_published(subscriber.recv_multipart())
        if isinstance(message, protocol.Prediction) and message.session == session:
            got[message.seq] = message.forecast
            if message.seq == last_seq:
                return got
    raise TimeoutError(f"no prediction for {session} seq {last_seq} within {timeout_s} s")


def fuzz(model: str, *, n_bad: int, n_frames: int, seed: int = 0, config_overrides: dict | None = None) -> dict:
    """Run the fuzzing described in the module docstring; returns a report (``ok`` and the numbers)."""
    from rtcalm.daemon import Daemon, DaemonConfig
    from rtcalm.engine import load_engine
    from rtcalm.sim import make_synthetic

    ephemeral = "tcp://127.0.0.1:0"
    sections = {"sockets": {"ingest": ephemeral, "publish": ephemeral, "control": ephemeral},
                "metrics": {"enabled": False}, "model": {"backend": "torch"}}
    for section, values in (config_overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    config = DaemonConfig().replace(**sections)
    daemon = Daemon(config, engine=load_engine(model, backend="torch"))
    endpoints = daemon.start_in_thread()
    context = zmq.Context()
    try:
        subscriber = context.socket(zmq.SUB)
        for session in ("clean", "valid"):
            subscriber.setsockopt(zmq.SUBSCRIBE, protocol.topic_for(session))
        subscriber.connect(endpoints["publish"])
        ingest = context.socket(zmq.PUSH)
        ingest.connect(endpoints["ingest"])
        recording = make_synthetic(n_neurons=N_NEURONS, n_frames=n_frames, seed=seed + 1).dff

        # The clean run, in lockstep (its first frames also wait for the subscription to get through).
        clean = {}
        for seq, frame in enumerate(recording):
            deadline = time.monotonic() + 30
            while seq not in clean:
                ingest.send(protocol.build_frame("clean", seq, time.time_ns(), frame))
                try:
                    clean.update(_receive_until(subscriber, "clean", seq, timeout_s=1.0))
                except TimeoutError:
                    if time.monotonic() > deadline or seq > 0:
                        raise
                    continue  # the subscription was not through yet: frame 0 again is a duplicate, harmless

        # The fuzzed run: bad messages spread evenly between the valid frames.
        malformed_before = _malformed_total(daemon)
        expected_rejected, accidental = 0, 0
        bad = bad_messages(n_bad, seed)
        per_frame = n_bad / n_frames
        sent_bad, start = 0, time.monotonic()
        for seq, frame in enumerate(recording):
            while sent_bad < round((seq + 1) * per_frame):
                parts = next(bad)
                if is_rejected(parts, config.limits):
                    expected_rejected += 1
                else:
                    accidental += 1
                ingest.send_multipart(parts)
                sent_bad += 1
            ingest.send(protocol.build_frame("valid", seq, time.time_ns(), frame))
        send_s = time.monotonic() - start
        fuzzed = _receive_until(subscriber, "valid", n_frames - 1, timeout_s=120)
        deadline = time.monotonic() + 30  # the counters are updated just after the last publish
        while _malformed_total(daemon) - malformed_before < expected_rejected and time.monotonic() < deadline:
            time.sleep(0.05)
        counted = _malformed_total(daemon) - malformed_before

        status_socket = context.socket(zmq.REQ)
        status_socket.setsockopt(zmq.LINGER, 0)
        status_socket.connect(endpoints["control"])
        status_socket.send(protocol.build_request("status"))
        alive = bool(status_socket.poll(10000)) and not isinstance(
            protocol.parse_reply(status_socket.recv()), protocol.ErrorMessage)
        alive = alive and daemon._thread is not None and daemon._thread.is_alive()

        differences = [float(np.nanmax(np.abs(forecast - clean[seq]), initial=0.0)) for seq, forecast in fuzzed.items()]
        nan_patterns_equal = all(np.array_equal(np.isnan(f), np.isnan(clean[s])) for s, f in fuzzed.items())
        max_difference = max(differences)
        report = {"bad_messages": n_bad, "rejected_expected": expected_rejected, "rejected_counted": counted,
                  "accidentally_valid": accidental, "valid_frames": n_frames, "predictions_compared": len(fuzzed),
                  "max_forecast_difference": max_difference, "send_seconds": round(send_s, 2), "alive": alive}
        # Batches fold frames with step_many, lockstep steps one at a time: equal up to float32 rounding.
        report["ok"] = bool(alive and counted == expected_rejected and nan_patterns_equal
                            and max_difference <= 1e-4 and n_frames - 1 in fuzzed)
        for socket in (subscriber, ingest, status_socket):
            socket.close(linger=0)
        return report
    finally:
        daemon.stop_thread()
        context.destroy(linger=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="shipped model name or checkpoint directory")
    parser.add_argument("--bad", type=int, default=100_000, help="bad messages (default 100000)")
    parser.add_argument("--frames", type=int, default=300, help="valid frames (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.bad < 0 or args.frames < 2:
        parser.error("--bad must be >= 0 and --frames >= 2")
    report = fuzz(args.model, n_bad=args.bad, n_frames=args.frames, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:26s} {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
