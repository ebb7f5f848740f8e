"""The TensorRT backend (NVIDIA GPU, TensorRT 10 Python API).

Build: the exported ONNX step graph is parsed into a TensorRT network and built with one optimisation
profile covering the artifact's neuron range (tuned at :attr:`NeuronRange.opt`). TF32 is switched off,
so an FP32 engine is FP32 (TF32's 10-bit mantissa would cost about three decimal digits); ``fp16``
lets TensorRT run layers in half precision where it is faster, and ``rtcalm compile`` measures the result
against the torch reference before it writes the plan.

Run: each stream owns an execution context and its state in CUDA memory (torch tensors; their
addresses are handed to TensorRT with ``set_tensor_address``). TensorRT's outputs must not alias its
inputs, so every state tensor has two buffers that swap roles each step (parity 0 reads set A and writes
set B, parity 1 the reverse). With ``cuda_graphs`` each parity's ``execute_async_v3`` is captured once as
a CUDA graph and replayed per frame. Per frame only the frame goes to the GPU and the forecast comes
back; the state never leaves the device.

Plans are specific to the TensorRT version and the GPU architecture they were built with; the sidecar
records both and loading refuses a mismatch instead of failing inside TensorRT.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from rtcalm.engine.artifact import ArtifactError, NeuronRange
from rtcalm.engine.base import StepEngine
from rtcalm.engine.step_graph import (
    FORECAST_OUTPUT,
    FRAME_INPUT,
    HIDDEN_OUTPUT,
    initial_state,
    input_names,
    output_names,
    state_layout,
)
from rtcalm.errors import RtcalmError
from rtcalm.model.calm import CalmConfig

log = logging.getLogger("rtcalm.engine")

WORKSPACE_BYTES = 1 << 30
MIN_TENSORRT_MAJOR = 10


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why): whether TensorRT can run here, and a sentence saying why or why not."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (f"the tensorrt package is not installed ({exc}); on a machine with an NVIDIA GPU: "
                       "pip install 'rtcalm[gpu]'")
    except Exception as exc:  # a broken install fails while loading its shared libraries
        return False, f"the tensorrt package failed to import ({type(exc).__name__}: {exc})"
    major = int(trt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        return False, f"tensorrt {trt.__version__} is too old (rtcalm needs {MIN_TENSORRT_MAJOR} or newer)"
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
        return False, f"tensorrt {trt.__version__} is installed but {why}"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def device_info() -> dict:
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_plan(onnx_bytes: bytes, neurons: NeuronRange, fp16: bool, workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """Build a serialized TensorRT engine (plan) from the step graph's ONNX bytes."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode, no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RtcalmError(f"TensorRT cannot parse the step graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.clear_flag(trt.BuilderFlag.TF32)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if not neurons.static:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)
            if -1 in shape:  # the neuron axis (the only dynamic one)
                def with_n(n, shape=shape):
                    return tuple(n if d == -1 else d for d in shape)
                profile.set_shape(tensor.name, with_n(neurons.min), with_n(neurons.opt), with_n(neurons.max))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RtcalmError("TensorRT failed to build the step engine (its log above says why)")
    return bytes(plan)


