"""Argument types shared by the command lines (``rtcalm`` and ``python -m trainer``): each turns bad text
into argparse's one-line usage error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _integer_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan, for which every comparison is false
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _integer_at_least(text, 0, "an integer >= 0")


# --- options several commands share, spelled and explained once ---

def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="shipped model name ('default', 'tokens', ...) or a checkpoint directory (default: default)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_synthetic_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--synthetic`` (``what`` it does with the built-in recording) and ``--seed`` of that recording."""
    parser.add_argument("--synthetic", action="store_true", help=what)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic recording")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", help="where the model runs (as rtcalm serve --backend)")


def add_client_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """``--keys DIR`` and ``--client NAME`` of a client of a daemon with CurveZMQ keys; read them with
    :func:`client_keys`."""
    parser.add_argument("--keys", metavar="DIR", help="CurveZMQ key directory (rtcalm keys generate DIR)")
    parser.add_argument("--client", default="client", metavar="NAME",
                        help="with --keys: this client's name in DIR/clients (default 'client')")


def client_keys(args: argparse.Namespace):
    """The client's ClientKeys from ``--keys``/``--client``; None without ``--keys``."""
    from rtcalm.security import ClientKeys

    return ClientKeys.from_directory(args.keys, args.client) if args.keys else None


def head_json(text: str) -> Path:
    """The head's .json: ``text`` itself, or the one head file in the directory ``text``."""
    from rtcalm.errors import RtcalmError

    path = Path(text)
    if path.is_dir():
        found = []
        for candidate in sorted(path.glob("*.json")):
            try:
                document = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(document, dict) and document.get("format") == "rtcalm-head":
                found.append(candidate)
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise RtcalmError(f"--head {text!r}: a directory with {len(found)} head files ({names}); give the .json")
        return found[0]
    if not path.is_file():
        raise RtcalmError(f"--head {text!r}: no such head file or directory")
    return path
