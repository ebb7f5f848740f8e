"""Checkpoint I/O: a directory with ``model.safetensors`` (weights and buffers) and ``config.json``.

Nothing here unpickles: safetensors is a JSON header plus raw little-endian arrays, and the config is
JSON. Every problem with a checkpoint (missing files, bad JSON, unknown config keys, a corrupt or
truncated weights file, missing/unexpected/mis-shaped tensors, NaN weights) raises
:class:`CheckpointError` naming the file and the problem.

config.json::

    {"format": "rtcalm-calm", "format_version": 1,
     "model_config": {...CalmConfig fields...},
     "metadata": {...free-form JSON: training data, metrics, git commit...}}

The same layout holds any model that names its format in a ``checkpoint_format`` class attribute and
has a ``config`` with ``to_dict()``: the movie decoder (``"rtcalm-movie-decoder"``,
:func:`rtcalm.model.movie_decoder.load_movie_decoder`) is saved by :func:`save_checkpoint` too, and the
trainer's resumable state (trainer/state.py) is such a directory plus the optimizer and RNG files.

Shipped models live in ``rtcalm/models/<name>/`` (same layout plus a model card ``README.md``) and are
loaded by name: ``load_model("default")``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from rtcalm.errors import FileError, read_json_object
from rtcalm.model.calm import Calm, CalmConfig

CHECKPOINT_FORMAT = Calm.checkpoint_format  # "rtcalm-calm"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class CheckpointError(FileError):
    """A checkpoint cannot be used: missing, corrupt, or not matching the model it describes."""


def _write_atomically(path: Path, write) -> None:
    """Write via a temporary file and rename, so an interrupted save never leaves a half-written file
    under the real name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, 0o644)  # readable by all, like any package data file (some writers create 0600)
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, directory, metadata: dict | None = None) -> Path:
    """Save ``model`` (a :class:`Calm`, or another model with ``checkpoint_format`` and ``config``, see
    the module docstring) to ``directory`` (created if needed). ``metadata`` must be JSON-serialisable."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint_format = type(model).checkpoint_format
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    _write_atomically(directory / WEIGHTS_FILE,
                      lambda p: save_file(tensors, str(p), metadata={"format": checkpoint_format}))
    document = {"format": checkpoint_format, "format_version": FORMAT_VERSION,
                "model_config": model.config.to_dict(), "metadata": metadata or {}}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"  # fails before writing if not JSON-able
    _write_atomically(directory / CONFIG_FILE, lambda p: p.write_text(text))
    return directory


def read_checkpoint_document(directory, checkpoint_format: str, config_class):
    """(model config, metadata) of a checkpoint directory of ``checkpoint_format``, without loading the
    weights; ``config_class.from_dict`` reads ``model_config``."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(directory, "checkpoint directory does not exist")
    if not directory.is_dir():
        raise CheckpointError(directory, f"a checkpoint is a directory with {CONFIG_FILE} and {WEIGHTS_FILE}, "
                                         "not a file")
    path = directory / CONFIG_FILE
    document = read_config_json(path, "a checkpoint")
    if document.get("format") != checkpoint_format:
        raise CheckpointError(path, f"format is {document.get('format')!r}, expected {checkpoint_format!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {document.get('format_version')!r} is not supported "
                                    f"(this rtcalm reads version {FORMAT_VERSION})")
    try:
        config = config_class.from_dict(document.get("model_config"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"bad model_config: {exc}") from None
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "metadata must be a JSON object")
    return config, metadata


def read_checkpoint_config(directory) -> tuple[CalmConfig, dict]:
    """(model config, metadata) of a CalM checkpoint directory, without loading the weights."""
    return read_checkpoint_document(directory, CHECKPOINT_FORMAT, CalmConfig)


def read_config_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (the config.json of ``what``), or CheckpointError naming the file."""
    return read_json_object(path, CheckpointError, f"missing ({what} needs config.json next to model.safetensors)")


def read_weights(path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with corrupt/truncated/non-safetensors files reported as a
    CheckpointError (safetensors never executes code, whatever the file contains)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError, OSError or ValueError depending on damage
        raise CheckpointError(path, f"corrupt or not a safetensors file ({type(exc).__name__}: {exc})") from None


def check_state_dict(path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless ``found`` has exactly the names, shapes and dtypes of ``expected``
    and only finite floating-point values."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(path, "does not match config.json: " + "; ".join(parts))
    for name, want in expected.items():
        got = found[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(path, f"tensor {name!r} has shape {tuple(got.shape)}, config.json implies "
                                        f"{tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise CheckpointError(path, f"tensor {name!r} has dtype {got.dtype}, expected {want.dtype}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise CheckpointError(path, f"tensor {name!r} contains NaN or Inf")


def load_weights(model: nn.Module, directory) -> nn.Module:
    """Load ``directory/model.safetensors`` into ``model`` (built from the directory's config.json),
    checking names, shapes, dtypes and finiteness first."""
    weights_path = Path(directory) / WEIGHTS_FILE
    tensors = read_weights(weights_path)
    check_state_dict(weights_path, model.state_dict(), tensors)
    model.load_state_dict(tensors, strict=True)
    return model


def load_checkpoint(directory, device: str | torch.device = "cpu") -> Calm:
    """Build the model described by ``directory/config.json`` and load ``directory/model.safetensors``
    into it. Returns the model in eval mode."""
    config, _ = read_checkpoint_config(directory)
    return load_weights(Calm(config), directory).to(device).eval()


def resolve_model(name_or_path) -> Path:
    """A shipped model name (``rtcalm/models/<name>/``) or a checkpoint directory -> its directory."""
    text = str(name_or_path)
    if _MODEL_NAME.match(text) and (SHIPPED_MODELS_DIR / text).is_dir():
        return SHIPPED_MODELS_DIR / text
    path = Path(text).expanduser()
    if path.exists():
        return path
    shipped = sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if p.is_dir()) if SHIPPED_MODELS_DIR.is_dir() else []
    raise CheckpointError(text, f"no such checkpoint directory and no shipped model of that name "
                                f"(shipped: {', '.join(shipped) or 'none'})")


def load_model(name_or_path, device: str | torch.device = "cpu") -> Calm:
    """``load_model("default")`` or ``load_model("runs/x/checkpoints/best")``."""
    return load_checkpoint(resolve_model(name_or_path), device)