class _TrtStream:
    def __init__(self, engine: TensorRTEngine, n_neurons: int):
        config, device = engine.config, engine.device
        self.n_neurons = n_neurons
        self.frames_seen = 0
        self.engine = engine
        self.context = engine.trt_engine.create_execution_context()
        if self.context is None:
            raise RtcalmError("TensorRT could not create an execution context (out of GPU memory?)")
        self.layout = state_layout(config)
        self.initial = initial_state(config, n_neurons, device)
        self.buffers = [[t.clone() for t in self.initial], [t.clone() for t in self.initial]]
        self.frame = torch.zeros(n_neurons, device=device)
        self.forecast = torch.zeros(n_neurons, config.forecast_horizon_frames, device=device)
        self.hidden = torch.zeros(n_neurons, config.d_model, device=device)
        self.host_forecast = torch.zeros(self.forecast.shape, pin_memory=True)
        self.host_hidden = torch.zeros(self.hidden.shape, pin_memory=True)
        self.parity = 0
        shapes = [(FRAME_INPUT, tuple(self.frame.shape))]
        shapes += [(tensor.name, tuple(buffer.shape)) for tensor, buffer in zip(self.layout, self.initial, strict=True)]
        for name, shape in shapes:
            if not self.context.set_input_shape(name, shape):
                raise RtcalmError(f"TensorRT refused input shape {shape} for {name!r} (outside the engine's profile)")
        self.graphs = [None, None]
        if engine.cuda_graphs:
            self._capture()

    def _bind(self, parity: int) -> None:
        reads, writes = self.buffers[parity], self.buffers[1 - parity]
        address = self.context.set_tensor_address
        address(FRAME_INPUT, self.frame.data_ptr())
        address(FORECAST_OUTPUT, self.forecast.data_ptr())
        address(HIDDEN_OUTPUT, self.hidden.data_ptr())
        for tensor, read, write in zip(self.layout, reads, writes, strict=True):
            address(tensor.name, read.data_ptr())
            address(tensor.next_name, write.data_ptr())

    def execute(self, parity: int) -> None:
        self._bind(parity)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.engine.device).cuda_stream):
            raise RtcalmError("TensorRT failed to run the step (its log above says why)")

    def _capture(self) -> None:
        device = self.engine.device
        try:
            for parity in (0, 1):
                self.execute(parity)  # TensorRT wants one plain run with these shapes/addresses before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.execute(parity)
                self.graphs[parity] = graph
        except RuntimeError as exc:
            log.warning("CUDA graph capture of the TensorRT step failed (%s); running it without capture", exc)
            self.graphs = [None, None]
        # the warm-up runs wrote into both buffer sets: start the stream from the initial state again
        for buffers in self.buffers:
            for buffer, initial in zip(buffers, self.initial, strict=True):
                buffer.copy_(initial)
        torch.cuda.current_stream(device).synchronize()

    def advance(self, frame: np.ndarray) -> None:
        self.frame.copy_(torch.from_numpy(frame))  # blocking from pageable memory: ``frame`` is free after
        graph = self.graphs[self.parity]
        if graph is not None:
            graph.replay()
        else:
            self.execute(self.parity)
        self.parity ^= 1
        self.frames_seen += 1

    def to_host(self, tensor: torch.Tensor, host: torch.Tensor) -> np.ndarray:
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.engine.device).synchronize()
        return host.numpy()


class TensorRTEngine(StepEngine):
    def __init__(self, plan: bytes, config: CalmConfig, neurons: NeuronRange, version: str, source: str,
                 n_parameters: int, *, fp16: bool, selection: str = "", artifact: str | None = None,
                 cuda_graphs: bool = True):
        import tensorrt as trt

        super().__init__(config, version, source, n_parameters, selection=selection, artifact=artifact,
                         neurons=neurons)
        self.fp16 = fp16
        self.cuda_graphs = cuda_graphs
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.backend = "tensorrt-fp16" if fp16 else "tensorrt"
        where = artifact or "in-memory TensorRT build"
        self.runtime = trt.Runtime(_logger())
        self.trt_engine = self.runtime.deserialize_cuda_engine(plan)
        if self.trt_engine is None:
            raise ArtifactError(where, "TensorRT cannot deserialize this plan (built by another TensorRT version or "
                                       "for another GPU?); rebuild it with rtcalm compile --backend tensorrt")
        names = [self.trt_engine.get_tensor_name(i) for i in range(self.trt_engine.num_io_tensors)]
        inputs = [n for n in names if self.trt_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.trt_engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(input_names(config)) or sorted(outputs) != sorted(output_names(config)):
            raise ArtifactError(where, f"engine tensors {inputs} / {outputs} are not the step layout of this model")
        expected = {FRAME_INPUT: trt.float32, FORECAST_OUTPUT: trt.float32, HIDDEN_OUTPUT: trt.float32}
        for tensor in state_layout(config):
            kind = trt.float32 if tensor.dtype == torch.float32 else trt.int32
            expected[tensor.name] = expected[tensor.next_name] = kind
        for name, kind in expected.items():
            if self.trt_engine.get_tensor_dtype(name) != kind:
                raise ArtifactError(where, f"engine tensor {name!r} has type {self.trt_engine.get_tensor_dtype(name)}, "
                                           f"expected {kind}")

    def describe(self) -> dict:
        return {**super().describe(), "fp16": self.fp16,
                "cuda_graphs": self.cuda_graphs, **device_info()}

    def new_stream(self, n_neurons: int) -> _TrtStream:
        n_neurons = self._check_compiled_for(n_neurons, "this TensorRT engine", "tensorrt")
        with torch.inference_mode():
            return _TrtStream(self, n_neurons)

    def _advance(self, frame: np.ndarray, stream: _TrtStream) -> None:
        with torch.inference_mode():
            stream.advance(frame)

    def _forecast(self, stream: _TrtStream) -> np.ndarray:
        return stream.to_host(stream.forecast, stream.host_forecast)

    def _hidden(self, stream: _TrtStream) -> np.ndarray:
        return stream.to_host(stream.hidden, stream.host_hidden)

    def load_state(self, stream: _TrtStream, arrays: list[np.ndarray]) -> None:
        with torch.inference_mode():
            for buffer, array in zip(stream.buffers[stream.parity], arrays, strict=True):
                buffer.copy_(torch.from_numpy(np.asarray(array)))
