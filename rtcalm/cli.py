"""The ``rtcalm`` command line.

Each subcommand lives in its own module under ``rtcalm/commands/`` with a ``register(subparsers)``
function; heavy imports (torch, numba) happen inside the handlers so ``rtcalm --help`` stays fast.
User errors (:class:`rtcalm.errors.RtcalmError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rtcalm import __version__
from rtcalm.errors import RtcalmError

# Order is the order in `rtcalm --help`.
COMMAND_MODULES = [
    "rtcalm.commands.info",
    "rtcalm.commands.stats",
    "rtcalm.commands.bench",
    "rtcalm.commands.forecast_eval",
    "rtcalm.commands.decode_eval",
    "rtcalm.commands.compile",
    "rtcalm.commands.serve",
    "rtcalm.commands.keys",
    "rtcalm.commands.replay",
    "rtcalm.commands.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtcalm",
        description="Real-time CalM inference for two-photon calcium imaging.",
    )
    parser.add_argument("--version", action="version", version=f"rtcalm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RtcalmError as exc:
        print(f"rtcalm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
