"""The training loop: every model the trainer trains takes its optimizer steps in :meth:`TrainingLoop.run`.

    pretraining stage 1 (tokenizer)     trainer.pretrain   step: trainer.steps.tokenizer_step
    pretraining stage 2 (transformer)   trainer.pretrain   step: trainer.steps.transformer_step
    learned baselines, per-neuron start trainer.baselines  step: trainer.steps.baseline_step
    movie decoder                       trainer.movie      step: trainer.steps.movie_step

One run of the loop takes optimizer steps from ``state["step"]`` up to ``total``. Before each step it sets
the learning rate (:func:`lr_at`, linear warm-up then cosine decay) and, on CUDA, re-seeds the CUDA RNG
from (seed, step, rank); after it, it writes a ``steps.csv`` row every ``log_every`` steps, validates on
rank 0 every ``validate_every`` steps and at the end, and saves the resumable state every
``checkpoint_every`` steps. With ``stop_after_steps`` it stops once that many steps were taken in this
process (over all runs of the loop), saves the resumable state and returns False. What differs between
the models is only the step, the validation and the checkpoint, which the callers pass in.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.distributed import Runtime, rank_seed


def lr_at(step: int, total: int, base: float, warmup: int, minimum: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to ``minimum``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * progress))


class StepLog:
    """``steps.csv``: stage, step, loss, lr, samples (windows, crops, ...) per second over the last interval."""

    COLUMNS = ["stage", "step", "loss", "lr", "samples_per_s", "wall_s"]

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.last_time, self.last_step = time.perf_counter(), None
        if enabled and not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.COLUMNS)

    def restart(self, step: int) -> None:
        self.last_time, self.last_step = time.perf_counter(), step

    def write(self, stage: str, step: int, loss: float, lr: float, samples_per_step: int, wall_s: float) -> None:
        now = time.perf_counter()
        steps = step - (self.last_step if self.last_step is not None else step - 1)
        rate = steps * samples_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        if self.enabled:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([stage, step, f"{loss:.8g}", f"{lr:.6g}", f"{rate:.2f}", f"{wall_s:.1f}"])


class TrainingLoop:
    """What stays the same over the runs of one training job: the process's place in the job, the step
    log, the progress bars, the step budget of this invocation and how to save the resumable state."""

    def __init__(self, runtime: Runtime | None = None, seed: int = 0, step_log: StepLog | None = None,
                 log_every: int = 10, progress: bool = False, stop_after_steps: int | None = None,
                 elapsed: Callable[[], float] | None = None,
                 save_last: Callable[[torch.optim.Optimizer], None] | None = None):
        self.runtime = runtime or Runtime()
        self.seed, self.step_log, self.log_every, self.progress = seed, step_log, log_every, progress
        self.stop_after_steps, self.save_last = stop_after_steps, save_last
        started = time.time()
        self.elapsed = elapsed or (lambda: time.time() - started)
        self.steps_taken = 0  # in this invocation, over all runs of the loop

    def run(self, stage: str, state: dict, optimizer: torch.optim.Optimizer, step: Callable[[], dict], *,
            total: int, lr: Callable[[int], float], samples_per_step: int,
            validate: Callable[[dict], dict] | None = None, validate_every: int = 0, checkpoint_every: int = 0,
            cuda_seed_rank: int | None = None) -> bool:
        """Take optimizer steps until ``state["step"] == total``. ``step()`` takes one optimizer step and
        returns its parts, with ``"loss"``; ``validate(parts)`` (rank 0) returns the progress bar's
        postfix. ``cuda_seed_rank``: the rank whose CUDA RNG stream this process draws (default its own;
        0 on every rank where all ranks must draw alike). Returns False when the step budget ran out
        first (the resumable state is then saved), True otherwise."""
        rt = self.runtime
        bar = tqdm(total=total, initial=state["step"], desc=stage, disable=not (self.progress and rt.is_main),
                   dynamic_ncols=True, mininterval=2.0)
        if self.step_log is not None:
            self.step_log.restart(state["step"])
        while state["step"] < total:
            if self.stop_after_steps is not None and self.steps_taken >= self.stop_after_steps:
                bar.close()
                if self.save_last is not None:
                    self.save_last(optimizer)
                return False
            lr_now = lr(state["step"])
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            if rt.device.type == "cuda":  # dropout, dead-code restarts: a function of the step, so resuming continues alike
                torch.cuda.manual_seed(rank_seed(self.seed, state["step"],
                                                 rt.rank if cuda_seed_rank is None else cuda_seed_rank))
            parts = step()
            state["step"] += 1
            self.steps_taken += 1
            bar.update(1)
            if self.step_log is not None and (state["step"] % self.log_every == 0 or state["step"] == total):
                self.step_log.write(stage, state["step"], parts["loss"], lr_now, samples_per_step, self.elapsed())
            if validate is not None and rt.is_main and (state["step"] % validate_every == 0 or state["step"] == total):
                bar.set_postfix(validate(parts))
            if checkpoint_every and state["step"] % checkpoint_every == 0 and state["step"] < total:
                self.save_last(optimizer)
        bar.close()
        return True
