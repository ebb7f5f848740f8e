"""Measure pretraining throughput: tokenizer windows/s (stage 1) and transformer crops/s (stage 2) of the
training loop's optimizer steps (trainer.steps), on one process or under torchrun.

    python tools/bench_training.py                                     # default config, one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 tools/bench_training.py
    python -m torch.distributed.run --standalone --nproc-per-node 8 tools/bench_training.py \\
        --config configs/pretrain_tokens.json --transformer-batch 64 --json bench_8gpu.json   # a GPU node

The data are synthetic sessions (rtcalm.sim.make_synthetic, in memory): throughput depends on the
shapes (batch, window, context, neurons per crop), not on the values. Each stage runs ``--warmup``
untimed steps, then ``--steps`` timed ones between barriers. Reported per stage: wall-clock samples/s of
the whole job, and the cost of a step in CPU seconds of each process (on a shared machine the wall clock
also counts waiting for a core; CPU time does not). ``--tokenizer-batch`` / ``--transformer-batch`` replace
the config's global batch (a GPU needs a larger one than the CPU default to be busy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/bench_training.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "pretrain_tokens.json"))
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per stage (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--sessions", type=int, default=4, help="synthetic sessions (default 4)")
    parser.add_argument("--neurons", type=int, default=256, help="neurons per session (default 256)")
    parser.add_argument("--frames", type=int, default=4000, help="frames per session (default 4000)")
    parser.add_argument("--tokenizer-batch", type=int, help="global tokenizer windows per step (default: config)")
    parser.add_argument("--transformer-batch", type=int, help="global crops per step (default: config)")
    parser.add_argument("--accumulation-steps", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--stages", nargs="+", default=["tokenizer", "transformer"], choices=["tokenizer", "transformer"])
    parser.add_argument("--json", help="also write the result here (rank 0)")
    return parser


def synthetic_sessions(n_sessions: int, n_neurons: int, n_frames: int, rate_hz: float):
    from rtcalm.sim import make_synthetic
    from trainer.data import Session, zscore_recording

    sessions = []
    for k in range(n_sessions):
        recording = make_synthetic(n_neurons=n_neurons, n_frames=n_frames, rate_hz=rate_hz, seed=k)
        sessions.append(Session(source=f"synthetic{k}", mouse=f"mouse{k}", recording=recording,
                                epochs=zscore_recording(recording)))
    return sessions


def time_steps(runtime, step, warmup: int, steps: int) -> dict:
    """Wall time of ``steps`` calls of ``step`` on the whole job (barriers around), and this process's
    CPU time."""
    for _ in range(warmup):
        step()
    synchronize(runtime)
    runtime.barrier()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    synchronize(runtime)
    cpu = time.process_time() - start_cpu
    runtime.barrier()
    return {"wall_s": time.perf_counter() - start_wall, "cpu_s": cpu}


def synchronize(runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def gathered(runtime, value: float) -> list[float]:
    tensor = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    return [float(t) for t in runtime.all_gather(tensor)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rtcalm.errors import RtcalmError

    try:
        return run(args)
    except RtcalmError as exc:
        print(f"bench_training: error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    import dataclasses

    from rtcalm.model import Calm
    from trainer.config import load_train_config
    from trainer.data import CropSampler, TokenWindowSampler
    from trainer.distributed import (
        DistributedConfigError,
        DistributedSettings,
        Precision,
        Sharding,
        resolve_precision,
        start_runtime,
        stop_runtime,
    )
    from trainer.pretrain import freeze_tokenizer
    from trainer.steps import TransformerObjective, tokenizer_step, transformer_step

    for name in ("steps", "sessions", "neurons", "frames", "accumulation_steps"):
        if getattr(args, name) < 1:
            raise DistributedConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise DistributedConfigError("--warmup must be >= 0")
    config = load_train_config(args.config)
    settings = DistributedSettings(accumulation_steps=args.accumulation_steps, precision=args.precision,
                                   device=args.device)
    runtime = start_runtime(settings.device)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        precision = Precision(resolve_precision(settings.precision, runtime.device), runtime.device)
        sharding = Sharding(runtime, settings.accumulation_steps)
        tcfg, scfg = config.tokenizer, config.transformer
        tokenizer_batch = args.tokenizer_batch or tcfg.batch_windows
        transformer_batch = args.transformer_batch or scfg.batch_crops
        sessions = synthetic_sessions(args.sessions, args.neurons, args.frames, config.model.rate_hz)
        torch.manual_seed(config.seed)
        model = Calm(config.model).to(runtime.device)
        generator = torch.Generator().manual_seed(config.seed + 1)
        result = {
            "config": str(args.config), "world_size": runtime.world_size, "backend": runtime.backend,
            "device": str(runtime.device) if runtime.device.type == "cpu" else torch.cuda.get_device_name(runtime.device),
            "precision": precision.name, "threads_per_process": torch.get_num_threads(),
            "accumulation_steps": settings.accumulation_steps, "steps": args.steps,
            "data": {"sessions": args.sessions, "neurons": args.neurons, "frames": args.frames},
            "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "torch": torch.__version__, "load_average_before": list(os.getloadavg())},
            "stages": {},
        }
        if "tokenizer" in args.stages:
            model.tokenizer.train()
            optimizer = torch.optim.Adam([*model.tokenizer.encoder.parameters(), *model.tokenizer.decoder.parameters()],
                                         lr=tcfg.lr)
            sampler = TokenWindowSampler(sessions, config.model.token_window_frames)

            def tokenizer_once():
                tokenizer_step(sharding, precision, model, optimizer, sampler, generator, tokenizer_batch,
                               tcfg.missing_probability, tcfg.stream_start_probability)

            timing = time_steps(runtime, tokenizer_once, args.warmup, args.steps)
            result["stages"]["tokenizer"] = summary(runtime, timing, args.steps, tokenizer_batch, "windows")
        if "transformer" in args.stages:
            freeze_tokenizer(model)
            optimizer = model.configure_optimizers(scfg.weight_decay, scfg.lr, betas=(0.9, 0.95))
            crop_frames = scfg.context_frames + config.model.forecast_horizon_frames
            sampler = CropSampler(sessions, crop_frames, scfg.max_neurons)
            model.train()
            freeze_tokenizer(model)
            objective = TransformerObjective(model, dataclasses.replace(scfg, batch_crops=transformer_batch))

            def transformer_once():
                transformer_step(sharding, precision, objective, optimizer, sampler, generator)

            timing = time_steps(runtime, transformer_once, args.warmup, args.steps)
            stage = summary(runtime, timing, args.steps, transformer_batch, "crops")
            neurons = min(args.neurons, scfg.max_neurons)
            # the unit that scales to a dataset: context frames x neurons the model reads per second
            stage["context_neuron_frames_per_s"] = stage["crops_per_s"] * scfg.context_frames * neurons
            stage["crop_shape"] = [scfg.context_frames, neurons]
            result["stages"]["transformer"] = stage
        result["machine"]["load_average_after"] = list(os.getloadavg())
        if runtime.is_main:
            text = json.dumps(result, indent=2)
            print(text)
            if args.json:
                Path(args.json).write_text(text + "\n")
    finally:
        stop_runtime(runtime)
    return 0


def summary(runtime, timing: dict, steps: int, global_batch: int, unit: str) -> dict:
    cpu_per_step = gathered(runtime, timing["cpu_s"] / steps)
    return {
        "global_batch": global_batch,
        f"{unit}_per_s": steps * global_batch / timing["wall_s"],
        "wall_s_per_step": timing["wall_s"] / steps,
        "cpu_s_per_step_per_process": cpu_per_step,
        # what the job would do if every process had a core of its own (1 thread each, no other load)
        f"{unit}_per_s_if_unloaded": global_batch / max(cpu_per_step),
    }


if __name__ == "__main__":
    sys.exit(main())
