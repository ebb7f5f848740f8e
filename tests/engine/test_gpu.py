"""CUDA and TensorRT paths. They need an NVIDIA GPU (and, for TensorRT, the ``gpu`` extra); elsewhere
every test here is skipped with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtcalm.engine import ArtifactError, NeuronRange, load_engine
from rtcalm.engine.artifact import sidecar_path
from rtcalm.engine.build import compile_artifact
from rtcalm.engine.loading import tensorrt_status
from rtcalm.engine.torch_backend import TorchEngine
from rtcalm.engine.validate import FP32_TIE_MARGIN, FP32_TOLERANCE, compare_with_reference, validation_frames
from rtcalm.errors import RtcalmError
from rtcalm.model import load_checkpoint

CUDA_REASON = ("needs a CUDA GPU: torch.cuda.is_available() is False "
               f"({'CPU-only torch build' if torch.version.cuda is None else 'no GPU visible'})")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
TENSORRT_OK, TENSORRT_WHY = tensorrt_status()
needs_tensorrt = pytest.mark.skipif(not TENSORRT_OK, reason=f"needs TensorRT on a CUDA GPU: {TENSORRT_WHY}")


@needs_cuda
@pytest.mark.parametrize("n_neurons", [37, 512])
def test_torch_cuda_graph_step_matches_the_cpu_reference(checkpoint, n_neurons):
    model = load_checkpoint(checkpoint)
    engine = TorchEngine(load_checkpoint(checkpoint), "test@0", device="cuda")
    assert engine.backend == "torch-cuda-cudagraph"
    stream = engine.new_stream(n_neurons)
    assert stream.graph is not None, "CUDA graph capture failed (see the warning log)"
    pointers = [t.data_ptr() for t in stream.state]
    result = compare_with_reference(engine, model, n_neurons, 300, tolerance=FP32_TOLERANCE,
                                    tie_margin=FP32_TIE_MARGIN)
    assert result.passed, result
    second = engine.new_stream(n_neurons)
    engine.fold(validation_frames(40, n_neurons), second)
    assert all(t.is_cuda for t in second.state)  # the state lives on the GPU
    assert [t.data_ptr() for t in second.state] != pointers  # each stream has its own buffers


@needs_cuda
def test_torch_cuda_eager_matches_the_cpu_reference(checkpoint):
    cpu = TorchEngine(load_checkpoint(checkpoint), "test@0")
    cuda = TorchEngine(load_checkpoint(checkpoint), "test@0", device="cuda", mode="eager")
    frames = validation_frames(200, 64)
    a, b = cpu.new_stream(64), cuda.new_stream(64)
    worst = 0.0
    for t in range(200):
        worst = max(worst, float(np.abs(cpu.step(frames[t:t + 1], a) - cuda.step(frames[t:t + 1], b)).max()))
    assert worst <= 1e-3  # cuBLAS vs CPU BLAS in float32; code flips at near ties would show as ~0.1


@needs_tensorrt
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_tensorrt_fp32_engine_matches_torch_and_is_picked_by_auto(checkpoint, cuda_graphs):
    path, sidecar = compile_artifact(checkpoint, "tensorrt", NeuronRange(1, 512, False), validation_steps=200)
    assert sidecar["precision"] == "fp32" and sidecar["device"]["gpu"] == torch.cuda.get_device_name()
    engine = load_engine(checkpoint, "auto", cuda_graphs=cuda_graphs)
    assert engine.backend == "tensorrt" and engine.artifact == str(path)
    stream = engine.new_stream(37)
    assert (stream.graphs[0] is not None) == cuda_graphs
    result = compare_with_reference(engine, load_checkpoint(checkpoint), 37, 300, tolerance=FP32_TOLERANCE,
                                    tie_margin=FP32_TIE_MARGIN)
    assert result.passed, result
    with pytest.raises(RtcalmError, match="1 to 512 neurons"):
        engine.new_stream(513)


@needs_tensorrt
def test_tensorrt_fp16_is_kept_only_when_measured_accurate(checkpoint):
    try:
        path, sidecar = compile_artifact(checkpoint, "tensorrt", NeuronRange(1, 512, False), fp16=True,
                                         validation_steps=200)
    except RtcalmError as exc:
        assert "try without --fp16" in str(exc) and not (checkpoint / "compiled").exists()
        return
    assert sidecar["precision"] == "fp16" and path.name == "tensorrt-n1-512-fp16.plan"
    assert all(r["passed"] for r in sidecar["validation"]["results"])
    assert load_engine(checkpoint, "tensorrt", artifact=path).backend == "tensorrt-fp16"


@needs_tensorrt
def test_tensorrt_plan_from_another_version_or_gpu_is_refused(checkpoint):
    path, _ = compile_artifact(checkpoint, "tensorrt", NeuronRange.exactly(16), validation_steps=50)
    document = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**document, "versions": {**document["versions"], "tensorrt": "9.0"}}))
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0"):
        load_engine(checkpoint, "tensorrt", artifact=path)
    sidecar_path(path).write_text(json.dumps({**document, "device": {"gpu": "old", "compute_capability": "5.0"}}))
    with pytest.raises(ArtifactError, match="compute capability 5.0"):
        load_engine(checkpoint, "tensorrt", artifact=path)
