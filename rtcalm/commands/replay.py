"""``rtcalm replay FILE|--synthetic``: a rig simulator that streams a recording to the daemon at its
real frame rate."""

from __future__ import annotations

import argparse
import sys
import time

from rtcalm.commands.arguments import add_synthetic_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay", help="rig simulator: stream a recording to the daemon at its frame rate",
        description="Stream a contiguous recording (any supported format, or a synthetic one) frame by frame "
                    "to a daemon's ingest socket, paced at the recording's frame rate (or --rate), like a "
                    "live rig. With --loop, every pass starts a fresh stream (reset=true on its first frame).")
    parser.add_argument("file", nargs="?", metavar="FILE", help="recording file")
    add_synthetic_arguments(parser, "stream a built-in synthetic recording")
    parser.add_argument("--neurons", type=int, default=512, help="neurons of the synthetic recording (default 512)")
    parser.add_argument("--frames", type=int, default=9000,
                        help="frames of the synthetic recording (default 9000: 5 min at 30 Hz)")
    parser.add_argument("--to", default="tcp://127.0.0.1:7750", metavar="ADDR",
                        help="the daemon's ingest address (default tcp://127.0.0.1:7750)")
    parser.add_argument("--rate", type=float, metavar="HZ", help="frames per second (default: the recording's rate)")
    parser.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    parser.add_argument("--session", default="replay", help="session id (default 'replay')")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run)


def load_source(args: argparse.Namespace):
    """The recording to stream: (dff (frames, neurons) float32, rate_hz, description)."""
    from rtcalm.errors import RtcalmError

    if bool(args.file) == bool(args.synthetic):
        raise RtcalmError("give a recording FILE or --synthetic (one of them)")
    if args.synthetic:
        from rtcalm.sim import make_synthetic

        if args.neurons < 1 or args.frames < 2:
            raise RtcalmError(f"--neurons must be >= 1 and --frames >= 2, got {args.neurons} and {args.frames}")
        recording = make_synthetic(n_neurons=args.neurons, n_frames=args.frames, seed=args.seed)
    else:
        from rtcalm.data import load_recording

        recording = load_recording(args.file)
    if recording.is_trial_structured:
        raise RtcalmError(f"{recording.meta.source}: trial-structured ({recording.n_trials} epochs of "
                          f"{recording.frames_per_trial} frames); replay streams contiguous recordings only, "
                          "because gluing epochs would fake a continuous trace")
    return recording.dff, recording.rate_hz, f"{recording.meta.source or 'synthetic'} ({recording.n_neurons} " \
                                              f"neurons, {recording.n_frames} frames)"


def run(args: argparse.Namespace) -> int:
    from rtcalm.client import RigSender
    from rtcalm.commands.streaming import check_rate, stream

    if args.rate is not None:
        check_rate(args.rate)  # before loading anything
    dff, rate_hz, description = load_source(args)
    rate_hz = check_rate(args.rate if args.rate is not None else rate_hz)
    print(f"rtcalm replay: {description} -> {args.to} as session {args.session!r} at {rate_hz:g} Hz"
          f"{' (looping)' if args.loop else ''}", file=sys.stderr)
    progress = {"last": time.perf_counter()}

    with RigSender(args.to, session=args.session) as sender:
        def report(seq, _frame, now):
            if not args.quiet and now - progress["last"] >= 1.0:
                progress["last"] = now
                print(f"rtcalm replay: sent {sender.sent} frames, dropped {sender.dropped}", file=sys.stderr)

        try:
            stream(dff, sender, rate_hz, loop=args.loop, on_sent=report)
        except KeyboardInterrupt:
            pass
        why = " (the daemon was not reading and the send queue was full)" if sender.dropped else ""
        print(f"rtcalm replay: done, sent {sender.sent} frames, dropped {sender.dropped}{why}", file=sys.stderr)
    return 0
