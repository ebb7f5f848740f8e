"""Compile a checkpoint's step into an artifact: export, build, validate against torch, write with sidecar.

Used by ``rtcalm compile`` and the backend benchmark. Nothing is written unless the compiled step agrees
with the torch reference (:mod:`rtcalm.engine.validate`) at every validated neuron count.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import rtcalm
from rtcalm.engine.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_FORMAT_VERSION,
    DEFAULT_NEURON_RANGE,
    EXTENSIONS,
    OPSET,
    NeuronRange,
    default_artifact_path,
    read_sidecar,
    utc_now,
    write_artifact,
)
from rtcalm.engine.export import export_onnx
from rtcalm.engine.loading import (
    BackendUnavailableError,
    LoadedCheckpoint,
    onnxruntime_status,
    tensorrt_status,
)
from rtcalm.engine.step_graph import input_names, output_names
from rtcalm.engine.validate import (
    FP16_TIE_MARGIN,
    FP16_TOLERANCE,
    FP32_TIE_MARGIN,
    FP32_TOLERANCE,
    compare_with_reference,
)
from rtcalm.errors import RtcalmError

log = logging.getLogger("rtcalm.engine")

COMPILED_BACKENDS = ("onnx", "tensorrt")
DEFAULT_VALIDATION_STEPS = 200


def validation_neuron_counts(neurons: NeuronRange) -> list[int]:
    """The smallest count, the one TensorRT tunes for, and the largest if it is cheap to run on a CPU."""
    counts = {neurons.min, neurons.opt}
    if neurons.max <= 1024:
        counts.add(neurons.max)
    return sorted(counts)


def compile_artifact(name_or_path, backend: str, neurons: NeuronRange | None = None, *, fp16: bool = False,
                     out=None, validation_steps: int = DEFAULT_VALIDATION_STEPS, tolerance: float | None = None,
                     seed: int = 0) -> tuple[Path, dict]:
    """Compile, validate and write; returns (artifact path, the sidecar as written)."""
    if backend not in COMPILED_BACKENDS:
        raise RtcalmError(f"backend must be one of {', '.join(COMPILED_BACKENDS)} (torch needs no compiling), "
                          f"got {backend!r}")
    if fp16 and backend != "tensorrt":
        raise RtcalmError("--fp16 is for --backend tensorrt (ONNX Runtime on the CPU runs float32)")
    if isinstance(validation_steps, bool) or not isinstance(validation_steps, int) or validation_steps < 1:
        raise RtcalmError(f"validation steps must be a positive integer, got {validation_steps!r}")
    if tolerance is None:
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if not tolerance > 0:
        raise RtcalmError(f"tolerance must be positive, got {tolerance!r}")
    neurons = neurons or NeuronRange(*DEFAULT_NEURON_RANGE, False)
    if out is not None and Path(out).suffix != EXTENSIONS[backend]:
        raise RtcalmError(f"--out {out}: a {backend} artifact's file name must end in {EXTENSIONS[backend]}")
    ok, why = onnxruntime_status() if backend == "onnx" else tensorrt_status()
    if not ok:
        raise BackendUnavailableError(f"cannot compile for {backend}: {why}")

    checkpoint = LoadedCheckpoint(name_or_path)
    model, config = checkpoint.model, checkpoint.model.config
    onnx_bytes = export_onnx(model, neurons)
    import onnx

    onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    versions = {"rtcalm": rtcalm.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    common = (config, neurons, checkpoint.version, str(checkpoint.directory), model.n_parameters())
    sidecar_extra = {}
    if backend == "onnx":
        import onnxruntime as ort

        from rtcalm.engine.onnx_backend import OnnxEngine

        payload = onnx_bytes
        engine = OnnxEngine(payload, *common, threads=1, selection="rtcalm compile validation")
        versions["onnxruntime"] = ort.__version__
    else:
        import tensorrt as trt

        from rtcalm.engine.tensorrt_backend import TensorRTEngine, build_plan, device_info

        log.info("building the TensorRT engine (%s, %s)", neurons.describe(), "FP16" if fp16 else "FP32")
        payload = build_plan(onnx_bytes, neurons, fp16)
        engine = TensorRTEngine(payload, *common, fp16=fp16, selection="rtcalm compile validation")
        versions["tensorrt"] = trt.__version__
        sidecar_extra["device"] = device_info()

    margin = FP16_TIE_MARGIN if fp16 else FP32_TIE_MARGIN
    results = [compare_with_reference(engine, model, n, validation_steps, tolerance=tolerance, tie_margin=margin,
                                      seed=seed) for n in validation_neuron_counts(neurons)]
    failed = [r for r in results if not r.passed]
    if failed:
        details = "; ".join(f"N={r.n_neurons}: max |error| {r.max_abs_error:.3g} (tolerance {r.tolerance:g}), "
                            f"{r.unexplained_steps} steps off without a near-tie code, {r.code_flip_steps} code "
                            "flips" for r in failed)
        hint = " (try without --fp16)" if fp16 else ""
        raise RtcalmError(f"the compiled {backend} step does not match the torch reference{hint}: {details}; "
                          "nothing was written")

    sidecar = {
        "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION, "backend": backend,
        "model": {"name": checkpoint.directory.name, "source": str(checkpoint.directory),
                  "weights_sha256": checkpoint.weights_sha256, "version": checkpoint.version},
        "model_config": checkpoint.config_dict,
        "neurons": neurons.to_dict(), "precision": "fp16" if fp16 else "fp32", "opset": OPSET,
        "graph": {"inputs": input_names(config), "outputs": output_names(config)},
        "validation": {"reference": "torch float32 CPU", "steps": validation_steps, "seed": seed,
                       "results": [r.to_dict() for r in results]},
        "versions": versions, "created": utc_now(), **sidecar_extra,
    }
    path = Path(out) if out is not None else default_artifact_path(checkpoint.directory, backend, neurons, fp16)
    write_artifact(path, payload, sidecar)
    return path, read_sidecar(path)
