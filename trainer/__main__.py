"""The trainer's commands::

    python -m trainer pretrain --config CONFIG [--data-root DIR] [--out DIR] [--resume] [--no-progress]
    python -m trainer baselines --config CONFIG [--kinds mlp,poco] [--out DIR] [--ship]
    python -m trainer movie (--synthetic | --allen-recording FILE --allen-template FILE) [--out DIR]
    python -m trainer allen-export (--nwb FILE... | --allensdk ... | --native FILE...) [--out DIR] [--store DIR]

Every model trains in one training loop (trainer.loop). Pretraining runs in one process or under torchrun
(``python -m torch.distributed.run --nproc-per-node N -m trainer pretrain ...``), where every process runs
the same loop on its share of each step's global batch; ``--accumulation-steps``, ``--precision``,
``--device`` and ``--log-every`` apply to both.

This module imports nothing heavy (no torch) until a command runs: ``allen-export --allensdk`` runs under
allensdk's own Python environment, which has neither torch nor rtcalm's other dependencies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtcalm.commands.arguments import non_negative_int, positive_int
from rtcalm.errors import RtcalmError

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOP_OPTIONS = ("accumulation_steps", "precision", "device", "log_every")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Offline training of CalM models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pre = commands.add_parser("pretrain", help="self-supervised pretraining (tokenizer, then transformer)",
                              description="Train the tokenizer, then the transformer, validate on held-out mice, "
                                          "write checkpoints (safetensors + JSON) and metrics.json. Launched by "
                                          "torchrun, every process runs the same loop on its share of each "
                                          "step's batch, with DistributedDataParallel (docs/training.md).")
    pre.add_argument("--config", required=True, help="training config JSON, e.g. configs/pretrain_default.json")
    pre.add_argument("--data-root", default=str(REPO_ROOT.parent / "shared" / "data" / "real"),
                     help="folder the config's file globs are relative to (default: ../shared/data/real); "
                          "a SessionStore folder's training sessions are memory-mapped")
    pre.add_argument("--out", help="run folder (default: runs/<config name>)")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last")
    pre.add_argument("--no-progress", action="store_true", help="no progress bars")
    pre.add_argument("--stop-after-steps", type=positive_int, metavar="N",
                     help="take at most N optimizer steps in this invocation, save checkpoints/last and exit "
                          "(for time-limited jobs; continue with --resume)")
    ddp = pre.add_argument_group("batch splitting, precision and device (one process or torchrun)")
    ddp.add_argument("--accumulation-steps", type=positive_int, metavar="K",
                     help="micro-batches per optimizer step on each process (default 1); the config's batch is "
                          "the global batch = per-process micro-batch x world size x K")
    ddp.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                     help="auto (default): bf16 autocast on CUDA (fp16 + gradient scaling where bf16 is "
                          "unsupported), fp32 on the CPU")
    ddp.add_argument("--device", choices=["auto", "cpu", "cuda"],
                     help="auto (default): one CUDA device per process (LOCAL_RANK) with NCCL when CUDA is "
                          "available, else the CPU with gloo")
    ddp.add_argument("--log-every", type=positive_int, metavar="N",
                     help="write a steps.csv row (loss, lr, samples/s) every N steps (default 10)")
    base = commands.add_parser("baselines", help="fit the learned forecasting baselines (per-neuron MLP, POCO-style)",
                               description="Fit the per-neuron MLP and POCO-style baselines on the training mice of a "
                                           "pretraining config (same data and split as the model).")
    base.add_argument("--config", required=True, help="training config JSON, e.g. configs/pretrain_default.json")
    base.add_argument("--data-root", default=str(REPO_ROOT.parent / "shared" / "data" / "real"))
    base.add_argument("--out", help="output folder (default: runs/<config name>-baselines)")
    base.add_argument("--kinds", default="mlp,poco", help="comma-separated: mlp, poco")
    base.add_argument("--steps", type=positive_int, default=4000)
    base.add_argument("--seed", type=int, help="default: the config's seed")
    base.add_argument("--ship", action="store_true", help="also write them to rtcalm/models/baselines/<kind>/")
    base.add_argument("--no-progress", action="store_true")
    add_movie_command(commands)
    add_allen_export_command(commands)
    return parser


def add_movie_command(commands) -> None:
    movie = commands.add_parser("movie", help="train and evaluate the movie decoder (docs/movie_decoder.md)",
                                description="Train the movie decoder (POYO-CAP's skip-connection U-Net) on the early "
                                            "part of a recording watching a movie, and score it on the held-out later "
                                            "part against the mean-frame baseline (trainer/movie.py).")
    source = movie.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="simulated visual cortex watching a procedural movie")
    source.add_argument("--allen-recording", metavar="FILE", help="Allen session (NWB or any rtcalm-readable file) "
                        "with a natural_movie_one stimulus table")
    movie.add_argument("--allen-template", metavar="FILE", help="movie template (.npy or .h5), needed with "
                                                                "--allen-recording")
    movie.add_argument("--template-key", help="dataset name inside an .h5 template")
    movie.add_argument("--stimulus", default="natural_movie_one", help="stimulus name in the table (default: %(default)s)")
    movie.add_argument("--seed", type=int, default=0)
    movie.add_argument("--out", default="runs/movie", help="output folder (default: %(default)s)")
    movie.add_argument("--figure", help="figure path (default: OUT/movie_decoding.png)")
    # None: MovieTrainConfig's default (trainer/movie.py; not imported here, it needs torch)
    movie.add_argument("--steps", type=positive_int, help="optimizer steps (default 1000)")
    movie.add_argument("--batch-size", type=positive_int, help="samples per step (default 64)")
    movie.add_argument("--window", type=positive_int, help="imaging frames of ΔF/F per sample (default 8)")
    movie.add_argument("--lag", type=non_negative_int, help="the window ends this many imaging frames after the "
                                                            "decoded movie frame (default 4)")
    movie.add_argument("--height", type=positive_int, default=32, help="model frame height (default: %(default)s)")
    movie.add_argument("--width", type=positive_int, default=64, help="model frame width (default: %(default)s)")
    movie.add_argument("--neurons", type=positive_int, default=1024, help="synthetic only (default: %(default)s)")
    movie.add_argument("--frames", type=positive_int, default=27000, help="synthetic only (default: %(default)s)")
    movie.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")


def add_allen_export_command(commands) -> None:
    export = commands.add_parser(
        "allen-export", help="Allen Brain Observatory sessions -> native recordings, movie templates, a SessionStore",
        description="Export Allen Brain Observatory (Visual Coding 2P) sessions into rtcalm's native recording "
                    "format, with the natural-movie templates, and build a SessionStore for training "
                    "(trainer/allen_export.py, docs/training.md).")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--nwb", nargs="+", metavar="FILE", help="Allen Visual Coding NWB files (no allensdk needed)")
    source.add_argument("--allensdk", action="store_true", help="download with allensdk's BrainObservatoryCache")
    source.add_argument("--native", nargs="+", metavar="FILE",
                        help="recordings exported earlier (.rtcalm.h5): only build --store from them")
    export.add_argument("--out", help="export folder (recordings/, templates/); needed with --nwb and --allensdk")
    export.add_argument("--store", help="also build a SessionStore here from the exported recordings (rtcalm's "
                                        "environment)")
    export.add_argument("--overwrite", action="store_true", help="re-export experiments whose recording exists")
    sdk = export.add_argument_group("--allensdk")
    sdk.add_argument("--manifest", help="BrainObservatoryCache manifest file (the download cache lives beside it)")
    sdk.add_argument("--experiments", nargs="+", type=positive_int, metavar="ID", help="ophys experiment ids")
    sdk.add_argument("--experiment-list", metavar="FILE", help="a file of ophys experiment ids, one per line")
    sdk.add_argument("--all", action="store_true", help="every experiment passing the filters below")
    sdk.add_argument("--cre-lines", nargs="+", help="with --all: e.g. Cux2-CreERT2 Sst-IRES-Cre")
    sdk.add_argument("--areas", nargs="+", help="with --all: targeted structures, e.g. VISp VISl")
    sdk.add_argument("--session-types", nargs="+", help="with --all: e.g. three_session_A")


def run_baselines(args, config) -> None:
    from rtcalm.model.baselines import KINDS
    from trainer.baselines import BaselineRecipe, fit_baselines

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise RtcalmError(f"--kinds: choose from {', '.join(KINDS)}, got {args.kinds!r}")
    out = Path(args.out) if args.out else REPO_ROOT / "runs" / f"{config.name}-baselines"
    recipe = BaselineRecipe(steps=args.steps, seed=config.seed if args.seed is None else args.seed)
    fit_baselines(config, args.data_root, out, kinds, recipe, ship=args.ship, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "allen-export":
            from trainer.allen_export import run as run_allen_export

            run_allen_export(args)
            return 0
        if args.command == "movie":
            from trainer.movie import run as run_movie

            run_movie(args, command=" ".join(["python -m trainer", *argv]))
            return 0
        from trainer.config import load_train_config

        config = load_train_config(args.config)
        if args.command == "baselines":
            run_baselines(args, config)
            return 0
        out = Path(args.out) if args.out else REPO_ROOT / "runs" / config.name
        run_pretraining(args, config, out)
    except RtcalmError as exc:
        print(f"trainer: error{_rank_prefix()}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trainer: interrupted; continue with --resume (from the last periodic checkpoint)", file=sys.stderr)
        return 130
    return 0


def _rank_prefix() -> str:
    """Under torchrun every rank reports its own errors; say which one."""
    import os

    return f" (rank {os.environ['RANK']})" if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1" else ""


def run_pretraining(args, config, out: Path) -> None:
    """The training loop in this process: alone, or as one rank of a torchrun job (torchrun's
    environment says which; start_runtime joins the process group)."""
    from trainer.distributed import DistributedSettings, start_runtime, stop_runtime
    from trainer.pretrain import pretrain

    defaults = DistributedSettings()
    settings = DistributedSettings(**{name: getattr(args, name) if getattr(args, name) is not None
                                      else getattr(defaults, name) for name in LOOP_OPTIONS})
    runtime = start_runtime(settings.device)
    try:
        pretrain(config, args.data_root, out, resume=args.resume, progress=not args.no_progress,
                 stop_after_steps=args.stop_after_steps, settings=settings, runtime=runtime)
    except BaseException:
        stop_runtime(runtime, synchronise=False)
        raise
    stop_runtime(runtime)


if __name__ == "__main__":
    sys.exit(main())
