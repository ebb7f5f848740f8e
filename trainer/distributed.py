"""Distributed pretraining with torchrun (DistributedDataParallel): the same two stages, losses, schedule
and checkpoints as :mod:`trainer.pretrain`, on N processes (gloo on CPU, NCCL on CUDA).

    python -m torch.distributed.run --standalone --nproc-per-node N -m trainer pretrain \\
        --config configs/pretrain_tokens.json --data-root STORE_OR_FOLDER --out runs/NAME \\
        [--accumulation-steps K] [--precision auto|fp32|bf16|fp16] [--device auto|cpu|cuda] [--resume]

Design (docs/training.md has the long form):

- **One global batch, sliced.** The config's batch (``tokenizer.batch_windows``,
  ``transformer.batch_crops``) is the *global* batch of one optimizer step. It is split into
  ``world_size x accumulation_steps`` equal micro-batches; micro-batch ``m`` of rank ``r`` holds global rows
  ``[(m * world_size + r) * b, ... + b)``. Every rank keeps an identical copy of the data generator and
  makes exactly the draws the single-process samplers of :mod:`trainer.data` make for the whole global
  batch, but reads only its own rows. So a step consumes exactly the samples the single-process trainer
  consumes in the same step, whatever the world size and accumulation.
- **Losses are global means.** Each micro-batch's loss is its *sum* divided by the global count of that
  step (counts are all-reduced, or known on every rank), times ``world_size`` because DDP averages
  gradients over ranks; the accumulated gradient is then exactly the gradient of the single-process loss.
- **The tokenizer codebook** (EMA updates, dead-code restarts, data init) needs the whole batch's encoder
  outputs: they are all-gathered in global row order and the update runs once per step on every rank with
  the same (global) RNG, then rank 0's codebook is broadcast so that ranks can never drift apart.
- **Checkpoints do not depend on the world size.** Model, optimizer and the replicated data generator are
  identical on every rank, so rank 0 writes the single-process checkpoint format
  (:mod:`trainer.state`); a run can resume with another world size or accumulation (or in the
  single-process trainer) as long as the global batch divides.
- Rank 0 validates, keeps the best checkpoint, writes ``log.jsonl`` (same records as the single-process
  trainer), ``steps.csv`` (loss, lr and throughput every ``--log-every`` steps) and the final report.

Results equal the single-process trainer's up to float summation order when the model has no dropout.
With dropout the masks depend on the batch shape; here they are drawn from a generator seeded by
(seed, step, rank), so a resumed run still continues identically.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rtcalm.errors import RtcalmError
from rtcalm.model import Calm
from rtcalm.model.objectives import future_targets, next_code_targets
from trainer.config import DataConfig, TrainConfig
from trainer.data import (
    Session,
    TrainDataError,
    fixed_crops,
    interleave,
    load_sessions,
    matching_files,
    split_by_mouse,
    tokenizer_batch,
    zscore_recording,
)
from trainer.pretrain import (
    TrainingError,
    _append_log,
    drop_frames,
    final_report,
    lr_at,
    start_from_least_squares,
    tokenizer_metrics,
    transformer_parameter_groups,
    validate_transformer,
    validation_windows,
)
from trainer.state import load_training_state, read_trainer_state, save_training_state

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# Process-group timeout: rank 0 validates while the other ranks wait in the next step's all-reduce.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)
# The final report's pooled AR baseline on a memory-mapped store is fitted on a bounded sample of the
# training sessions (fit_pooled_ar builds the whole lag matrix in memory before subsampling).
POOLED_AR_SESSIONS, POOLED_AR_FRAMES, POOLED_AR_NEURONS = 16, 4000, 64


class DistributedConfigError(RtcalmError, ValueError):
    pass


@dataclass
class DistributedSettings:
    accumulation_steps: int = 1
    precision: str = "auto"  # auto: bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU
    device: str = "auto"  # auto: CUDA when available
    log_every: int = 10  # rows of steps.csv (and throughput) every this many optimizer steps

    def __post_init__(self):
        if not isinstance(self.accumulation_steps, int) or self.accumulation_steps < 1:
            raise DistributedConfigError(f"accumulation steps must be a positive integer, got {self.accumulation_steps!r}")
        if self.precision not in PRECISIONS:
            raise DistributedConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise DistributedConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise DistributedConfigError(f"log every must be a positive integer, got {self.log_every!r}")


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


# --- process group ---------------------------------------------------------------------------------------

@dataclass
class Runtime:
    """This process's place in the job. With ``world_size == 1`` there is no process group and every
    collective is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if not self.distributed:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return parts

    def broadcast_(self, tensor: torch.Tensor) -> None:
        if self.distributed:
            torch.distributed.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def start_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), pick the device and join the group."""
    env = os.environ
    try:
        rank, world_size = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise DistributedConfigError("RANK / WORLD_SIZE / LOCAL_RANK are not integers (launch with torchrun)") from None
    if not 0 <= rank < world_size:
        raise DistributedConfigError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DistributedConfigError("--device cuda but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                                         "devices: use --nproc-per-node <= the GPU count")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
        backend = "nccl"
    else:
        torch_device, backend = torch.device("cpu"), "gloo"
    runtime = Runtime(rank, world_size, local_rank, torch_device, backend if world_size > 1 else None)
    if runtime.distributed and not torch.distributed.is_initialized():
        kwargs = {"device_id": torch_device} if use_cuda else {}
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return runtime


def stop_runtime(runtime: Runtime, synchronise: bool = True) -> None:
    """Tear the process group down. After a normal finish every rank first waits at a barrier, so no rank
    destroys its end of the group (and its gloo threads) while another still has a collective or its
    final writes in flight: that race aborted a rank at exit ("terminate called without an active
    exception"). After an error there is no barrier (the other ranks may never reach it)."""
    if runtime.distributed and torch.distributed.is_initialized():
        if synchronise:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# --- splitting the global batch ----------------------------------------------------------------------------

def micro_batch_size(global_batch: int, world_size: int, accumulation_steps: int, what: str) -> int:
    """Rows per micro-batch: the global batch must split into world_size x accumulation_steps equal
    parts, or ranks would see different amounts of data and the loss would not be the global mean."""
    parts = world_size * accumulation_steps
    if global_batch % parts:
        raise DistributedConfigError(
            f"{what} = {global_batch} (the global batch of one optimizer step) is not divisible by world size "
            f"{world_size} x accumulation steps {accumulation_steps} = {parts}; change the batch, "
            "--nproc-per-node or --accumulation-steps")
    return global_batch // parts


def rank_rows(micro_batch: int, world_size: int, accumulation_steps: int, rank: int) -> torch.Tensor:
    """Global row indices of this rank's micro-batches, micro-batch by micro-batch: micro-batch ``m``
    of rank ``r`` holds rows ``[(m * world_size + r) * b, ... + b)``. With this layout, gathering micro-batch
    m from every rank in rank order and concatenating over m restores the global order."""
    return torch.cat([torch.arange((m * world_size + rank) * micro_batch, (m * world_size + rank + 1) * micro_batch)
                      for m in range(accumulation_steps)])


def gather_global_rows(runtime: Runtime, local: torch.Tensor, accumulation_steps: int) -> torch.Tensor:
    """(accumulation_steps * b, ...) rows of this rank -> (global batch, ...) in global row order."""
    per_micro = local.reshape(accumulation_steps, -1, *local.shape[1:])
    parts = runtime.all_gather(per_micro)  # world x (accumulation_steps, b, ...)
    return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:])


