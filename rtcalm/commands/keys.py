"""``rtcalm keys``: CurveZMQ key pairs for the daemon and its clients (see rtcalm/security.py)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "keys", help="generate CurveZMQ keys for an authenticated, encrypted daemon",
        description="Key pairs for `rtcalm serve --keys DIR`: the daemon's, and one per client (rig, "
                    "viewer, controller). Give each client DIR/server.key and its own "
                    "DIR/clients/NAME.key_secret; the daemon admits the public keys in DIR/authorized_clients.")
    actions = parser.add_subparsers(dest="action", required=True)
    generate = actions.add_parser("generate", help="a new server key pair plus client key pairs in DIR")
    generate.add_argument("directory", metavar="DIR")
    generate.add_argument("--clients", nargs="+", default=["client"], metavar="NAME",
                          help="client names (default: client)")
    add = actions.add_parser("add-client", help="one more authorized client key pair in DIR")
    add.add_argument("directory", metavar="DIR")
    add.add_argument("name", metavar="NAME")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rtcalm.security import add_client, generate_keys

    if args.action == "generate":
        written = generate_keys(args.directory, args.clients)
    else:
        written = {f"client:{args.name}": add_client(args.directory, args.name)}
    for what, path in written.items():
        print(f"rtcalm keys: {what:16s} {path}", file=sys.stderr)
    return 0
