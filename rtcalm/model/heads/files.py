"""Heads on disk: ``<name>.safetensors`` (the tensors; no pickle) beside ``<name>.json``::

    {"format": "rtcalm-head", "version": V, "config": {...}, "provenance": {...}}

=========== ================================================================================
version     what
=========== ================================================================================
1           the EMA head; ``config`` is :class:`HeadConfig`
2           the time-resolved head on the backbone; ``config`` is :class:`TimeResolvedConfig`
            with ``pooling: "time_bins"`` (no ``features`` key: it reads the backbone)
3           the time-resolved head with ``features`` (raw, backbone or both); a raw head has
            ``components: 0`` and no projection tensors
4           version 3 with ``bin_sizes``: bins of given lengths (fit-head's nested bins, and the
            average of heads of several bin counts, :func:`rtcalm.model.heads.averaging.average_heads`);
            a time-resolved head without ``bin_sizes`` is still written as version 3
=========== ================================================================================

``provenance`` (optional, any version; written by ``rtcalm fit-head``) says what the head was fitted on:
the input files and their SHA-256, the model version, the inner-CV choice and cross-validated scores,
the command. Loading reads the config and tensors only; :func:`read_provenance` reads the provenance.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from rtcalm.model.heads.config import HeadConfig, HeadError, TimeResolvedConfig
from rtcalm.model.heads.modules import DecodingHead, TimeResolvedHead

HEAD_FORMAT = "rtcalm-head"
HEAD_VERSIONS = (1, 2, 3, 4)


def save_head(head: DecodingHead | TimeResolvedHead, directory, name: str | None = None,
              provenance: dict | None = None) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (name: the head's) into ``directory``; returns the
    JSON's path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or head.config.name
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(directory / f"{stem}.safetensors"))
    config = asdict(head.config)
    if isinstance(head, TimeResolvedHead):
        version = 4 if config["bin_sizes"] is not None else 3
        if version == 3:
            del config["bin_sizes"]  # what version 3 readers know
    else:
        version = 1
    document = {"format": HEAD_FORMAT, "version": version, "config": config}
    if provenance is not None:
        document["provenance"] = provenance
    (directory / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    return directory / f"{stem}.json"


def head_class(document: dict, where) -> tuple[type, type]:
    """(module class, config class) of a head document; HeadError if it is not a head this code reads."""
    if not isinstance(document, dict) or document.get("format") != HEAD_FORMAT or \
            document.get("version") not in HEAD_VERSIONS:
        raise HeadError(f"{where}: not an rtcalm head (format 'rtcalm-head', version 1, 2, 3 or 4)")
    config = document.get("config")
    if not isinstance(config, dict):
        raise HeadError(f"{where}: no 'config' map")
    if document["version"] == 1:
        return DecodingHead, HeadConfig
    if config.get("pooling") != "time_bins":
        raise HeadError(f"{where}: a version {document['version']} head needs pooling 'time_bins', got "
                        f"{config.get('pooling')!r}")
    if document["version"] == 2 and "features" in config:
        raise HeadError(f"{where}: a version 2 head reads the backbone and has no 'features' (version 3 has)")
    if (document["version"] == 4) != ("bin_sizes" in config):
        raise HeadError(f"{where}: a version 4 head, and only a version 4 head, lists 'bin_sizes'")
    return TimeResolvedHead, TimeResolvedConfig


def load_head(json_path, expected: type | None = None) -> DecodingHead | TimeResolvedHead:
    """A head from its ``.json`` (the ``.safetensors`` beside it), any version. Every tensor must be
    present with its exact shape, and finite. HeadError otherwise, with the reason."""
    from safetensors.torch import load_file

    json_path = Path(json_path)
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        raise HeadError(f"{json_path}: cannot load head ({type(exc).__name__}: {exc})") from None
    cls, config_cls = head_class(document, json_path)
    if expected is not None and cls is not expected:
        raise HeadError(f"{json_path}: a {cls.__name__}, not a {expected.__name__}")
    try:
        head = cls(config_cls(**document["config"]))
    except HeadError as error:
        raise HeadError(f"{json_path}: {error}") from None
    except TypeError as exc:
        raise HeadError(f"{json_path}: bad head config ({exc})") from None
    weights_path = json_path.with_suffix(".safetensors")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise HeadError(f"{weights_path}: cannot load head weights ({type(exc).__name__}: {exc})") from None
    expected_shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    if set(tensors) != set(expected_shapes):
        raise HeadError(f"{weights_path}: tensors {sorted(tensors)}, expected {sorted(expected_shapes)}")
    for key, shape in expected_shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise HeadError(f"{weights_path}: {key} has shape {tuple(tensors[key].shape)}, the config needs {shape}")
        if not bool(torch.isfinite(tensors[key]).all()):
            raise HeadError(f"{weights_path}: {key} holds NaN or Inf")
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    return head.eval()


def read_provenance(json_path) -> dict | None:
    """The head file's ``provenance`` map, or None when it has none."""
    try:
        document = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as exc:
        raise HeadError(f"{json_path}: cannot read head ({type(exc).__name__}: {exc})") from None
    provenance = document.get("provenance") if isinstance(document, dict) else None
    return provenance if isinstance(provenance, dict) else None


def tensor_bytes(config: dict, n_neurons: int, d_model: int) -> int:
    """The float32 bytes of a head's tensors as its (checked) config describes them: a lower bound on its
    weights file's size, checked before anything is allocated."""
    n_outputs = len(config["classes"]) if config.get("kind") == "classification" else 1
    if config.get("pooling") != "time_bins":
        return 4 * n_outputs * (n_neurons * d_model + 1)
    features = config.get("features", "backbone")
    components = config["components"]
    width = int(features in ("raw", "both")) + (components if features in ("backbone", "both") else 0)
    projection = d_model * (components + 1) if features in ("backbone", "both") else 0
    return 4 * (n_outputs * (config["n_bins"] * n_neurons * width + 1) + projection)