# --- data: in-memory epochs and memory-mapped epochs ----------------------------------------------------------

class TensorEpoch:
    """An epoch already z-scored in memory (a :class:`trainer.data.Session` epoch)."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.shape = tuple(values.shape)

    def numel(self) -> int:
        return self.values.numel()

    def windows(self, starts: torch.Tensor, neurons: torch.Tensor, width: int) -> torch.Tensor:
        return self.values[starts[:, None] + torch.arange(width)[None, :], neurons[:, None]]

    def crops(self, starts: list[int], frames: int, neurons: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.values[s:s + frames, neurons] for s in starts])


class MappedEpoch:
    """One epoch of a memory-mapped store session, z-scored on read: only the sampled windows are paged
    in. ``(x - mean) / std`` in float64, then float32, element by element, gives bit-identical values to
    :func:`trainer.data.zscore_recording` on the whole recording."""

    def __init__(self, values: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.values, self.mean, self.std = values, mean, std
        self.shape = tuple(values.shape)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def windows(self, starts: torch.Tensor, neurons: torch.Tensor, width: int) -> torch.Tensor:
        frames = starts.numpy()[:, None] + np.arange(width)[None, :]
        columns = neurons.numpy()[:, None]
        raw = self.values[frames, columns]
        return torch.from_numpy(((raw - self.mean[columns]) / self.std[columns]).astype(np.float32))

    def crops(self, starts: list[int], frames: int, neurons: torch.Tensor) -> torch.Tensor:
        columns = neurons.numpy()
        raw = np.stack([self.values[s:s + frames][:, columns] for s in starts])
        return torch.from_numpy(((raw - self.mean[columns]) / self.std[columns]).astype(np.float32))


@dataclass
class MappedSession:
    """A training session read from a memory-mapped store (duck-types what the trainer needs of
    :class:`trainer.data.Session`: source, mouse, n_neurons, epochs)."""

    source: str
    mouse: str
    n_neurons: int
    epochs: list[MappedEpoch]
    session_id: str


def epoch_sources(sessions) -> list:
    """The epochs of in-memory or mapped sessions, in session order, as samplable sources."""
    out = []
    for session in sessions:
        for epoch in session.epochs:
            out.append(epoch if isinstance(epoch, MappedEpoch) else TensorEpoch(epoch))
    return out


# --- samplers: the single-process draws, own rows only --------------------------------------------------------

class ShardedWindowSampler:
    """:class:`trainer.data.WindowSampler`'s draws (same generator calls in the same order) for the whole
    global batch, reading only the requested rows."""

    def __init__(self, sessions, window_frames: int):
        self.window = window_frames
        self.epochs = [e for e in epoch_sources(sessions) if e.shape[0] >= window_frames]
        counts = torch.tensor([(e.shape[0] - window_frames + 1) * e.shape[1] for e in self.epochs], dtype=torch.float64)
        if counts.sum() == 0:
            raise TrainDataError(f"no epoch has {window_frames} frames for the tokenizer")
        self.weights = counts / counts.sum()

    def sample_rows(self, n: int, generator: torch.Generator, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), W) clean normalised windows: rows ``rows`` of the (n, W) batch the single-process
        sampler draws."""
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        wanted = torch.zeros(n, dtype=torch.bool)
        wanted[rows] = True
        out = torch.empty(n, self.window)
        for index in which.unique().tolist():
            epoch_rows = (which == index).nonzero().squeeze(1)
            epoch = self.epochs[index]
            starts = torch.randint(0, epoch.shape[0] - self.window + 1, (epoch_rows.numel(),), generator=generator)
            neurons = torch.randint(0, epoch.shape[1], (epoch_rows.numel(),), generator=generator)
            keep = wanted[epoch_rows]
            if bool(keep.any()):
                out[epoch_rows[keep]] = epoch.windows(starts[keep], neurons[keep], self.window)
        return out[rows]


