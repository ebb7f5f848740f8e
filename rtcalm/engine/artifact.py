"""Compiled step artifacts: an ONNX model or a TensorRT plan plus a JSON sidecar saying what it was built
from.

Layout (``rtcalm compile`` writes next to the checkpoint unless ``--out`` says otherwise)::

    <checkpoint>/compiled/onnx-n1-65536.onnx              the step graph, N dynamic in [1, 65536]
    <checkpoint>/compiled/onnx-n1-65536.onnx.json         its sidecar
    <checkpoint>/compiled/tensorrt-n512-fp16.plan         a TensorRT engine for exactly 512 neurons
    <checkpoint>/compiled/tensorrt-n512-fp16.plan.json

Sidecar (``format: rtcalm-step-artifact``, ``format_version: 2``)::

    {"backend": "onnx" | "tensorrt", "artifact": "<file name>", "artifact_sha256": "...",
     "model": {"name": ..., "weights_sha256": "<full hex>", "version": "<name>@<12 hex>"},
     "model_config": {...CalmConfig...},
     "neurons": {"min": 1, "max": 65536, "static": false, "opt": 512},
     "precision": "fp32" | "fp16", "opset": 17, "graph": {"inputs": [...], "outputs": [...]},
     "validation": {...measured agreement with the torch reference...},
     "versions": {"rtcalm": ..., "torch": ..., "onnx": ..., "onnxruntime": ... | "tensorrt": ...},
     "device": {...GPU name and compute capability, TensorRT only...}, "created": "<UTC ISO 8601>"}

Loading checks, in order, and refuses with an :class:`ArtifactError` naming the file and the problem: the
artifact and its sidecar exist; the sidecar is a JSON object of this format and version with every
field of the right type; the backend is the one asked for; the artifact's SHA-256 is the recorded one
(a truncated, damaged or swapped file); the model hash and config are the checkpoint's (an artifact
built from other weights). The backend then refuses files it cannot parse, again as ArtifactError.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rtcalm.errors import FileError, RtcalmError, read_json_object

ARTIFACT_FORMAT = "rtcalm-step-artifact"
ARTIFACT_FORMAT_VERSION = 2  # 2: keys (N, W, head_dim) written by ScatterND; 1 had keys_t and ScatterElements
OPSET = 17  # LayerNormalization is a single ONNX op from opset 17; TensorRT 10 parses 9 to 20
COMPILED_DIR = "compiled"
EXTENSIONS = {"onnx": ".onnx", "tensorrt": ".plan"}
SIDECAR_SUFFIX = ".json"
MAX_NEURONS = 1 << 22  # the daemon's hard limit on neurons per frame (limits.max_neurons)
DEFAULT_NEURON_RANGE = (1, 65536)  # the daemon's default limits.max_neurons
TENSORRT_OPT_NEURONS = 512  # TensorRT tunes kernels for this N (clamped into the range)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(FileError):
    """A compiled artifact cannot be used: missing, corrupt, or built from another model / for another
    machine."""


@dataclass(frozen=True)
class NeuronRange:
    """Neuron counts an artifact serves: ``static`` means exactly ``min`` (== ``max``) with fixed shapes in
    the graph; otherwise N is a dynamic axis limited to [min, max]."""

    min: int
    max: int
    static: bool

    def __post_init__(self):
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEURONS:
                raise ValueError(f"neuron count {name} must be an integer in [1, {MAX_NEURONS}], got {value!r}")
        if self.min > self.max:
            raise ValueError(f"neuron range min {self.min} is above max {self.max}")
        if self.static and self.min != self.max:
            raise ValueError("a static neuron range has min == max")

    @classmethod
    def exactly(cls, n: int) -> NeuronRange:
        return cls(n, n, True)

    @property
    def opt(self) -> int:
        """The N TensorRT tunes for."""
        return min(max(TENSORRT_OPT_NEURONS, self.min), self.max)

    def contains(self, n: int) -> bool:
        return self.min <= n <= self.max

    def label(self) -> str:
        return f"n{self.min}" if self.static else f"n{self.min}-{self.max}"

    def describe(self) -> str:
        return f"exactly {self.min} neurons" if self.static else f"{self.min} to {self.max} neurons"

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "static": self.static, "opt": self.opt}


def parse_neuron_count(text: str) -> int:
    """A CLI neuron count: a decimal integer in [1, MAX_NEURONS]."""
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise RtcalmError(f"neuron count must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_NEURONS:
        raise RtcalmError(f"neuron count must be in [1, {MAX_NEURONS}], got {value}")
    return value


def parse_neuron_range(text: str) -> NeuronRange:
    """``MIN:MAX`` -> a dynamic range (``N:N`` is allowed and still dynamic)."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise RtcalmError(f"neuron range must be MIN:MAX (e.g. 1:4096), got {text!r}")
    low, high = (parse_neuron_count(part) for part in parts)
    if low > high:
        raise RtcalmError(f"neuron range {text!r}: MIN must not exceed MAX")
    return NeuronRange(low, high, False)


def artifact_file_name(backend: str, neurons: NeuronRange, fp16: bool) -> str:
    return f"{backend}-{neurons.label()}{'-fp16' if fp16 else ''}{EXTENSIONS[backend]}"


def default_artifact_path(checkpoint_dir, backend: str, neurons: NeuronRange, fp16: bool) -> Path:
    return Path(checkpoint_dir) / COMPILED_DIR / artifact_file_name(backend, neurons, fp16)


def sidecar_path(artifact_path) -> Path:
    artifact_path = Path(artifact_path)
    return artifact_path.with_name(artifact_path.name + SIDECAR_SUFFIX)


def sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _write_atomically(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_artifact(path, payload: bytes, sidecar: dict) -> Path:
    """Write ``payload`` to ``path`` and the sidecar (with the payload's SHA-256 and file name added)
    next to it, each atomically; the sidecar last, so a crash in between leaves an artifact without a
    sidecar, which loading refuses."""
    path = Path(path)
    if path.suffix != EXTENSIONS[sidecar["backend"]]:
        raise ArtifactError(path, f"a {sidecar['backend']} artifact's file name must end in "
                                  f"{EXTENSIONS[sidecar['backend']]}")
    document = {**sidecar, "artifact": path.name, "artifact_sha256": sha256_bytes(payload)}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"  # fails before writing if not JSON-able
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, payload)
        _write_atomically(sidecar_path(path), text.encode())
    except OSError as exc:
        raise ArtifactError(path, f"cannot write the artifact ({exc.strerror or exc}); choose another place "
                                  "with --out") from None
    return path


# --- reading ---------------------------------------------------------------------------------------

_SIDECAR_FIELDS = {"format": str, "format_version": int, "backend": str, "artifact": str, "artifact_sha256": str,
                   "model": dict, "model_config": dict, "neurons": dict, "precision": str, "opset": int,
                   "graph": dict, "validation": dict, "versions": dict, "created": str}


def read_sidecar(artifact_path) -> dict:
    """The validated sidecar of ``artifact_path`` (structure only; see :func:`check_artifact_for_model`)."""
    artifact_path = Path(artifact_path)
    path = sidecar_path(artifact_path)
    document = read_json_object(path, ArtifactError, f"missing: every compiled artifact needs its sidecar {path.name} "
                                                     "(rebuild with rtcalm compile)")
    if document.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(path, f"format is {document.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
    if document.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(path, f"format_version {document.get('format_version')!r} is not supported (this "
                                  f"rtcalm reads version {ARTIFACT_FORMAT_VERSION}); rebuild with rtcalm compile")
    for name, kind in _SIDECAR_FIELDS.items():
        value = document.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ArtifactError(path, f"field {name!r} must be a JSON {kind.__name__}, got {value!r:.80}")
    if document["backend"] not in EXTENSIONS:
        raise ArtifactError(path, f"unknown backend {document['backend']!r} (expected one of {sorted(EXTENSIONS)})")
    if document["artifact"] != artifact_path.name:
        raise ArtifactError(path, f"describes {document['artifact']!r}, not {artifact_path.name!r} (renamed "
                                  "files must keep their names; rebuild with rtcalm compile --out)")
    if not _HEX64.match(document["artifact_sha256"]):
        raise ArtifactError(path, "artifact_sha256 must be 64 lowercase hex digits")
    weights = document["model"].get("weights_sha256")
    if not isinstance(weights, str) or not _HEX64.match(weights):
        raise ArtifactError(path, "model.weights_sha256 must be 64 lowercase hex digits")
    try:
        neurons = document["neurons"]
        document["neuron_range"] = NeuronRange(neurons.get("min"), neurons.get("max"), neurons.get("static"))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(path, f"bad neurons field: {exc}") from None
    if not isinstance(neurons.get("static"), bool):
        raise ArtifactError(path, "neurons.static must be true or false")
    if document["precision"] not in ("fp32", "fp16"):
        raise ArtifactError(path, f"precision must be 'fp32' or 'fp16', got {document['precision']!r}")
    return document


def read_artifact(artifact_path, backend: str) -> tuple[bytes, dict]:
    """(payload bytes, sidecar) of a ``backend`` artifact, with the structure and checksum verified."""
    artifact_path = Path(artifact_path)
    if artifact_path.is_dir():
        raise ArtifactError(artifact_path, "is a directory; give the compiled file (e.g. compiled/onnx-n1-65536.onnx)")
    if not artifact_path.is_file():
        raise ArtifactError(artifact_path, "no such artifact file")
    sidecar = read_sidecar(artifact_path)
    if sidecar["backend"] != backend:
        raise ArtifactError(artifact_path, f"is a {sidecar['backend']} artifact, not {backend}")
    payload = artifact_path.read_bytes()
    if sha256_bytes(payload) != sidecar["artifact_sha256"]:
        raise ArtifactError(artifact_path, f"content does not match the SHA-256 in {sidecar_path(artifact_path).name} "
                                           f"({len(payload)} bytes: truncated, damaged or replaced); rebuild with "
                                           "rtcalm compile")
    return payload, sidecar


def check_artifact_for_model(artifact_path, sidecar: dict, weights_sha256: str, config_dict: dict) -> None:
    """Refuse an artifact built from other weights or another model config than the checkpoint's."""
    built_from = sidecar["model"]["weights_sha256"]
    if built_from != weights_sha256:
        raise ArtifactError(artifact_path, f"was built from model weights {built_from[:12]} "
                                           f"({sidecar['model'].get('version', 'unknown version')}), but the "
                                           f"checkpoint's weights are {weights_sha256[:12]}; rebuild it with "
                                           "rtcalm compile for this checkpoint")
    if sidecar["model_config"] != config_dict:
        raise ArtifactError(artifact_path, "was built for a different model config than the checkpoint's; rebuild "
                                           "it with rtcalm compile")


def find_artifacts(checkpoint_dir, backend: str) -> list[Path]:
    """Artifact files of ``backend`` in ``<checkpoint>/compiled/``, sorted by name (not yet validated)."""
    directory = Path(checkpoint_dir) / COMPILED_DIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == EXTENSIONS[backend] and p.is_file())
