"""``rtcalm listen``: subscribe to a daemon's publish socket and print every prediction, error and trigger
as one JSON line (the fields are in docs/protocol.md, "Watching the stream").

Needs only the base (client) install: pyzmq, msgpack, numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from rtcalm.commands.arguments import add_client_keys_arguments, client_keys, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "listen", help="print the daemon's predictions, errors and triggers as JSON lines",
        description="Subscribe to a daemon's publish socket and print each prediction, error and trigger as "
                    "one JSON line on stdout (fields: docs/protocol.md, 'Watching the stream'). Stops on "
                    "Ctrl-C, or after --count messages. Needs only the client install.")
    parser.add_argument("--from", dest="address", default="tcp://127.0.0.1:7751", metavar="ADDR",
                        help="the daemon's publish address (default tcp://127.0.0.1:7751)")
    parser.add_argument("--session", action="append", metavar="ID",
                        help="only this session's predictions, errors and triggers (repeat for several; "
                             "default: every session, and errors that could not be attributed to one)")
    parser.add_argument("--triggers-only", action="store_true",
                        help="only trigger messages (a trigger rule fired): of --session, or of every session")
    parser.add_argument("--count", type=positive_int, metavar="N", help="stop after N messages")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="fail (exit status 1) if S seconds pass without a message")
    parser.add_argument("--vectors", action="store_true",
                        help="also print the per-neuron vectors: 'forecast' (neurons x horizon) and 'predictable'")
    add_client_keys_arguments(parser)
    parser.set_defaults(handler=run)


def _finite_or_none(value):
    """JSON has no NaN or Infinity: a missing value (NaN) is printed as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    return value


def message_record(message, *, vectors: bool, t_listen_ns: int) -> dict:
    """The JSON object printed for one published message."""
    from dataclasses import asdict

    from rtcalm.protocol import Prediction, Trigger

    if isinstance(message, Trigger):
        return _finite_or_none({"type": "trigger", **asdict(message), "t_listen_ns": t_listen_ns})

    if isinstance(message, Prediction):
        record = {"type": "prediction", "session": message.session, "seq": message.seq,
                  "t_acq_ns": message.t_acq_ns, "t_recv_ns": message.t_recv_ns, "t_pub_ns": message.t_pub_ns,
                  "t_listen_ns": t_listen_ns, "n": message.n_neurons, "horizon": message.horizon,
                  "rate_hz": message.rate_hz, "model_version": message.model_version,
                  "stream_id": message.stream_id, "stream_frame": message.stream_frame, "folded": message.folded,
                  "predictable_count": int(message.predictable.sum()), "decoded": message.decoded,
                  "stage_ns": message.stage_ns}
        if vectors:
            record["forecast"] = message.forecast.tolist()
            record["predictable"] = message.predictable.astype(int).tolist()
        return _finite_or_none(record)
    return {"type": "error", "session": message.session, "seq": message.seq, "code": message.code,
            "message": message.message, "t_recv_ns": message.t_recv_ns, "t_listen_ns": t_listen_ns}


def run(args: argparse.Namespace) -> int:
    from rtcalm.client import PredictionSubscriber, TriggerSubscriber
    from rtcalm.errors import RtcalmError
    from rtcalm.protocol import SESSION_ID_PATTERN, ProtocolError

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise RtcalmError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    for session in args.session or ():
        if not SESSION_ID_PATTERN.fullmatch(session):
            raise RtcalmError(f"--session {session!r}: a session id is 1-64 characters of A-Z a-z 0-9 _ . : -")
    keys = client_keys(args)
    printed = 0
    if args.triggers_only:
        subscriber = TriggerSubscriber(args.address, sessions=args.session, keys=keys)
    else:  # with sessions: their predictions, errors and triggers; without: everything, triggers included
        subscriber = PredictionSubscriber(args.address, sessions=args.session, keys=keys, triggers=True)
    with subscriber:
        last_message = time.monotonic()
        try:
            while args.count is None or printed < args.count:
                try:
                    message = subscriber.receive(timeout_ms=200)
                except ProtocolError as exc:  # not rtcalm's publish socket, or another protocol version
                    print(f"rtcalm listen: skipped a message that does not parse ({exc})", file=sys.stderr)
                    continue
                if message is None:
                    if args.timeout is not None and time.monotonic() - last_message > args.timeout:
                        print(f"rtcalm listen: no message from {args.address} within {args.timeout:g} s "
                              f"({printed} printed)", file=sys.stderr)
                        return 1
                    continue
                last_message = time.monotonic()
                record = message_record(message, vectors=args.vectors, t_listen_ns=time.time_ns())
                sys.stdout.write(json.dumps(record, allow_nan=False) + "\n")
                sys.stdout.flush()
                printed += 1
        except KeyboardInterrupt:  # the normal way to stop listening
            pass
        except BrokenPipeError:  # e.g. `rtcalm listen | head`: the reader is gone; so is the need to print
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0