class ShardedCropSampler:
    """:class:`trainer.data.CropSampler`'s draws for the whole global batch (one epoch and one neuron
    subset per step, so that all crops share N), reading only the requested crops."""

    def __init__(self, sessions, crop_frames: int, max_neurons: int):
        self.crop_frames, self.max_neurons = crop_frames, max_neurons
        self.epochs = [e for e in epoch_sources(sessions) if e.shape[0] >= crop_frames]
        if not self.epochs:
            raise TrainDataError(f"no training epoch has {crop_frames} frames (context + horizon)")
        counts = torch.tensor([(e.shape[0] - crop_frames + 1) * min(e.shape[1], max_neurons) for e in self.epochs],
                              dtype=torch.float64)
        self.weights = counts / counts.sum()

    def sample_rows(self, batch: int, generator: torch.Generator, rows: torch.Tensor) -> torch.Tensor:
        epoch = self.epochs[int(torch.multinomial(self.weights, 1, generator=generator))]
        T, N = epoch.shape
        neurons = torch.randperm(N, generator=generator)[:self.max_neurons]
        starts = torch.randint(0, T - self.crop_frames + 1, (batch,), generator=generator)
        return epoch.crops(starts[rows].tolist(), self.crop_frames, neurons)


# --- loading sessions: in memory, or memory-mapped from a SessionStore -----------------------------------------

def is_store(data_root) -> bool:
    from rtcalm.data.store import MANIFEST

    return (Path(data_root) / MANIFEST).is_file()


@dataclass
class StoreSelection:
    """A store session chosen by the config's globs (before loading anything)."""

    source: str  # path relative to the store root
    mouse: str
    entry: dict


def select_store_sessions(root: Path, config: DataConfig) -> tuple[list[StoreSelection], list[tuple[str, str]]]:
    """The config's globs over a store, with :func:`trainer.data.load_sessions`'s order and filters,
    from the manifest alone."""

    from rtcalm.data.store import SessionStore

    if config.resample_other_rates:
        raise TrainDataError("data.resample_other_rates needs whole recordings in memory; a memory-mapped store "
                             f"({root}) must already hold every session at {config.rate_hz:g} Hz (resample before "
                             "building it)")
    store = SessionStore(root)
    by_path = {entry["path"]: entry for entry in store.sessions}
    paths = matching_files(root, config.files)
    chosen, skipped = [], []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        entry = by_path.get(rel)
        if entry is None:
            raise TrainDataError(f"{path}: not a session of the store at {root} (the manifest does not list it); "
                                 "point the config's files at sessions/*.rtcalm.h5 or rebuild the store")
        rate = float(entry["rate_hz"])
        if abs(rate - config.rate_hz) > config.rate_tolerance * config.rate_hz:
            skipped.append((rel, f"{rate:g} Hz, model rate {config.rate_hz:g} Hz"))
            continue
        frames_per_epoch = int(entry["frames"])
        n_frames = frames_per_epoch * (int(entry["trials"]) if entry["trial_structured"] else 1)
        if entry["trial_structured"] and frames_per_epoch < config.min_epoch_frames:
            skipped.append((rel, f"epochs of {frames_per_epoch} frames < min_epoch_frames {config.min_epoch_frames}"))
            continue
        if n_frames < config.min_epoch_frames:
            skipped.append((rel, f"{n_frames} frames < min_epoch_frames {config.min_epoch_frames}"))
            continue
        chosen.append(StoreSelection(source=rel, mouse=str(entry["mouse"]), entry=entry))
    if not chosen:
        raise TrainDataError("no usable recording (all skipped: " + "; ".join(f"{f}: {r}" for f, r in skipped) + ")")
    return chosen, skipped


