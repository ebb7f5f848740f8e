"""Decoding heads: behaviour or stimulus read out every frame, per session, from what the model reads and
what it computes.

The backbone is permutation-equivariant and has no neuron identities, so *which* neuron carries which
stimulus preference is session-specific: a head is a per-session linear readout. One module per job
(forward-only modules apart from their streaming state, fitting, training and files, as torch_brain keeps
forward-only readouts apart and CEBRA's decoders keep fit and predict apart):

============== =============================================================================================
module         job
============== =============================================================================================
``config``     :class:`HeadConfig` (EMA head), :class:`TimeResolvedConfig` (time-resolved head; ``features``
               raw, backbone or both), :class:`HeadError`: what a head is, checked
``modules``    :class:`DecodingHead`, :class:`TimeResolvedHead`: forward-only torch modules (features ->
               logits), and the time-resolved head's per-frame features
``streaming``  :func:`open_stream`: a head serving one stream frame by frame in preallocated state (EMA
               pool, ring buffer of per-frame contributions); what the daemon runs
``kernels``    the numba kernels of that per-frame work (the ring's update, its readout, the softmax)
``fitting``    :func:`fit_head`, :func:`fit_time_resolved_head`: closed-form estimators folded into the
               head's tensors
``linear``     :func:`time_binned`, :func:`principal_projection`, :class:`ShrinkageLDA`: the linear pieces
               the time-resolved head is fitted with (decode-eval uses them too)
``averaging``  :func:`average_heads`: the mean of time-resolved heads' logits as one time-resolved head
``training``   :func:`finetune_head`: head and backbone trained together (gradient descent)
``files``      :func:`save_head`, :func:`load_head`, :func:`read_provenance`: the file format, versions 1-4
============== =============================================================================================

Choosing a head's kind and hyperparameters by inner cross-validation on features streamed through the
daemon's own path is :mod:`rtcalm.eval.served` (``rtcalm fit-head``).
"""

from rtcalm.model.heads.averaging import average_heads
from rtcalm.model.heads.config import FEATURE_KINDS, HeadConfig, HeadError, TimeResolvedConfig
from rtcalm.model.heads.files import load_head, read_provenance, save_head
from rtcalm.model.heads.fitting import fit_head, fit_time_resolved_head
from rtcalm.model.heads.modules import DecodingHead, TimeResolvedHead
from rtcalm.model.heads.streaming import EmaStream, RingStream, open_stream
from rtcalm.model.heads.training import finetune_head

__all__ = [
    "FEATURE_KINDS",
    "DecodingHead",
    "EmaStream",
    "HeadConfig",
    "HeadError",
    "RingStream",
    "TimeResolvedConfig",
    "TimeResolvedHead",
    "average_heads",
    "finetune_head",
    "fit_head",
    "fit_time_resolved_head",
    "load_head",
    "open_stream",
    "read_provenance",
    "save_head",
]
