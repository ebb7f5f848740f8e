"""Choosing a backend and loading a checkpoint onto it.

``auto`` takes the fastest backend the machine offers: TensorRT when the tensorrt package (10+) and a
CUDA GPU are both there, else ONNX Runtime on the CPU, else torch; the reason is logged (logger
``rtcalm.engine``) and kept in ``engine.selection``. A backend asked for by name that cannot run here is
an error (:class:`BackendUnavailableError`), never a silent fallback. ``auto`` does fall back when the
TensorRT build or load fails at run time, with a warning saying why.

Artifacts: an explicit ``artifact`` path must be valid for this checkpoint or loading fails. Otherwise
``<checkpoint>/compiled/`` is searched for the backend's artifacts; ones built from other weights (the
checkpoint was retrained in place) or unusable on this machine are skipped with a warning, and of the
rest the widest neuron range wins (then the newest). With none, the step graph is exported in memory
(ONNX, about a second) or built in memory (TensorRT, FP32, tens of seconds; ``rtcalm compile`` saves
that time at every start).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtcalm.engine.artifact import (
    DEFAULT_NEURON_RANGE,
    MAX_NEURONS,
    ArtifactError,
    NeuronRange,
    check_artifact_for_model,
    find_artifacts,
    read_artifact,
    read_sidecar,
)
from rtcalm.engine.base import StepEngine, model_version, weights_sha256
from rtcalm.errors import RtcalmError
from rtcalm.model.calm import Calm
from rtcalm.model.checkpoint import WEIGHTS_FILE, load_checkpoint, read_checkpoint_config, resolve_model

log = logging.getLogger("rtcalm.engine")

BACKENDS = ("auto", "torch", "onnx", "tensorrt")


class BackendUnavailableError(RtcalmError):
    """The backend asked for cannot run on this machine."""


def onnxruntime_status() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"onnxruntime is not installed ({exc}); pip install onnxruntime"
    if "CPUExecutionProvider" not in ort.get_available_providers():
        return False, f"onnxruntime {ort.__version__} has no CPU execution provider"
    return True, f"ONNX Runtime {ort.__version__} (CPU)"


def tensorrt_status() -> tuple[bool, str]:
    from rtcalm.engine.tensorrt_backend import tensorrt_status as status

    return status()


def select_backend(requested: str = "auto") -> tuple[str, str]:
    """(backend, reason) for ``requested`` in :data:`BACKENDS`; raises BackendUnavailableError when a
    backend named explicitly cannot run here."""
    if requested not in BACKENDS:
        raise RtcalmError(f"unknown backend {requested!r} (choose one of {', '.join(BACKENDS)})")
    if requested == "torch":
        return "torch", "torch was asked for"
    if requested in ("onnx", "tensorrt"):
        ok, why = onnxruntime_status() if requested == "onnx" else tensorrt_status()
        if not ok:
            raise BackendUnavailableError(f"backend {requested!r} was asked for but cannot run here: {why}")
        return requested, f"{requested} was asked for: {why}"
    trt_ok, trt_why = tensorrt_status()
    if trt_ok:
        return "tensorrt", f"auto: {trt_why}"
    ort_ok, ort_why = onnxruntime_status()
    if ort_ok:
        return "onnx", f"auto: {ort_why}; TensorRT not used: {trt_why}"
    return "torch", f"auto: torch, because TensorRT is not usable ({trt_why}) and neither is ONNX Runtime ({ort_why})"


class LoadedCheckpoint:
    """A checkpoint directory, its model and the identity (hash, version) artifacts are checked against."""

    def __init__(self, name_or_path):
        self.directory = resolve_model(name_or_path)
        read_checkpoint_config(self.directory)  # fail on a bad config.json before hashing a large weights file
        self.model: Calm = load_checkpoint(self.directory)
        self.weights_sha256 = weights_sha256(Path(self.directory, WEIGHTS_FILE))
        self.version = model_version(self.directory, self.weights_sha256)
        self.config_dict = self.model.config.to_dict()


def load_engine(name_or_path, backend: str = "auto", *, artifact=None, threads: int = 1, device: str | None = None,
                cuda_graphs: bool = True) -> StepEngine:
    """Load a shipped model (by name) or a checkpoint directory onto a backend.

    backend: ``auto`` | ``torch`` | ``onnx`` | ``tensorrt``. artifact: a compiled file (``rtcalm compile``)
    to use instead of searching ``<checkpoint>/compiled/``; with ``auto`` its backend is used. threads:
    ONNX Runtime intra-op threads (torch's are the process-wide ``torch.set_num_threads``). device: torch
    backend only, ``cpu`` or ``cuda`` (default: cuda when available). cuda_graphs: capture the per-frame
    step as a CUDA graph (torch on CUDA, TensorRT)."""
    checkpoint = LoadedCheckpoint(name_or_path)
    if artifact is not None and backend == "auto":
        backend = read_sidecar(artifact)["backend"]
        log.info("backend %s: the given artifact %s is one", backend, artifact)
    explicit = backend != "auto"
    choice, reason = select_backend(backend)
    if device is not None and choice != "torch":
        raise RtcalmError(f"device={device!r} applies to the torch backend only (the {choice} backend chose it)")
    if choice == "tensorrt":
        try:
            return _load_tensorrt(checkpoint, reason, artifact, cuda_graphs)
        except (RtcalmError, RuntimeError, OSError) as exc:  # RuntimeError: CUDA errors surface as these
            if explicit:
                raise
            log.warning("auto: TensorRT failed (%s); falling back to ONNX Runtime", exc, exc_info=True)
            ok, why = onnxruntime_status()
            if not ok:
                return _load_torch(checkpoint, f"auto: TensorRT failed ({exc}) and {why}", None, cuda_graphs)
            choice, reason = "onnx", f"auto: TensorRT failed ({exc}); {why}"
    if choice == "onnx":
        return _load_onnx(checkpoint, reason, artifact, threads)
    if artifact is not None:
        raise RtcalmError("an artifact is for the onnx or tensorrt backend, not torch")
    return _load_torch(checkpoint, reason, device, cuda_graphs)


def _load_torch(checkpoint: LoadedCheckpoint, reason: str, device: str | None, cuda_graphs: bool) -> StepEngine:
    from rtcalm.engine.torch_backend import TorchEngine

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device 'cuda' was asked for but torch sees no CUDA GPU")
    reason += f" (device {device})"
    engine = TorchEngine(checkpoint.model, checkpoint.version, str(checkpoint.directory), device=device,
                         cuda_graphs=cuda_graphs, selection=reason)
    log.info("model %s on %s: %s", engine.version, engine.backend, reason)
    return engine


def _usable_artifacts(checkpoint: LoadedCheckpoint, backend: str, machine_check) -> list[tuple[Path, bytes, dict]]:
    usable = []
    for path in find_artifacts(checkpoint.directory, backend):
        try:
            payload, sidecar = read_artifact(path, backend)
            check_artifact_for_model(path, sidecar, checkpoint.weights_sha256, checkpoint.config_dict)
            machine_check(path, sidecar)
        except ArtifactError as exc:
            log.warning("skipping compiled artifact: %s", exc)
            continue
        usable.append((path, payload, sidecar))
    rng = lambda item: item[2]["neuron_range"]  # noqa: E731
    usable.sort(key=lambda item: (rng(item).max - rng(item).min, item[2]["created"]), reverse=True)
    return usable


def _explicit_artifact(checkpoint: LoadedCheckpoint, path, backend: str, machine_check) -> tuple[Path, bytes, dict]:
    payload, sidecar = read_artifact(path, backend)
    check_artifact_for_model(path, sidecar, checkpoint.weights_sha256, checkpoint.config_dict)
    machine_check(path, sidecar)
    return Path(path), payload, sidecar


def _compiled_artifact(checkpoint: LoadedCheckpoint, artifact, backend: str,
                       machine_check) -> tuple[Path, bytes, dict] | None:
    """(path, payload, sidecar) of the artifact to run: ``artifact`` if given (an error if it does not fit),
    else the widest usable one in the checkpoint's compiled folder, else None."""
    if artifact is not None:
        return _explicit_artifact(checkpoint, artifact, backend, machine_check)
    usable = _usable_artifacts(checkpoint, backend, machine_check)
    return usable[0] if usable else None


def _load_onnx(checkpoint: LoadedCheckpoint, reason: str, artifact, threads: int) -> StepEngine:
    from rtcalm.engine.onnx_backend import OnnxEngine

    def no_machine_check(path, sidecar):
        return None

    found = _compiled_artifact(checkpoint, artifact, "onnx", no_machine_check)
    if found is not None:
        path, payload, sidecar = found
        neurons, where = sidecar["neuron_range"], str(path)
        reason += f"; compiled artifact {path}"
    else:
        from rtcalm.engine.export import export_onnx

        neurons, where = NeuronRange(1, MAX_NEURONS, False), None
        payload = export_onnx(checkpoint.model, neurons)
        reason += f"; no compiled ONNX artifact in {checkpoint.directory}/compiled, exported in memory"
    engine = OnnxEngine(payload, checkpoint.model.config, neurons, checkpoint.version, str(checkpoint.directory),
                        checkpoint.model.n_parameters(), threads=threads, selection=reason, artifact=where)
    log.info("model %s on %s: %s", engine.version, engine.backend, reason)
    return engine


def tensorrt_machine_check(path, sidecar: dict) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU architecture."""
    import tensorrt as trt

    from rtcalm.engine.tensorrt_backend import device_info

    built_with = sidecar["versions"].get("tensorrt")
    if built_with != trt.__version__:
        raise ArtifactError(path, f"was built with TensorRT {built_with}, this is {trt.__version__}; plans only load "
                                  "in the version that built them: rebuild with rtcalm compile --backend tensorrt")
    here = device_info()
    built_for = sidecar.get("device", {}).get("compute_capability")
    if built_for != here["compute_capability"]:
        raise ArtifactError(path, f"was built for compute capability {built_for} "
                                  f"({sidecar.get('device', {}).get('gpu')}), this GPU ({here['gpu']}) is "
                                  f"{here['compute_capability']}: rebuild with rtcalm compile --backend tensorrt")


def _load_tensorrt(checkpoint: LoadedCheckpoint, reason: str, artifact, cuda_graphs: bool) -> StepEngine:
    from rtcalm.engine.tensorrt_backend import TensorRTEngine, build_plan

    found = _compiled_artifact(checkpoint, artifact, "tensorrt", tensorrt_machine_check)
    if found is not None:
        path, plan, sidecar = found
        neurons, fp16, where = sidecar["neuron_range"], sidecar["precision"] == "fp16", str(path)
        reason += f"; compiled artifact {path}"
    else:
        from rtcalm.engine.export import export_onnx

        neurons, fp16, where = NeuronRange(*DEFAULT_NEURON_RANGE, False), False, None
        log.warning("no compiled TensorRT engine for %s in %s/compiled: building one now (FP32, %s; "
                    "rtcalm compile --backend tensorrt saves this at every start)", checkpoint.version,
                    checkpoint.directory, neurons.describe())
        plan = build_plan(export_onnx(checkpoint.model, neurons), neurons, fp16=False)
        reason += f"; no compiled TensorRT artifact, built in memory for {neurons.describe()}"
    engine = TensorRTEngine(plan, checkpoint.model.config, neurons, checkpoint.version, str(checkpoint.directory),
                            checkpoint.model.n_parameters(), fp16=fp16, selection=reason, artifact=where,
                            cuda_graphs=cuda_graphs)
    log.info("model %s on %s: %s", engine.version, engine.backend, reason)
    return engine