def map_training_sessions(runtime: Runtime, root: Path, selections: list[StoreSelection]) -> list[MappedSession]:
    """Memory-map the training sessions and compute each neuron's mean and std exactly as
    :func:`trainer.data.zscore_recording` does. Ranks share the work: rank ``i % world_size`` computes
    session i, and one all-reduce of a buffer that is zero elsewhere hands everyone every result."""
    from rtcalm.data.store import SessionStore

    store = SessionStore(root)
    maps = [store.dff(s.entry["id"]) for s in selections]
    sizes = [m.shape[-1] for m in maps]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    moments = torch.zeros(2, int(offsets[-1]), dtype=torch.float64)
    for index, mapped in enumerate(maps):
        if index % runtime.world_size != runtime.rank:
            continue
        dff = np.asarray(mapped).reshape(-1, sizes[index]).astype(np.float64)
        mean, std = dff.mean(axis=0), dff.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)  # as zscore_recording: a constant neuron stays at 0
        moments[0, offsets[index]:offsets[index + 1]] = torch.from_numpy(mean)
        moments[1, offsets[index]:offsets[index + 1]] = torch.from_numpy(std)
        del dff
    moments = runtime.all_reduce_sum(moments.to(runtime.device)).cpu().numpy()
    sessions = []
    for index, (selection, mapped) in enumerate(zip(selections, maps, strict=True)):
        mean, std = moments[0, offsets[index]:offsets[index + 1]], moments[1, offsets[index]:offsets[index + 1]]
        epochs = [mapped] if mapped.ndim == 2 else [mapped[k] for k in range(mapped.shape[0])]
        sessions.append(MappedSession(source=selection.source, mouse=selection.mouse, n_neurons=sizes[index],
                                      epochs=[MappedEpoch(e, mean, std) for e in epochs],
                                      session_id=selection.entry["id"]))
    return sessions


def load_held_out(root: Path, selections: list[StoreSelection]) -> list[Session]:
    from rtcalm.data.store import SessionStore

    store = SessionStore(root)
    sessions = []
    for selection in selections:
        recording = store.load(selection.entry["id"])
        sessions.append(Session(source=selection.source, mouse=selection.mouse, recording=recording,
                                epochs=zscore_recording(recording)))
    return sessions


@dataclass
class TrainingData:
    train: list  # Session (in memory) or MappedSession
    validation: list[Session]  # loaded on rank 0 only (empty elsewhere)
    test: list[Session]  # loaded on rank 0 only (empty elsewhere)
    skipped: list[tuple[str, str]]
    longest_validation_epoch: int  # known on every rank (to fail alike everywhere)
    mapped: bool
    pooled_ar_traces: list[np.ndarray] | None = None  # None: the final report uses every training recording


def prepare_data(runtime: Runtime, data_root, config: TrainConfig, log) -> TrainingData:
    root = Path(data_root)
    if not root.is_dir():
        raise TrainDataError(f"{root}: data root is not a directory (set --data-root)")
    if not is_store(root):
        sessions, skipped = load_sessions(root, config.data, log=log)
        train, validation, test = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
        longest = max((e.shape[0] for s in validation for e in s.epochs), default=0)
        return TrainingData(train, validation, test, skipped, longest, mapped=False)
    selections, skipped = select_store_sessions(root, config.data)
    for rel, reason in skipped:
        log(f"skipped {rel}: {reason}")
    train_sel, validation_sel, test_sel = split_by_mouse(selections, config.data.validation_mice, config.data.test_mice)
    longest = max((int(s.entry["frames"]) for s in validation_sel), default=0)
    train = map_training_sessions(runtime, root, train_sel)
    log(f"memory-mapped {len(train)} training sessions of the store at {root}")
    validation = load_held_out(root, validation_sel) if runtime.is_main else []
    test = load_held_out(root, test_sel) if runtime.is_main else []
    pooled = None
    if runtime.is_main:
        picks = np.unique(np.linspace(0, len(train) - 1, num=min(POOLED_AR_SESSIONS, len(train))).round().astype(int))
        pooled = [np.array(train[i].epochs[0].values[:POOLED_AR_FRAMES, :POOLED_AR_NEURONS]) for i in picks]
    return TrainingData(train, validation, test, skipped, longest, mapped=True, pooled_ar_traces=pooled)


# --- precision ---------------------------------------------------------------------------------------------

def resolve_precision(requested: str, device: torch.device) -> str:
    if device.type != "cuda":
        if requested in ("auto", "fp32"):
            return "fp32"
        raise DistributedConfigError(f"--precision {requested}: mixed precision is only supported on CUDA devices "
                                     "(this run is on the CPU); use fp32")
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


class Precision:
    """Autocast context and (fp16 only) a gradient scaler. fp32 is a no-op on every call."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip_params=None, clip: float = 0.0) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip_params is not None and clip > 0:
            torch.nn.utils.clip_grad_norm_(clip_params, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# --- one optimizer step of each stage ---------------------------------------------------------------------------

class TokenizerAutoencoder(nn.Module):
    """The tokenizer's trainable path (encoder -> nearest code -> decoder, straight-through) *without*
    :meth:`TraceTokenizer.forward`'s codebook side effects: the EMA update and dead-code restarts must see
    the whole global batch, so :func:`tokenizer_step` gathers the encoder outputs and updates once."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, encoder_input: torch.Tensor):
        latent = self.tokenizer.encode_latent(encoder_input).float()
        with torch.autocast(device_type=latent.device.type, enabled=False):  # code assignment in float32
            codes = self.tokenizer.nearest_codes(latent)
            quantised = F.embedding(codes, self.tokenizer.codebook)
        commitment_sum = (latent - quantised).square().sum()
        reconstruction = self.tokenizer.decoder(latent + (quantised - latent).detach())
        return reconstruction.float(), latent.detach(), codes, commitment_sum


