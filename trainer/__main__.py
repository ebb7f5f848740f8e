"""``python -m trainer pretrain --config CONFIG [--data-root DIR] [--out DIR] [--resume] [--no-progress]``"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtcalm.errors import RtcalmError

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Offline training of CalM models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pre = commands.add_parser("pretrain", help="self-supervised pretraining (tokenizer, then transformer)",
                              description="Train the tokenizer, then the transformer, validate on held-out mice, "
                                          "write checkpoints (safetensors + JSON) and metrics.json.")
    pre.add_argument("--config", required=True, help="training config JSON, e.g. configs/pretrain_default.json")
    pre.add_argument("--data-root", default=str(REPO_ROOT.parent / "shared" / "data" / "real"),
                     help="folder the config's file globs are relative to (default: ../shared/data/real)")
    pre.add_argument("--out", help="run folder (default: runs/<config name>)")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last")
    pre.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from trainer.config import load_train_config
        from trainer.pretrain import pretrain

        config = load_train_config(args.config)
        out = Path(args.out) if args.out else REPO_ROOT / "runs" / config.name
        pretrain(config, args.data_root, out, resume=args.resume, progress=not args.no_progress)
    except RtcalmError as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trainer: interrupted; continue with --resume (from the last periodic checkpoint)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
