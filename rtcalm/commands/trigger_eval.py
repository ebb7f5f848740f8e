"""``rtcalm trigger-eval FILE... --event EVENT (--rules RULES | --compare) [--model M] [--json]``.

Replays recordings through the daemon's own per-frame path (:mod:`rtcalm.daemon.offline`) and scores
trigger rules against events defined on the same data (:mod:`rtcalm.eval.triggers`; docs/triggers.md).
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_backend_argument, add_json_argument, add_model_argument


def frame_window(text: str) -> tuple[int, int]:
    """``FIRST:LAST`` frames ahead, 1 <= FIRST <= LAST."""
    try:
        first, last = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST frames ahead (e.g. 1:5), got {text!r}") from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "trigger-eval", help="score trigger rules against events in recordings, replayed through the daemon's path",
        description="Replays each recording frame by frame through the daemon's statistics, model and rules, then "
                    "scores each rule's fires against the event's onsets: precision (fires followed by an onset "
                    "within the event's window), recall (onsets preceded by a fire), median lead in ms. --compare "
                    "sweeps the threshold of a reactive (activity) and a predictive (forecast) rule on the event's "
                    "own neurons and reports the recall and lead each reaches at precision 0.5 and 0.8.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--event", required=True, metavar="EVENT", help="an event file (TOML, docs/triggers.md)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--rules", metavar="RULES", help="a rules file (TOML) whose rules are scored")
    what.add_argument("--compare", action="store_true", help="reactive against forecast rules, thresholds swept")
    parser.add_argument("--forecast-frames", type=frame_window, default=(1, 5), metavar="FIRST:LAST",
                        help="--compare: the forecast rule's window of frames ahead (default 1:5)")
    add_model_argument(parser)
    add_backend_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.engine import load_engine
    from rtcalm.eval.triggers import compare, evaluate_rules, read_event_file
    from rtcalm.triggers.rules import read_rules_file

    event = read_event_file(args.event)
    rules = None if args.compare else read_rules_file(args.rules)
    recordings = [load_recording(path) for path in args.files]
    engine = load_engine(args.model, backend=args.backend)
    if args.compare:
        result = compare(engine, recordings, event, forecast_frames=args.forecast_frames)
    else:
        result = evaluate_rules(engine, recordings, rules, event)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"event {result['event']}; {result['files']} file(s)")
    if args.compare:
        print(f"{'rule':10s} {'precision':>9s} {'recall':>7s} {'lead ms':>8s} {'threshold':>9s}")
        for name, levels in result["compare"].items():
            for level, point in levels.items():
                cells = ("unreachable",) if point is None else (
                    f"{point['recall']:7.3f}", f"{point['lead_ms']:8.1f}" if point["lead_ms"] is not None else "       -",
                    f"{point['threshold']:9.3f}")
                print(f"{name:10s} {'>= ' + level:>9s} " + " ".join(cells))
        return 0
    print(f"{'rule':24s} {'fires':>6s} {'precision':>9s} {'recall':>7s} {'lead ms':>8s}")
    for name, score in result["rules"].items():
        cells = [f"{score[key]:{width}.3f}" if score[key] is not None else f"{'-':>{width}s}"
                 for key, width in (("precision", 9), ("recall", 7), ("lead_ms", 8))]
        print(f"{name:24.24s} {score['fires']:6d} " + " ".join(cells))
    return 0
