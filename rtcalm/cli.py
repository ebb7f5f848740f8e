"""The ``rtcalm`` command line.

Each subcommand lives in its own module under ``rtcalm/commands/`` with a ``register(subparsers)``
function; heavy imports (torch, numba) happen inside the handlers so ``rtcalm --help`` stays fast.
User errors (:class:`rtcalm.errors.RtcalmError`) print one line and exit with status 2.

The base install (``pip install .``: the rig-side client) has no torch, numba or scipy. A command that
needs them prints one line naming what to install and exits with status 2, never a traceback; commands
whose modules cannot even be imported without them still appear in ``rtcalm --help``.
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
    "rtcalm.commands.fit_head",
    "rtcalm.commands.decode",
    "rtcalm.commands.trigger_eval",
    "rtcalm.commands.compile",
    "rtcalm.commands.serve",
    "rtcalm.commands.keys",
    "rtcalm.commands.replay",
    "rtcalm.commands.listen",
    "rtcalm.commands.heads",
    "rtcalm.commands.demo",
]

FULL_INSTALL = 'pip install torch==2.13.0 "rtcalm[full]" (from a checkout: pip install torch==2.13.0 -e ".[full]")'
# Top-level modules that the base install lacks, and the install that brings each one. An import of any
# other missing module is a bug and keeps its traceback.
INSTALL_FOR_MODULE = {
    **dict.fromkeys(("torch", "numba", "llvmlite", "scipy", "onnxruntime", "onnx", "h5py", "kneed",
                     "prometheus_client", "safetensors", "sklearn", "tqdm"), FULL_INSTALL),
    "matplotlib": 'pip install "rtcalm[plots]"',
    "pynwb": 'pip install "rtcalm[nwb]"',
    "tensorrt": 'pip install "rtcalm[gpu]" (see docs/backends.md)',
}


def missing_dependency_message(exc: ModuleNotFoundError, what: str) -> str | None:
    """One line saying which install ``what`` needs, if ``exc`` is a dependency the base install lacks."""
    module = (exc.name or "").split(".")[0]
    install = INSTALL_FOR_MODULE.get(module)
    if install is None:
        return None
    return f"{what} needs {module}, which is not installed: {install}"


def _command_name(module_name: str) -> str:
    return module_name.rsplit(".", 1)[1].replace("_", "-")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The parser, and for each command whose module needs a dependency that is not installed, the
    one-line message to print when it is run."""
    parser = argparse.ArgumentParser(
        prog="rtcalm",
        description="Real-time CalM inference for two-photon calcium imaging.",
    )
    parser.add_argument("--version", action="version", version=f"rtcalm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    unavailable: dict[str, str] = {}
    for module_name in COMMAND_MODULES:
        name = _command_name(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            message = missing_dependency_message(exc, f"rtcalm {name}")
            if message is None:
                raise
            unavailable[name] = message
            subparsers.add_parser(name, help=f"(not installed: {message.split(': ', 1)[1]})")
            continue
        module.register(subparsers)
    return parser, unavailable


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, unavailable = build_parser()
    command = _requested_command(argv)
    if command in unavailable:  # before parsing: its real arguments are unknown to the placeholder
        print(f"rtcalm: error: {unavailable[command]}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.command_line = ["rtcalm", *argv]  # for provenance (rtcalm fit-head)
    try:
        return int(args.handler(args) or 0)
    except RtcalmError as exc:
        print(f"rtcalm: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        message = missing_dependency_message(exc, f"rtcalm {args.command}")
        if message is None:
            raise
        print(f"rtcalm: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