@dataclass
class StepContext:
    runtime: Runtime
    accumulation_steps: int
    precision: Precision

    def no_sync(self, module: nn.Module, micro: int):
        """DDP all-reduces gradients on the last micro-batch of a step only."""
        if isinstance(module, nn.parallel.DistributedDataParallel) and micro < self.accumulation_steps - 1:
            return module.no_sync()
        return contextlib.nullcontext()


def wrap_ddp(module: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return module
    # Buffers (the tokenizer codebook) are kept equal explicitly; broadcasting them at every forward
    # would only cost time. (torch >= 2.13 renamed the switch; both still sync once at construction.)
    import inspect

    parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    no_forward_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None, **no_forward_sync)


def tokenizer_step(ctx: StepContext, model: Calm, autoencoder: nn.Module, optimizer: torch.optim.Optimizer,
                   sampler: ShardedWindowSampler, generator: torch.Generator, batch_windows: int,
                   missing_probability: float, stream_start_probability: float) -> dict:
    """One optimizer step of stage 1 on this rank's rows of the global batch; returns the global
    reconstruction MSE and commitment loss of the step (identical on every rank)."""
    rt, accumulation = ctx.runtime, ctx.accumulation_steps
    tokenizer = model.tokenizer
    b = micro_batch_size(batch_windows, rt.world_size, accumulation, "tokenizer.batch_windows")
    rows = rank_rows(b, rt.world_size, accumulation, rt.rank)
    values = sampler.sample_rows(batch_windows, generator, rows)
    # The missing-frame augmentation does not depend on the values: draw it for the whole batch exactly as
    # tokenizer_batch does, keep our rows, and count the observed values of the whole batch.
    _, missing_all = tokenizer_batch(torch.zeros(batch_windows, sampler.window), generator, missing_probability,
                                     stream_start_probability)
    observed_count = float((1.0 - missing_all).sum().clamp(min=1))
    missing = missing_all[rows]
    encoder_input = interleave(values, missing).to(rt.device)
    values, observed = values.to(rt.device), (1.0 - missing).to(rt.device)
    commitment_count = float(batch_windows * tokenizer.code_dim)

    if not bool(tokenizer.initialised):  # data init from the whole global batch, as TraceTokenizer.forward
        with torch.no_grad(), ctx.precision.autocast():
            latents = tokenizer.encode_latent(encoder_input).float()
        tokenizer._init_codebook_from(gather_global_rows(rt, latents, accumulation))
        broadcast_tokenizer_buffers(rt, tokenizer)

    latents, codes, sums = [], [], torch.zeros(2, dtype=torch.float64, device=rt.device)
    for m in range(accumulation):
        part = slice(m * b, (m + 1) * b)
        with ctx.no_sync(autoencoder, m):
            with ctx.precision.autocast():
                reconstruction, latent, code, commitment_sum = autoencoder(encoder_input[part])
            squared_error = ((reconstruction - values[part]).square() * observed[part]).sum()
            loss = squared_error / observed_count + tokenizer.commitment_weight * commitment_sum / commitment_count
            # DDP averages gradients over ranks; each rank's loss is its share of the global mean.
            ctx.precision.backward(loss * rt.world_size)
        latents.append(latent)
        codes.append(code)
        sums += torch.stack([squared_error.detach(), commitment_sum.detach()]).double()
    with torch.no_grad():
        tokenizer._ema_update(gather_global_rows(rt, torch.cat(latents), accumulation),
                              gather_global_rows(rt, torch.cat(codes), accumulation))
    broadcast_tokenizer_buffers(rt, tokenizer)
    ctx.precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    sums = rt.all_reduce_sum(sums).cpu()
    return {"mse": float(sums[0]) / observed_count,
            "commitment": tokenizer.commitment_weight * float(sums[1]) / commitment_count}


def broadcast_tokenizer_buffers(runtime: Runtime, tokenizer) -> None:
    """Rank 0's codebook everywhere: every rank computed the same update from the same gathered batch,
    so this only removes any last-bit difference a non-deterministic GPU kernel could introduce."""
    for buffer in (tokenizer.codebook, tokenizer.ema_cluster_size, tokenizer.ema_code_sum, tokenizer.initialised):
        runtime.broadcast_(buffer)


