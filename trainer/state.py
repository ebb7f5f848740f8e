"""Resumable training state, with no pickle anywhere.

A training checkpoint is a directory::

    model.safetensors, config.json     the model (rtcalm.model.save_checkpoint; loadable on its own:
                                       a CalM model, a movie decoder, ...)
    optimizer.safetensors              optimizer tensors, keyed "<param index>.<name>" (exp_avg, step, ...)
    rng.safetensors                    torch's global RNG state and the data sampler's generator state
                                       (and, from a torchrun job, ranks 1.. 's global RNG states: their
                                       dropout streams, "torch_global_rank<r>")
    trainer_state.json                 stage, step, optimizer param_groups, best validation, history,
                                       and the training-config fingerprint

It is written to ``<dir>.tmp`` and then swapped into place, so a crash during the save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from rtcalm.model import save_checkpoint
from rtcalm.model.checkpoint import CheckpointError, load_weights, read_weights

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            tensors[f"{index}.{name}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().clone()
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def save_training_state(directory, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        trainer_state: dict, model_metadata: dict, rank_rng_states=()) -> Path:
    """``rank_rng_states``: the global RNG states of ranks 1, 2, ... (rank 0's is this process's)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(model, tmp, metadata=model_metadata)
    tensors, param_groups = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    rng = {"torch_global": torch.get_rng_state(), "data_generator": generator.get_state()}
    rng.update({f"torch_global_rank{rank}": state for rank, state in enumerate(rank_rng_states, start=1)})
    save_file(rng, str(tmp / RNG_FILE))
    (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "optimizer_param_groups": param_groups},
                                                indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def read_trainer_state(directory) -> dict:
    path = Path(directory) / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(path, "missing (not a resumable training checkpoint)")
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON: {exc}") from None
    for key in ("stage", "step", "config_fingerprint", "optimizer_param_groups"):
        if key not in state:
            raise CheckpointError(path, f"missing key {key!r}")
    return state


def load_training_state(directory, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        trainer_state: dict) -> None:
    """Load weights, optimizer and RNG state of ``directory`` into the given objects (built by the caller
    for ``trainer_state['stage']``)."""
    directory = Path(directory)
    load_weights(model, directory)
    try:
        restore_optimizer(optimizer, read_weights(directory / OPTIMIZER_FILE), trainer_state["optimizer_param_groups"])
    except (KeyError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(directory / OPTIMIZER_FILE, f"does not match the optimizer ({exc})") from None
    rng = read_weights(directory / RNG_FILE)
    try:
        torch.set_rng_state(rng["torch_global"])
        generator.set_state(rng["data_generator"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(directory / RNG_FILE, f"bad RNG state ({exc})") from None


def read_rank_rng_state(directory, rank: int) -> torch.Tensor | None:
    """Rank ``rank``'s saved global RNG state, or None when the checkpoint has none for it."""
    return read_weights(Path(directory) / RNG_FILE).get(f"torch_global_rank{rank}")
