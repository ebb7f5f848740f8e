"""Export the step graph (:class:`~rtcalm.engine.step_graph.StepGraph`) to ONNX.

The TorchScript-based exporter (``dynamo=False``) is used: it traces the graph once and records the
neuron count as a symbolic ``n_neurons`` axis, which is all this graph needs, and it has no trouble with
the integer position input. The result is a self-contained ONNX file (the weights are a few hundred kB,
no external data).
"""

from __future__ import annotations

import io
import warnings

import torch

from rtcalm.engine.artifact import OPSET, NeuronRange
from rtcalm.engine.step_graph import (
    FORECAST_OUTPUT,
    FRAME_INPUT,
    HIDDEN_OUTPUT,
    StepGraph,
    initial_state,
    input_names,
    output_names,
    state_layout,
)
from rtcalm.model.calm import Calm

NEURON_AXIS = "n_neurons"


def dynamic_axes(model: Calm) -> dict[str, dict[int, str]]:
    """Every graph input and output whose first axis is the neuron axis."""
    names = [FRAME_INPUT, FORECAST_OUTPUT, HIDDEN_OUTPUT]
    for tensor in state_layout(model.config):
        if tensor.shape[0] is None:
            names += [tensor.name, tensor.next_name]
    return {name: {0: NEURON_AXIS} for name in names}


def export_onnx(model: Calm, neurons: NeuronRange, opset: int = OPSET) -> bytes:
    """The step graph of ``model`` as ONNX bytes: fixed shapes for a static range, else N dynamic."""
    was_training = model.training
    model.eval()
    try:
        graph = StepGraph(model).eval()
        # An example N of 1 would let the tracer treat the neuron axis as a broadcastable 1; any N > 1
        # traces the same graph.
        n_example = neurons.min if neurons.static else 3
        example = (torch.zeros(n_example), *initial_state(model.config, n_example))
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            # the legacy exporter announces its deprecation on every call; the message is not actionable here
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(graph, example, buffer, input_names=input_names(model.config),
                              output_names=output_names(model.config), opset_version=opset, dynamo=False,
                              dynamic_axes=None if neurons.static else dynamic_axes(model),
                              do_constant_folding=True)
        return buffer.getvalue()
    finally:
        model.train(was_training)
