"""``rtcalm heads load|unload|list --session S``: a running daemon's decoding heads, from the shell.

Drives the control commands ``load_head``, ``unload_head`` and ``status`` (docs/protocol.md) over the
control socket; prints the daemon's reply (the session's heads). The head's path is read by the daemon,
on its machine. Needs only the client install.
"""

from __future__ import annotations

import argparse
import json

from rtcalm.commands.arguments import add_client_keys_arguments, client_keys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "heads", help="load, unload or list a running daemon's decoding heads",
        description="Load a head into a running session (the daemon checks it completely first; a refused "
                    "head changes nothing), unload one by name, or list a session's heads.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser("load", help="load the head at PATH (its .json, or the directory fit-head wrote)")
    load.add_argument("path", metavar="PATH", help="the head's .json on the daemon's machine, or its directory")
    unload = actions.add_parser("unload", help="unload the head NAME")
    unload.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="list the session's heads")
    for action in (load, unload, actions.choices["list"]):
        action.add_argument("--session", required=True, metavar="ID")
        action.add_argument("--control", default="tcp://127.0.0.1:7752", metavar="ADDR",
                            help="the daemon's control address (default tcp://127.0.0.1:7752)")
        add_client_keys_arguments(action)
        action.add_argument("--timeout", type=float, default=10.0, metavar="S",
                            help="seconds to wait for the daemon's reply (default 10)")
        action.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
        action.set_defaults(handler=run)


def _head_path(text: str) -> str:
    """A directory with exactly one head file stands for that file; anything else is sent as given (the
    daemon reads it and answers for it)."""
    from pathlib import Path

    if Path(text).is_dir():
        from rtcalm.commands.arguments import head_json

        return str(head_json(text).resolve())
    return text


def run(args: argparse.Namespace) -> int:
    import math

    from rtcalm.client import ControlClient
    from rtcalm.errors import RtcalmError
    from rtcalm.protocol import SESSION_ID_PATTERN

    if not SESSION_ID_PATTERN.fullmatch(args.session):
        raise RtcalmError(f"--session {args.session!r}: a session id is 1-64 characters of A-Z a-z 0-9 _ . : -")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise RtcalmError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    keys = client_keys(args)
    client = ControlClient(args.control, timeout_ms=int(args.timeout * 1000), keys=keys)
    try:
        if args.action == "load":
            reply = client.load_head(args.session, _head_path(args.path))
            heads = reply["heads"]
            summary = f"{'replaced' if reply['replaced'] else 'loaded'} head {reply['head']['name']!r} in session {args.session!r}"
        elif args.action == "unload":
            reply = client.unload_head(args.session, args.name)
            heads = reply["heads"]
            summary = f"unloaded head {args.name!r} from session {args.session!r}"
        else:
            sessions = {s["session"]: s for s in client.status()["sessions"]}
            if args.session not in sessions:
                raise RtcalmError(f"no session {args.session!r} on the daemon (sessions: "
                                  f"{', '.join(sessions) or 'none'})")
            heads = sessions[args.session]["heads"]
            reply = {"session": args.session, "heads": heads}
            summary = f"session {args.session!r}: {len(heads)} head(s)"
    except TimeoutError as exc:
        raise RtcalmError(str(exc)) from None
    finally:
        client.close()
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(summary)
    for head in heads:
        details = [head["kind"]]
        if head.get("pooling") == "time_bins":
            details.append(f"{head.get('features', 'backbone')}, {head['window_frames']} frames in {head['n_bins']} bins")
        else:
            details.append(f"EMA of {head['pool_frames']:g} frames")
        if head["classes"]:
            details.append(f"classes {', '.join(f'{c:g}' for c in head['classes'])}")
        print(f"  {head['name']}: {'; '.join(details)}; {head['pooled_frames']} frames taken; {head['path']}")
    return 0