def transformer_step(ctx: StepContext, model: Calm, network: nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: ShardedCropSampler, generator: torch.Generator, batch_crops: int, context: int,
                     missing_probability: float, next_code_weight: float, grad_clip: float) -> dict:
    """One optimizer step of stage 2 (the loss of :func:`rtcalm.model.objectives.crop_losses` on the
    global batch); returns the step's global loss parts (identical on every rank)."""
    rt, accumulation = ctx.runtime, ctx.accumulation_steps
    horizon = model.config.forecast_horizon_frames
    b = micro_batch_size(batch_crops, rt.world_size, accumulation, "transformer.batch_crops")
    rows = rank_rows(b, rt.world_size, accumulation, rt.rank)
    crops = sampler.sample_rows(batch_crops, generator, rows)
    model_input = crops[:, :context]
    if missing_probability > 0:  # drop_frames' draw for the whole batch; our rows of it
        dropped = drop_frames(torch.zeros(batch_crops, context, crops.shape[-1]), missing_probability, generator)
        model_input = model_input.masked_fill(torch.isnan(dropped[rows]), float("nan"))
    crops, model_input = crops.to(rt.device), model_input.to(rt.device)

    # Global denominators of the two masked means (forecast targets, next-token targets).
    counts = torch.zeros(2, dtype=torch.float64, device=rt.device)
    counts[0] = float(future_targets(crops, context, horizon)[1].sum())
    counts[1] = float(torch.isfinite(crops[:, 1:context + 1]).sum())
    counts = rt.all_reduce_sum(counts).clamp(min=1).cpu()
    forecast_count, code_count = float(counts[0]), float(counts[1])

    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for m in range(accumulation):
        crop, inputs = crops[m * b:(m + 1) * b], model_input[m * b:(m + 1) * b]
        with ctx.no_sync(network, m):
            with ctx.precision.autocast():
                out = network(inputs, with_code_logits=next_code_weight > 0)
            targets, mask = future_targets(crop, context, horizon)
            forecast_sum = ((out.forecast.float() - targets).square() * mask).sum()
            loss = forecast_sum / forecast_count
            code_sum = torch.zeros((), device=rt.device)
            if next_code_weight > 0:
                codes, code_mask = next_code_targets(model, crop, context)
                ce = F.cross_entropy(out.next_code_logits.float().reshape(-1, out.next_code_logits.shape[-1]),
                                     codes.reshape(-1), reduction="none")
                code_sum = (ce * code_mask.reshape(-1).to(ce.dtype)).sum()
                loss = loss + next_code_weight * code_sum / code_count
            ctx.precision.backward(loss * rt.world_size)
        sums += torch.stack([forecast_sum.detach(), code_sum.detach()]).double()
    ctx.precision.step(optimizer, [p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.zero_grad(set_to_none=True)
    sums = rt.all_reduce_sum(sums).cpu()
    parts = {"forecast_mse": float(sums[0]) / forecast_count}
    loss = parts["forecast_mse"]
    if next_code_weight > 0:
        parts["next_code_ce"] = float(sums[1]) / code_count
        loss += next_code_weight * parts["next_code_ce"]
    parts["loss"] = loss
    return parts


def freeze_unused_transformer_parameters(model: Calm, next_code_weight: float) -> None:
    """DDP waits for a gradient of every trainable parameter; the next-token head gets none when its loss
    weight is 0. Freezing it changes nothing (AdamW skips parameters without gradients)."""
    if next_code_weight <= 0:
        model.next_code_head.requires_grad_(False)


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """Dropout masks of stage 2: a function of (seed, step, rank), so resuming needs no per-rank RNG state."""
    return int(np.random.SeedSequence([seed, 2, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --- rank-0 step log ------------------------------------------------------------------------------------------

class StepLog:
    """``steps.csv``: stage, step, loss, lr, samples (windows or crops) per second over the last interval."""

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
                csv.writer(f).writerow([stage, step, f"{loss:.6g}", f"{lr:.6g}", f"{rate:.2f}", f"{wall_s:.1f}"])


# --- driver ----------------------------------------------------------------------------------------------

def pretrain_distributed(config: TrainConfig, data_root, out_dir, settings: DistributedSettings | None = None,
                         resume: bool = False, progress: bool = True, stop_after_steps: int | None = None,
                         log=print, runtime: Runtime | None = None) -> dict:
    """:func:`trainer.pretrain.pretrain` on this process's share of a torchrun job (or alone, with world
    size 1). Returns the final metrics on rank 0, ``{}`` on the other ranks, or ``{"stopped_at": ...}``
    everywhere when ``stop_after_steps`` optimizer steps were taken in this call."""
    settings = settings or DistributedSettings()
    start_time = time.time()
    rt = runtime or start_runtime(settings.device)
    precision = Precision(resolve_precision(settings.precision, rt.device), rt.device)
    ctx = StepContext(rt, settings.accumulation_steps, precision)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    main_log = log if rt.is_main else (lambda *_: None)
    tcfg, scfg, W = config.tokenizer, config.transformer, config.model.token_window_frames
    if (scfg.objective != "autoregressive" or scfg.neuron_curriculum != "mixed" or scfg.forecast_loss != "mse"
            or scfg.first_scored_frame or config.model.input_mode == "encoder"):
        raise TrainingError("the distributed trainer runs the autoregressive objective with the MSE loss on all "
                            "neurons, for tokens/continuous models only; train transformer.objective / "
                            "neuron_curriculum / forecast_loss experiments and encoder-mode models with "
                            "`python -m trainer pretrain` (single process)")
    # Fail on every rank alike, before any work, when the global batches cannot be split.
    micro_batch_size(tcfg.batch_windows, rt.world_size, settings.accumulation_steps, "tokenizer.batch_windows")
    micro_batch_size(scfg.batch_crops, rt.world_size, settings.accumulation_steps, "transformer.batch_crops")

    out_dir = Path(out_dir)
    last_dir, best_dir = out_dir / "checkpoints" / "last", out_dir / "checkpoints" / "best"
    existing_run = last_dir.exists()
    rt.barrier()  # every rank has looked before rank 0 writes anything
    if existing_run and not resume:
        raise TrainingError(f"{out_dir} already holds a training run; pass --resume to continue it or choose "
                            "another --out")
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    data = prepare_data(rt, data_root, config, main_log)
    train, validation, test = data.train, data.validation, data.test
    main_log(f"train: {len(train)} recordings ({sum(s.n_neurons for s in train)} neurons) of mice "
             f"{sorted({s.mouse for s in train})}; validation mice {config.data.validation_mice}; "
             f"test mice {config.data.test_mice}; world size {rt.world_size} ({rt.backend or 'single process'}, "
             f"{rt.device}), accumulation {settings.accumulation_steps}, precision {precision.name}")

    torch.manual_seed(config.seed)
    model = Calm(config.model).to(rt.device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    state = {"stage": "tokenizer", "step": 0, "config_fingerprint": config.fingerprint(), "history": [],
             "best_validation_forecast_mse": None, "best_step": None, "tokenizer_metrics": {},
             "elapsed_s": 0.0}
    resume_from_checkpoint, elapsed_before = False, 0.0
    if resume and existing_run:
        state = read_trainer_state(last_dir)
        if state["config_fingerprint"] != config.fingerprint():
            raise TrainingError(f"{last_dir}: was trained with a different config (fingerprint "
                                f"{state['config_fingerprint']} != {config.fingerprint()}); resume with the same config")
        resume_from_checkpoint = True
        elapsed_before = float(state.get("elapsed_s", 0.0))
        main_log(f"resuming from {last_dir}: stage {state['stage']}, step {state['step']} (world size "
                 f"{state.get('distributed', {}).get('world_size', 1)} -> {rt.world_size})")
    steps_taken = 0
    step_log = StepLog(out_dir / "steps.csv", rt.is_main)

    def budget_exhausted() -> bool:
        return stop_after_steps is not None and steps_taken >= stop_after_steps

    def model_metadata() -> dict:
        return {"training_config": config.to_dict(), "stage": state["stage"], "step": state["step"]}

    def save_last(optimizer) -> None:
        if not rt.is_main:
            return
        state["elapsed_s"] = elapsed_before + (time.time() - start_time)
        state["distributed"] = {"world_size": rt.world_size, "accumulation_steps": settings.accumulation_steps,
                                "precision": precision.name, "backend": rt.backend}
        scaler_state = precision.state()
        if scaler_state is not None:
            state["grad_scaler"] = scaler_state
        save_training_state(last_dir, model, optimizer, generator,
                            {k: v for k, v in state.items() if k != "optimizer_param_groups"}, model_metadata())

    def restore(optimizer) -> None:
        # CPU tensors from the checkpoint: load_state_dict copies weights onto the model's device and
        # Optimizer.load_state_dict moves each state tensor to its parameter's device.
        load_training_state(last_dir, model, optimizer, generator, state)
        precision.load_state(state.get("grad_scaler"))

    def stopped(bar, optimizer, stage: str) -> dict:
        bar.close()
        save_last(optimizer)
        return {"stopped_at": {"stage": stage, "step": state["step"]}}

    # ---- stage 1: tokenizer ----
    token_params = [*model.tokenizer.encoder.parameters(), *model.tokenizer.decoder.parameters()]
    if state["stage"] == "tokenizer":
        optimizer = torch.optim.Adam(token_params, lr=tcfg.lr)
        if resume_from_checkpoint:
            restore(optimizer)
        val_windows = (validation_windows(validation, W, tcfg.validation_windows, config.seed + 2).to(rt.device)
                       if rt.is_main else None)
        sampler = ShardedWindowSampler(train, W)
        model.tokenizer.train()
        autoencoder = wrap_ddp(TokenizerAutoencoder(model.tokenizer), rt)
        bar = tqdm(total=tcfg.steps, initial=state["step"], desc="tokenizer", disable=not (progress and rt.is_main),
                   dynamic_ncols=True, mininterval=2.0)
        step_log.restart(state["step"])
        while state["step"] < tcfg.steps:
            if budget_exhausted():
                return stopped(bar, optimizer, "tokenizer")
            lr = lr_at(state["step"], tcfg.steps, tcfg.lr, tcfg.warmup_steps, tcfg.lr * 0.1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if rt.device.type == "cuda":  # dead-code restarts draw on the device: make them a function of the step
                torch.cuda.manual_seed(dropout_seed(config.seed, state["step"], 0))
            parts = tokenizer_step(ctx, model, autoencoder, optimizer, sampler, generator, tcfg.batch_windows,
                                   tcfg.missing_probability, tcfg.stream_start_probability)
            state["step"] += 1
            steps_taken += 1
            bar.update(1)
            if state["step"] % settings.log_every == 0 or state["step"] == tcfg.steps:
                step_log.write("tokenizer", state["step"], parts["mse"] + parts["commitment"], lr, tcfg.batch_windows,
                               elapsed_before + time.time() - start_time)
            if rt.is_main and (state["step"] % tcfg.validate_every == 0 or state["step"] == tcfg.steps):
                metrics = tokenizer_metrics(model, val_windows)
                state["history"].append({"stage": "tokenizer", "step": state["step"], "train_mse": parts["mse"],
                                         **{f"validation_{k}": v for k, v in metrics.items()}})
                bar.set_postfix(mse=f"{parts['mse']:.3f}", val_r2=f"{metrics.get('reconstruction_r2', float('nan')):.3f}",
                                ppl=f"{metrics.get('perplexity', float('nan')):.0f}")
                _append_log(out_dir, state["history"][-1])
        bar.close()
        del autoencoder
        model.tokenizer.eval()
        if rt.is_main:
            test_windows = validation_windows(test, W, tcfg.validation_windows, config.seed + 3).to(rt.device)
            state["tokenizer_metrics"] = {"validation": tokenizer_metrics(model, val_windows),
                                          "test": tokenizer_metrics(model, test_windows)}
            main_log(f"tokenizer: {json.dumps(state['tokenizer_metrics'])}")
        state["stage"], state["step"] = "transformer", 0
        resume_from_checkpoint = False

    # ---- stage 2: transformer ----
    model.tokenizer.requires_grad_(False)
    model.tokenizer.eval()
    optimizer = torch.optim.AdamW(transformer_parameter_groups(model, scfg.weight_decay), lr=scfg.lr,
                                  betas=(0.9, 0.95))
    if state["stage"] == "transformer":
        if resume_from_checkpoint:
            restore(optimizer)
        else:
            save_last(optimizer)  # the tokenizer is done: never train it again after a crash
        context = scfg.context_frames
        crop_frames = context + config.model.forecast_horizon_frames
        sampler = ShardedCropSampler(train, crop_frames, scfg.max_neurons)
        if data.longest_validation_epoch < crop_frames:
            raise TrainingError(f"no validation recording has {crop_frames} frames (context + horizon)")
        val_crops = ([c.to(rt.device) for c in fixed_crops(validation, crop_frames, scfg.validation_crops_per_epoch)]
                     if rt.is_main else [])
        # every rank draws the same whole batches (the generator is shared), so all fit the same skip
        whole_batch = torch.arange(scfg.batch_crops)
        start_from_least_squares(model, config, state,
                                 lambda: sampler.sample_rows(scfg.batch_crops, generator, whole_batch), main_log)
        freeze_unused_transformer_parameters(model, scfg.next_code_weight)
        model.train()
        model.tokenizer.eval()
        network = wrap_ddp(model, rt)
        bar = tqdm(total=scfg.steps, initial=state["step"], desc="transformer", disable=not (progress and rt.is_main),
                   dynamic_ncols=True, mininterval=2.0)
        step_log.restart(state["step"])
        while state["step"] < scfg.steps:
            if budget_exhausted():
                return stopped(bar, optimizer, "transformer")
            lr = lr_at(state["step"], scfg.steps, scfg.lr, scfg.warmup_steps, scfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(dropout_seed(config.seed, state["step"], rt.rank))
            parts = transformer_step(ctx, model, network, optimizer, sampler, generator, scfg.batch_crops, context,
                                     scfg.missing_probability, scfg.next_code_weight, scfg.grad_clip)
            state["step"] += 1
            steps_taken += 1
            bar.update(1)
            if state["step"] % settings.log_every == 0 or state["step"] == scfg.steps:
                step_log.write("transformer", state["step"], parts["loss"], lr, scfg.batch_crops,
                               elapsed_before + time.time() - start_time)
            if rt.is_main and (state["step"] % scfg.validate_every == 0 or state["step"] == scfg.steps):
                metrics = validate_transformer(model, val_crops, context, scfg.next_code_weight, parts, state,
                                               out_dir, best_dir, model_metadata())
                model.tokenizer.eval()
                bar.set_postfix(loss=f"{parts['loss']:.3f}", val=f"{metrics['forecast_mse']:.3f}",
                                vs_copy=f"{metrics['mse_ratio_vs_copy_last']:.3f}")
            if state["step"] % scfg.checkpoint_every == 0 and state["step"] < scfg.steps:
                save_last(optimizer)
        bar.close()
        del network
        state["stage"] = "done"
        save_last(optimizer)

    # ---- final report (rank 0; the other ranks are done) ----
    if not rt.is_main:
        return {}
    model.cpu()
    return final_report(config, out_dir, train, validation, test, data.skipped, state, log,
                        pooled_ar_traces=data.pooled_ar_traces)
