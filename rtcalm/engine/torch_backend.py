"""The torch backend: the reference ``Calm.step`` on the CPU or a CUDA GPU, and on CUDA optionally the
step graph captured as a CUDA graph.

- ``mode="eager"`` (default on the CPU): ``Calm.step`` with its in-place ring buffers. This is the
  reference every other backend is compared with, and what the daemon ran before backends existed.
- ``mode="graph"``: the pure step graph (:class:`~rtcalm.engine.step_graph.StepGraph`) over explicit
  state tensors owned by the stream, whose outputs are copied back into those tensors. On CUDA the whole
  step (graph + copies) is captured once per stream as a CUDA graph and replayed per frame: one launch
  instead of a hundred kernel launches from Python, and the state never leaves the GPU (only the frame
  goes in and the forecast comes out). On the CPU the same code runs without capture, which is how the
  tests cover it on machines without a GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from rtcalm.engine.base import StepEngine
from rtcalm.engine.step_graph import StepGraph, initial_state
from rtcalm.model.calm import Calm, StreamState

log = logging.getLogger("rtcalm.engine")


class _EagerStream:
    """A ``Calm.step`` stream and the outputs of its latest frame."""

    def __init__(self, state: StreamState):
        self.state = state
        self.n_neurons = state.n_neurons
        self.output = None

    @property
    def frames_seen(self) -> int:
        return self.state.frames_seen


class _GraphStream:
    """Explicit state tensors on the engine's device, plus (on CUDA) the captured step."""

    def __init__(self, engine: TorchEngine, n_neurons: int):
        config, device = engine.config, engine.device
        self.n_neurons = n_neurons
        self.frames_seen = 0
        self.state = initial_state(config, n_neurons, device)
        self.frame = torch.zeros(n_neurons, device=device)
        self.forecast = torch.zeros(n_neurons, config.forecast_horizon_frames, device=device)
        self.hidden = torch.zeros(n_neurons, config.d_model, device=device)
        self.graph = None
        if device.type == "cuda":
            # page-locked host buffers: the device-to-host copy of the forecast is a plain DMA
            self.host_forecast = torch.zeros(self.forecast.shape, pin_memory=True)
            self.host_hidden = torch.zeros(self.hidden.shape, pin_memory=True)
            if engine.cuda_graphs:
                self.graph = engine.capture(self)

    def run(self, step_graph: StepGraph) -> None:
        """One step in place: the pure graph, then its outputs copied into the stream's tensors (inside
        the CUDA graph when captured)."""
        outputs = step_graph(self.frame, *self.state)
        self.forecast.copy_(outputs[0])
        self.hidden.copy_(outputs[1])
        for buffer, new in zip(self.state, outputs[2:], strict=True):
            buffer.copy_(new)


class TorchEngine(StepEngine):
    def __init__(self, model: Calm, version: str, source: str = "", *, device: str | torch.device = "cpu",
                 mode: str | None = None, cuda_graphs: bool = True, selection: str = ""):
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {device}")
        mode = mode or ("graph" if device.type == "cuda" else "eager")
        if mode not in ("eager", "graph"):
            raise ValueError(f"mode must be 'eager' or 'graph', got {mode!r}")
        super().__init__(model.config, version, source, model.n_parameters(), selection=selection)
        self.device = device
        self.mode = mode
        self.cuda_graphs = cuda_graphs and device.type == "cuda" and mode == "graph"
        self.model = model.to(device).eval()
        self.step_graph = StepGraph(self.model).eval() if mode == "graph" else None
        self.backend = f"torch-{device.type}" + ("-cudagraph" if self.cuda_graphs else "")

    def describe(self) -> dict:
        return {**super().describe(), "device": str(self.device), "mode": self.mode,
                "cuda_graphs": self.cuda_graphs}

    def new_stream(self, n_neurons: int):
        n_neurons = self._check_neurons(n_neurons)
        if self.mode == "eager":
            return _EagerStream(self.model.new_state(n_neurons))
        with torch.inference_mode():
            return _GraphStream(self, n_neurons)

    # --- eager ---
    def _advance(self, frame: np.ndarray, stream) -> None:
        if self.mode == "eager":
            stream.output, _ = self.model.step(torch.from_numpy(frame), stream.state)
            return
        with torch.inference_mode():
            # a blocking copy from pageable memory: the caller may reuse ``frame`` as soon as we return
            stream.frame.copy_(torch.from_numpy(frame))
            if stream.graph is not None:
                stream.graph.replay()
            else:
                stream.run(self.step_graph)
        stream.frames_seen += 1

    def _forecast(self, stream) -> np.ndarray:
        if self.mode == "eager":
            return stream.output.forecast.cpu().numpy()
        return self._to_host(stream.forecast, stream, "host_forecast")

    def _hidden(self, stream) -> np.ndarray:
        if self.mode == "eager":
            return stream.output.hidden.cpu().numpy()
        return self._to_host(stream.hidden, stream, "host_hidden")

    def _to_host(self, tensor: torch.Tensor, stream: _GraphStream, host_name: str) -> np.ndarray:
        if self.device.type == "cpu":
            return tensor.numpy()
        host = getattr(stream, host_name)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy()

    # --- state access (validation, tests) ---
    def load_state(self, stream, arrays: list[np.ndarray]) -> None:
        """Overwrite a graph-mode stream's state with ``arrays`` in step-graph layout."""
        if self.mode != "graph":
            raise RuntimeError("load_state needs mode='graph' (eager streams hold a Calm StreamState)")
        with torch.inference_mode():
            for buffer, array in zip(stream.state, arrays, strict=True):
                buffer.copy_(torch.from_numpy(np.asarray(array)))

    # --- CUDA graphs ---
    def capture(self, stream: _GraphStream):
        """Capture ``stream.run`` as a CUDA graph; None (eager replay of the same code) if capture fails."""
        device = self.device
        try:
            # Warm-up on a side stream, as torch requires before capture: it lets cuBLAS/cuDNN pick kernels
            # and allocate workspaces. Only the pure graph runs, so the stream's state is not advanced.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.step_graph(stream.frame, *stream.state)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a model load in the daemon's background thread may use CUDA meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                stream.run(self.step_graph)
            return graph
        except RuntimeError as exc:
            log.warning("CUDA graph capture of the step failed (%s); running the step graph without capture", exc)
            return None
