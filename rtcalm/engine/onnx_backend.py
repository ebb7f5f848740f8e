"""The ONNX Runtime backend (CPU): the exported step graph run with IOBinding over buffers the stream owns.

Per stream, everything is allocated once in ``new_stream``: the frame input, the forecast and hidden
outputs, and the state. Every input and output is bound to those numpy buffers, so a step allocates
nothing on the Python side and ONNX Runtime writes the outputs where the next step reads them:

- the key/value caches (by far the largest state, N x 2 x layers x window x head_dim floats) are bound as
  input *and* output of the same buffer. In the exported graph each cache input feeds exactly one
  ``ScatterND`` node (the write of the new key into its ring slot) whose output is the graph output;
  with input and output the same memory ONNX Runtime skips the copy of the whole cache and writes one
  slot (measured: about a quarter of the step at 4096 neurons). :func:`in_place_state_names`
  checks that structure on the loaded graph and falls back to two buffers for any cache that does not
  have it;
- the other state (the value and missing windows, the position) is not updated elementwise (the windows
  shift), so it has two buffer sets that swap roles every step: two IOBindings are prepared up front, one per
  parity, and a step only copies the frame in and runs the binding of its parity.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch

from rtcalm.engine.artifact import ArtifactError, NeuronRange
from rtcalm.engine.base import StepEngine
from rtcalm.engine.step_graph import (
    FORECAST_OUTPUT,
    FRAME_INPUT,
    HIDDEN_OUTPUT,
    input_names,
    output_names,
    state_layout,
)
from rtcalm.model.calm import CalmConfig

log = logging.getLogger("rtcalm.engine")

_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32}
_STATE_DTYPES = {torch.float32: np.float32, torch.int32: np.int32}


def in_place_state_names(onnx_bytes: bytes, config: CalmConfig) -> set[str]:
    """Key/value state inputs whose only consumer is a ScatterND node that writes the matching
    output: safe to bind input and output to one buffer (see the module docstring)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    safe = set()
    for tensor in state_layout(config):
        if not tensor.name.startswith(("keys_", "values_")):
            continue
        users = consumers.get(tensor.name, [])
        if (len(users) == 1 and users[0].op_type == "ScatterND" and users[0].input[0] == tensor.name
                and list(users[0].output) == [tensor.next_name]):
            safe.add(tensor.name)
    return safe


class _OrtStream:
    def __init__(self, engine: OnnxEngine, n_neurons: int):
        config = engine.config
        self.n_neurons = n_neurons
        self.frames_seen = 0
        self.frame = np.zeros(n_neurons, dtype=np.float32)
        self.forecast = np.zeros((n_neurons, config.forecast_horizon_frames), dtype=np.float32)
        self.hidden = np.zeros((n_neurons, config.d_model), dtype=np.float32)
        self.layout = state_layout(config)
        # buffers[parity][i]: state tensor i as read by a step of that parity; in-place tensors share one array
        first = [self._initial(t, n_neurons) for t in self.layout]
        second = [a if t.name in engine.in_place else a.copy() for t, a in zip(self.layout, first, strict=True)]
        self.buffers = [first, second]
        self.bindings = [self._bind(engine, self.buffers[p], self.buffers[1 - p]) for p in (0, 1)]
        self.parity = 0

    @staticmethod
    def _initial(tensor, n_neurons: int) -> np.ndarray:
        array = np.zeros(tensor.shape_for(n_neurons), dtype=_STATE_DTYPES[tensor.dtype])
        if tensor.name == "missing_window":
            array.fill(1.0)  # every frame before the stream start is missing
        return array

    def _bind(self, engine: OnnxEngine, reads: list[np.ndarray], writes: list[np.ndarray]):
        binding = engine.session.io_binding()

        def bind(method, name, array):
            method(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

        bind(binding.bind_input, FRAME_INPUT, self.frame)
        bind(binding.bind_output, FORECAST_OUTPUT, self.forecast)
        bind(binding.bind_output, HIDDEN_OUTPUT, self.hidden)
        for tensor, read, write in zip(self.layout, reads, writes, strict=True):
            bind(binding.bind_input, tensor.name, read)
            bind(binding.bind_output, tensor.next_name, write)
        return binding

    def current_state(self) -> list[np.ndarray]:
        return self.buffers[self.parity]


class OnnxEngine(StepEngine):
    backend = "onnxruntime-cpu"

    def __init__(self, onnx_bytes: bytes, config: CalmConfig, neurons: NeuronRange, version: str, source: str,
                 n_parameters: int, *, threads: int = 1, selection: str = "", artifact: str | None = None,
                 in_place_caches: bool = True):
        import onnxruntime as ort

        super().__init__(config, version, source, n_parameters, selection=selection, artifact=artifact,
                         neurons=neurons)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        where = artifact or "in-memory ONNX export"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ArtifactError(where, f"ONNX Runtime cannot load it as an ONNX model ({type(exc).__name__}: "
                                       f"{str(exc).strip()[:300]})") from None
        self._check_graph_io(where)
        self.in_place = in_place_state_names(onnx_bytes, config) if in_place_caches else set()

    def _check_graph_io(self, where: str) -> None:
        """The graph must have exactly the step layout this rtcalm and the checkpoint's config imply."""
        got_inputs = [i.name for i in self.session.get_inputs()]
        got_outputs = [o.name for o in self.session.get_outputs()]
        if got_inputs != input_names(self.config) or got_outputs != output_names(self.config):
            raise ArtifactError(where, f"graph inputs {got_inputs} / outputs {got_outputs} are not the step layout "
                                       f"of this model ({input_names(self.config)} / {output_names(self.config)})")
        for node in self.session.get_inputs():
            if _NUMPY_DTYPES.get(node.type) is None:
                raise ArtifactError(where, f"graph input {node.name!r} has type {node.type}")

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads,
                "in_place_caches": sorted(self.in_place)}

    def new_stream(self, n_neurons: int) -> _OrtStream:
        return _OrtStream(self, self._check_compiled_for(n_neurons, "this ONNX graph", "onnx"))

    def _advance(self, frame: np.ndarray, stream: _OrtStream) -> None:
        np.copyto(stream.frame, frame)
        self.session.run_with_iobinding(stream.bindings[stream.parity])
        stream.parity ^= 1
        stream.frames_seen += 1

    def _forecast(self, stream: _OrtStream) -> np.ndarray:
        return stream.forecast

    def _hidden(self, stream: _OrtStream) -> np.ndarray:
        return stream.hidden

    def load_state(self, stream: _OrtStream, arrays: list[np.ndarray]) -> None:
        """Overwrite the stream's current state with ``arrays`` (step-graph layout)."""
        for buffer, array in zip(stream.current_state(), arrays, strict=True):
            np.copyto(buffer, array)

    def state_arrays(self, stream: _OrtStream) -> list[np.ndarray]:
        return [a.copy() for a in stream.current_state()]
