"""The incremental CalM step as a pure function of explicit state tensors, for export and graph capture.

``Calm.step`` updates a :class:`~rtcalm.model.StreamState` in place and picks the ring-buffer slot and the
position-bias table with Python integers (``t % window``, ``t < window``). An exported graph (ONNX,
TensorRT) or a captured CUDA graph cannot branch on Python values that change every frame, so
:class:`StepGraph` expresses the same step with tensor ops only:

    forward(frame (N,), value_window (N, R), missing_window (N, R), position (1,) int32, keys_0, values_0,
            keys_1, ...)
        -> (forecast (N, horizon), hidden (N, d_model), value_window', missing_window', position',
            keys_0', values_0', ...)

and reuses the model's own modules (tokenizer, embeddings, LayerNorms, Linear layers, the cross-neuron
attention and MLP forward passes, the heads), so there is one copy of the math. Differences from
``Calm.step``, none of which changes a number:

- the raw window (R = raw_window_frames) is kept oldest-first and shifted by one frame per step
  (``Calm.step`` keeps a mirrored ring buffer of [value, missing] pairs and slices it with a Python
  offset), as two tensors, values and missing flags, not interleaved pairs: the encoder input mode
  reads the two halves, so interleaving them would only be undone by two strided copies of the window
  every frame (the other modes interleave the few frames they read). The windows hold the same values;
- the per-layer key/value ring buffers are ``keys (N, W, head_dim)`` and ``values (N, W, head_dim)``
  (slot = frame index mod W), keys not transposed as in ``Calm.step``'s ``keys_t (N, head_dim, W)``, and
  the new key/value is written with :class:`ScatterND` instead of an indexed in-place copy. With the slot
  as the middle axis a write is N contiguous rows of head_dim floats; into ``keys_t`` it would be
  N x head_dim scattered floats, which cost ONNX Runtime as much as a copy of the cache. The scores
  read the keys transposed, which ONNX Runtime folds into its matrix product (``FusedMatMul``, transB);
- ``position`` replaces the frame counter: it indexes the table ``[warm-up biases (W); steady biases (W)]``
  (``position = t`` while ``t < W``, else ``W + t % W``), so the slot is ``position`` or ``position - W``
  and the next position wraps from ``2W - 1`` back to ``W``. It stays below ``2W`` however long the stream
  runs, which keeps it an int32 and needs no modulo operator in the graph (older TensorRT parsers lack
  ONNX ``Mod``);
- "missing" is ``not |x| < inf`` (true for NaN and ±Inf, like ``~isfinite``) because ``IsInf`` is not in
  every TensorRT ONNX parser.

The outputs are new tensors; the engines keep two sets of state buffers and swap them every step
(ONNX Runtime, TensorRT) or copy the outputs back inside the captured graph (torch CUDA graphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rtcalm.model.calm import Calm, CalmConfig


@dataclass(frozen=True)
class StateTensor:
    """One state input of the step graph: its input name, the name of the updated output, and its shape
    for N neurons (``None`` stands for N)."""

    name: str
    next_name: str
    shape: tuple  # entries are ints or None (= n_neurons)
    dtype: torch.dtype

    def shape_for(self, n_neurons: int) -> tuple[int, ...]:
        return tuple(n_neurons if d is None else d for d in self.shape)


FRAME_INPUT = "frame"
FORECAST_OUTPUT = "forecast"
HIDDEN_OUTPUT = "hidden"  # (N, d_model) normalised final residual stream: what decoding heads read


def state_layout(config: CalmConfig) -> list[StateTensor]:
    """The state tensors in graph input order (after ``frame``); the updated ones follow ``forecast`` and
    ``hidden`` in the outputs, in the same order."""
    R, W, hd = config.raw_window_frames, config.attention_window_frames, config.head_dim
    layout = [StateTensor("value_window", "next_value_window", (None, R), torch.float32),
              StateTensor("missing_window", "next_missing_window", (None, R), torch.float32),
              StateTensor("position", "next_position", (1,), torch.int32)]
    for layer in range(config.n_layers):
        layout.append(StateTensor(f"keys_{layer}", f"next_keys_{layer}", (None, W, hd), torch.float32))
        layout.append(StateTensor(f"values_{layer}", f"next_values_{layer}", (None, W, hd), torch.float32))
    return layout


def input_names(config: CalmConfig) -> list[str]:
    return [FRAME_INPUT] + [s.name for s in state_layout(config)]


def output_names(config: CalmConfig) -> list[str]:
    return [FORECAST_OUTPUT, HIDDEN_OUTPUT] + [s.next_name for s in state_layout(config)]


def initial_state(config: CalmConfig, n_neurons: int, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """A fresh stream's state tensors in :func:`state_layout` order: empty history, every token-window
    frame missing (as before the first frame in ``Calm.forward``), position 0."""
    tensors = [torch.zeros(s.shape_for(n_neurons), dtype=s.dtype, device=device) for s in state_layout(config)]
    tensors[1].fill_(1.0)  # missing_window: the frames before the stream start are missing
    return tensors


class ScatterND(torch.autograd.Function):
    """``data`` with ``data[tuple(indices[..., k])] = updates``, exported as the ONNX ``ScatterND`` node.

    ``index_put`` would export to ScatterND too, but with a Shape of ``data`` beside it (a second consumer
    of the cache input, which rules out binding the cache in place), and ``scatter`` to ScatterElements,
    whose CPU kernel walks every element through a generic index loop (about 10% of the whole step at 512
    neurons in ONNX Runtime). ScatterND copies one contiguous slice per index row."""

    @staticmethod
    def forward(ctx, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        out = data.clone()
        out[indices.unbind(-1)] = updates
        return out

    @staticmethod
    def symbolic(g, data, indices, updates):
        return g.op("ScatterND", data, indices, updates)


class StepGraph(nn.Module):
    """``Calm.step`` as a pure function of (frame, state) -> (forecast, new state); see the module
    docstring. Holds a reference to ``model`` (not a copy), so its weights are the model's."""

    def __init__(self, model: Calm):
        super().__init__()
        if model.training:
            raise RuntimeError("StepGraph needs the model in eval mode (dropout off): call model.eval()")
        self.model = model
        config = model.config
        self.window = config.attention_window_frames
        tables = []
        for block in model.blocks:
            steady, warmup = block.temporal.slot_bias_tables()
            tables.append(torch.cat([warmup, steady]))  # (2W, H, W): row = position
        self.register_buffer("bias_tables", torch.stack(tables).detach(), persistent=False)  # (L, 2W, H, W)

    def forward(self, frame: torch.Tensor, value_window: torch.Tensor, missing_window: torch.Tensor,
                position: torch.Tensor, *keys_and_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model, config = self.model, self.model.config
        W, D, H, hd = self.window, config.d_model, config.n_heads, config.head_dim
        # 1. raw window: drop the oldest frame, append the new one
        finite = frame.abs() < float("inf")  # False for NaN and ±Inf
        missing = (~finite).to(frame.dtype)
        next_value_window = torch.cat([value_window[:, 1:], torch.where(finite, frame, 0.0).unsqueeze(1)], dim=1)
        next_missing_window = torch.cat([missing_window[:, 1:], missing.unsqueeze(1)], dim=1)  # (N, R) each
        Wt = config.token_window_frames
        # 2. input embedding
        x, codes, encoded = model.embed_window(next_value_window[:, -Wt:], next_missing_window[:, -Wt:])
        x = torch.addcmul(x, missing.unsqueeze(-1), model.missing_embedding)
        # 3. blocks; every layer writes the same ring slot and reads the bias row of this position
        slot = torch.where(position >= W, position - W, position).long()  # (1,) int64
        N = frame.shape[0]
        neuron = torch.arange(N, device=frame.device)
        ring_rows = torch.stack([neuron, slot.expand(N)], dim=-1)  # (N, 2): [n, slot] -> a row of hd floats
        next_keys_and_values = []
        for layer, block in enumerate(model.blocks):
            keys, values = keys_and_values[2 * layer], keys_and_values[2 * layer + 1]
            bias = self.bias_tables[layer].index_select(0, position).reshape(H, W)
            temporal = block.temporal
            qkv = temporal.qkv(block.time_norm(x))  # (N, D + 2 hd)
            q = qkv[:, :D].reshape(-1, H, hd)
            keys = ScatterND.apply(keys, ring_rows, qkv[:, D:D + hd])  # (N, W, hd)
            values = ScatterND.apply(values, ring_rows, qkv[:, D + hd:])  # (N, W, hd)
            scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=temporal.scale)  # (N, H, W)
            attended = torch.bmm(torch.softmax(scores, dim=-1), values)  # (N, H, hd)
            x = x + temporal.proj(attended.reshape(-1, D))
            x = x + block.cross(block.neuron_norm(x))
            x = x + block.mlp(block.mlp_norm(x))
            next_keys_and_values += [keys, values]
        skip_window = None
        if config.autoregressive_skip:  # interleaved [value, missing] pairs of the last `order` frames
            order = config.autoregressive_order
            skip_window = torch.stack([next_value_window[:, -order:], next_missing_window[:, -order:]], -1).flatten(-2)
        heads = model.readout(x, skip_window, codes, with_code_logits=False, encoded=encoded)
        next_position = torch.where(position + 1 >= 2 * W, torch.full_like(position, W), position + 1)
        return (heads.forecast, heads.hidden, next_value_window, next_missing_window, next_position,
                *next_keys_and_values)
