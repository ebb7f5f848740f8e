"""Backend selection: auto picks the fastest usable backend and says why; a backend asked for by name
that cannot run is an error, never a silent fallback."""

from __future__ import annotations

import logging

import pytest

import rtcalm.engine.loading as loading
from rtcalm.engine import BackendUnavailableError, load_engine, select_backend
from rtcalm.engine.onnx_backend import OnnxEngine
from rtcalm.engine.torch_backend import TorchEngine
from rtcalm.errors import RtcalmError


def fake_status(monkeypatch, tensorrt=(False, "no tensorrt here"), onnx=(True, "ONNX Runtime x (CPU)")):
    monkeypatch.setattr(loading, "tensorrt_status", lambda: tensorrt)
    monkeypatch.setattr(loading, "onnxruntime_status", lambda: onnx)


def test_auto_prefers_tensorrt_then_onnx_then_torch(monkeypatch):
    fake_status(monkeypatch, tensorrt=(True, "TensorRT 10.x on GPU"))
    assert select_backend("auto") == ("tensorrt", "auto: TensorRT 10.x on GPU")
    fake_status(monkeypatch)
    backend, reason = select_backend("auto")
    assert backend == "onnx" and "TensorRT not used: no tensorrt here" in reason
    fake_status(monkeypatch, onnx=(False, "onnxruntime is not installed"))
    backend, reason = select_backend("auto")
    assert backend == "torch" and "no tensorrt here" in reason and "onnxruntime is not installed" in reason


def test_explicit_backend_that_cannot_run_is_an_error(monkeypatch):
    fake_status(monkeypatch, onnx=(False, "onnxruntime is not installed"))
    with pytest.raises(BackendUnavailableError, match="'tensorrt' was asked for but cannot run here: no tensorrt"):
        select_backend("tensorrt")
    with pytest.raises(BackendUnavailableError, match="'onnx' was asked for .* onnxruntime is not installed"):
        select_backend("onnx")
    with pytest.raises(RtcalmError, match="unknown backend 'cuda'"):
        select_backend("cuda")


def test_this_machine_without_gpu_says_why_tensorrt_is_not_used():
    """Real probes, no fakes: on a machine without tensorrt/CUDA, auto is ONNX Runtime and says why."""
    trt_ok, why = loading.tensorrt_status()
    if trt_ok:
        pytest.skip("this machine can run TensorRT")
    assert "tensorrt" in why.lower()
    backend, reason = select_backend("auto")
    assert backend == "onnx" and why in reason
    with pytest.raises(BackendUnavailableError, match="cannot run here"):
        select_backend("tensorrt")


def test_load_engine_backends_and_logged_reason(checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="rtcalm.engine"):
        engine = load_engine(checkpoint)
    if not loading.tensorrt_status()[0]:
        assert isinstance(engine, OnnxEngine) and engine.backend == "onnxruntime-cpu"
        assert any("auto:" in r.message for r in caplog.records)
    torch_engine = load_engine(checkpoint, "torch", device="cpu")
    assert isinstance(torch_engine, TorchEngine) and torch_engine.backend == "torch-cpu"
    assert torch_engine.describe()["backend_selection"] == "torch was asked for (device cpu)"
    assert torch_engine.describe()["neurons"] == {"min": 1, "max": 1 << 22, "static": False, "opt": 512}
    assert engine.version == torch_engine.version and engine.horizon == torch_engine.horizon == 5
    assert engine.describe()["parameters"] == torch_engine.describe()["parameters"]
    with pytest.raises(RtcalmError, match="applies to the torch backend only"):
        load_engine(checkpoint, "onnx", device="cpu")


def test_explicit_tensorrt_failure_raises_but_auto_falls_back_with_a_warning(checkpoint, monkeypatch, caplog):
    fake_status(monkeypatch, tensorrt=(True, "TensorRT 10.x on GPU"))

    def broken(*args, **kwargs):
        raise RtcalmError("TensorRT cannot parse the step graph: simulated")

    monkeypatch.setattr(loading, "_load_tensorrt", broken)
    with pytest.raises(RtcalmError, match="simulated"):
        load_engine(checkpoint, "tensorrt")
    with caplog.at_level(logging.WARNING, logger="rtcalm.engine"):
        engine = load_engine(checkpoint, "auto")
    assert isinstance(engine, OnnxEngine) and "TensorRT failed" in engine.selection
    assert any("falling back to ONNX Runtime" in r.message for r in caplog.records)


def test_bad_model_spec_is_a_clear_error(tmp_path):
    with pytest.raises(RtcalmError, match="no such checkpoint directory"):
        load_engine(tmp_path / "missing", "torch")


def test_cuda_device_without_cuda_is_an_error(checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="torch sees no CUDA GPU"):
        load_engine(checkpoint, "torch", device="cuda")
