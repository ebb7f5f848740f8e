"""``rtcalm info FILE... [--json]``: summarise recordings (format detected from each file or suite2p plane folder)."""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_json_argument, add_synthetic_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="summarise recordings (any supported format)",
        description="Summarise recordings: neurons, frames (or trials x frames per trial), rate, labels, metadata. "
                    "With --synthetic, summarise a built-in synthetic recording instead of files.")
    parser.add_argument("files", nargs="*", metavar="FILE", help="recording files or suite2p plane folders")
    add_synthetic_arguments(parser, "summarise a built-in synthetic recording (256 neurons, 5 min at 30 Hz)")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def _format_text(summary: dict) -> str:
    meta = summary["meta"]
    if summary["trial_structured"]:
        shape = (f"{summary['trials']} trials x {summary['frames_per_trial']} frames "
                 f"({summary['trial_time_s'][0]:+.2f}..{summary['trial_time_s'][1]:+.2f} s around onset)")
    else:
        shape = f"{summary['frames']} frames ({summary['duration_s']:.1f} s)"
    known = ", ".join(f"{k}={meta[k]}" for k in ("mouse", "session", "cre_line", "area", "depth_um", "indicator",
                                                "stimulus") if meta.get(k) is not None)
    lines = [
        f"{summary['source']}",
        f"  format   {summary['format']}",
        f"  neurons  {summary['neurons']}",
        f"  time     {shape} at {summary['rate_hz']:g} Hz",
        f"  labels   {', '.join(summary['labels']) or '-'}",
        f"  dF/F     {summary['dff_range'][0]:.3f} .. {summary['dff_range'][1]:.3f}",
        f"  meta     {known or '-'}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.errors import RtcalmError
    from rtcalm.sim import make_synthetic

    if not args.files and not args.synthetic:
        raise RtcalmError("give one or more recording files, or --synthetic")
    summaries = []
    if args.synthetic:
        summaries.append(make_synthetic(seed=args.seed).summary())
    for path in args.files:
        summaries.append(load_recording(path).summary())
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    else:
        print("\n".join(_format_text(s) for s in summaries))
    return 0
