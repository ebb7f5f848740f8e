"""The CalM model core: tokenizer, dual-axis transformer, streaming step, checkpoint I/O.

Inputs are per-neuron normalised ΔF/F, ``(dff - running_mean) / running_std`` computed by the caller
(``rtcalm.stats`` keeps the running statistics); NaN marks a missing value. Forecasts come back in the same
normalised units: multiply by the std and add the mean to get ΔF/F.

    from rtcalm.model import load_model
    model = load_model("default")                 # or a checkpoint directory
    state = model.new_state(n_neurons)
    out, state = model.step(frame, state)         # frame (N,) -> out.forecast (N, forecast_horizon_frames)

See docs/model.md.
"""

from rtcalm.model.calibrate import calibrate_neuron_embeddings
from rtcalm.model.calm import Calm, CalmConfig, CalmOutput, StreamState
from rtcalm.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    read_checkpoint_config,
    resolve_model,
    save_checkpoint,
)
from rtcalm.model.tokenizer import TraceTokenizer, codebook_perplexity

__all__ = [
    "Calm",
    "CalmConfig",
    "CalmOutput",
    "CheckpointError",
    "StreamState",
    "TraceTokenizer",
    "calibrate_neuron_embeddings",
    "codebook_perplexity",
    "load_checkpoint",
    "load_model",
    "read_checkpoint_config",
    "resolve_model",
    "save_checkpoint",
]
