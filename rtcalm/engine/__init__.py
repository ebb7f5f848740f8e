"""Step engines: the incremental CalM step on torch, ONNX Runtime or TensorRT behind one interface.

    from rtcalm.engine import load_engine
    engine = load_engine("default", backend="auto")      # auto | torch | onnx | tensorrt
    stream = engine.new_stream(n_neurons)
    forecast = engine.step(frames, stream)                # frames (k, N) float32 -> (N, horizon)
    engine.fold(frames, stream)                           # consume without reading outputs
    engine.describe()                                     # version, backend, why it was chosen, ...

Modules: ``base`` (the :class:`StepEngine` interface), ``step_graph`` (the step as a pure function of
explicit state tensors), ``export`` (ONNX export), ``artifact`` (compiled files and their sidecars),
``validate`` (agreement with the torch reference), ``torch_backend``, ``onnx_backend``,
``tensorrt_backend``, ``loading`` (backend selection and :func:`load_engine`). See docs/backends.md.
"""

from rtcalm.engine.artifact import ArtifactError, NeuronRange
from rtcalm.engine.base import StepEngine
from rtcalm.engine.loading import BACKENDS, BackendUnavailableError, load_engine, select_backend

__all__ = [
    "BACKENDS",
    "ArtifactError",
    "BackendUnavailableError",
    "NeuronRange",
    "StepEngine",
    "load_engine",
    "select_backend",
]
