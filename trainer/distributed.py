"""The process group under the training loop: rank, world size, device, collectives, DDP wrapping,
the split of a global batch into micro-batches, and mixed precision.

:func:`trainer.pretrain.pretrain` is the one training loop. Started as a plain process it runs with a
:class:`Runtime` of world size 1, where every collective is the identity and no module is wrapped;
launched by torchrun it joins the process group and the same code trains data-parallel (each process
draws the whole batch and trains on its rows; :func:`all_reduce_gradients` sums the gradients):

    python -m torch.distributed.run --standalone --nproc-per-node N -m trainer pretrain \\
        --config configs/pretrain_default.json --data-root STORE_OR_FOLDER --out runs/NAME \\
        [--accumulation-steps K] [--precision auto|fp32|bf16|fp16] [--device auto|cpu|cuda] [--resume]

The config's batch is the *global* batch of one optimizer step, split into ``world_size x
accumulation_steps`` equal micro-batches; micro-batch ``m`` of rank ``r`` holds global rows
``[(m * world_size + r) * b, ... + b)`` (docs/training.md has the long form).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rtcalm.errors import RtcalmError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# Process-group timeout: rank 0 validates (and fits the per-neuron warm start) while the other ranks wait
# in the next collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


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
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; absent: a single process), pick the
    device and join the group."""
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
        # torch.optim imports torch._dynamo when the first optimizer is built. Imported once the group
        # exists, it keeps the gloo group and its threads alive past destroy_process_group (measured,
        # torch 2.13), and the group is then torn down during interpreter finalisation, racing with it:
        # the abort at exit ("terminate called without an active exception", exit -6). Imported before
        # the group exists, it holds nothing.
        importlib.import_module("torch._dynamo")
        kwargs = {"device_id": torch_device} if use_cuda else {}
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return runtime


def stop_runtime(runtime: Runtime, synchronise: bool = True) -> None:
    """Tear the process group down. After a normal finish every rank first waits at a barrier, so none
    closes its connections while another still has a collective in flight; after an error there is no
    barrier (the others may never reach it). Nothing else holds the group (see :func:`start_runtime` and
    :func:`all_reduce_gradients`), so ``destroy_process_group`` really ends the gloo threads here and the
    interpreter exits with none left to tear down (tests/trainer/test_distributed.py checks it)."""
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


@dataclass
class Sharding:
    """How one optimizer step's global batch is shared out: this process's rows, micro-batch by
    micro-batch."""

    runtime: Runtime
    accumulation_steps: int

    def micro_batch(self, global_batch: int, what: str) -> int:
        return micro_batch_size(global_batch, self.runtime.world_size, self.accumulation_steps, what)

    def rows(self, global_batch: int, what: str) -> torch.Tensor:
        rt = self.runtime
        return rank_rows(self.micro_batch(global_batch, what), rt.world_size, self.accumulation_steps, rt.rank)


def single_process() -> tuple[Sharding, Precision]:
    """One CPU process, one micro-batch per step, fp32: how the learned baselines train."""
    runtime = Runtime()
    return Sharding(runtime, 1), Precision("fp32", runtime.device)


def all_reduce_gradients(runtime: Runtime, parameters) -> None:
    """Sum the gradients over the processes, once per optimizer step, in one flat all-reduce: each
    process's loss is its share of the global batch's loss, so the sum is the global gradient (and every
    process then takes the same optimizer step). One process: nothing to do.

    This is the data-parallel wrapper instead of torch's DistributedDataParallel: a DDP module that has
    run a forward and backward pass keeps the gloo process group and its threads alive after
    destroy_process_group (measured, torch 2.13, even once the module is collected), so the group would
    be torn down during interpreter finalisation, racing with it (see :func:`start_runtime`). For this
    model (tens of thousands of parameters) one message per step costs nothing that DDP's overlap of
    communication with the backward pass would save."""
    if not runtime.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]  # the same parameters on every rank
    if not grads:
        return
    flat = runtime.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    for g, summed in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(summed.view_as(g))


def broadcast_parameters(runtime: Runtime, module: nn.Module) -> None:
    """Rank 0's weights and buffers everywhere: at the start of each stage, and after work only rank 0
    does (the per-neuron warm start), so the ranks can never start a stage apart."""
    for tensor in module.state_dict().values():
        runtime.broadcast_(tensor)


def rank_seed(seed: int, step: int, rank: int) -> int:
    """A seed that is a function of (seed, step, rank): dropout streams of ranks > 0, and the CUDA RNG of
    the tokenizer's dead-code restarts."""
    return int(np.random.SeedSequence([seed, 2, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


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
