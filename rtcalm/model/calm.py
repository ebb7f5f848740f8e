"""CalM for streaming inference: tokenizer + dual-axis transformer + forecast heads.

Input is a sequence of frames, each a vector of *per-neuron normalised* ΔF/F, ``(x - mean) / std`` with
the running per-neuron statistics the daemon keeps (``rtcalm.stats``). The model never normalises; its
caller does. NaN/Inf mark missing values (a neuron or a whole frame the daemon could not fill).

    frames (B, T, N)
      -> per (t, n): window of the last token_window_frames values (+ missing flags) of neuron n
      -> tokens mode:     code = tokenizer(window); x = code_embedding[code]
         continuous mode: x = Linear(window)                  (the "no tokenizer" ablation)
      -> x += missing_embedding * frame_missing [+ per-session neuron embedding]
      -> n_layers x Block:
           temporal attention: causal, per neuron, over the last attention_window_frames steps
           cross-neuron attention: within one time step, through n_latents learned latents (linear in N)
           MLP
      -> forecast_head: the next forecast_horizon_frames values of each neuron (normalised units)
         [+ autoregressive_skip: a linear map of the neuron's last autoregressive_order raw values,
            shared by all neurons; the trainer initialises it to the least-squares AR fit]
         next_code_head: logits over the codebook for the token of the next frame

Two ways to run the same function:

- ``Calm.forward(frames)``: a whole history at once (training, evaluation);
- ``Calm.step(frame, state)``: one new frame, reusing per-layer key/value ring buffers (streaming).

Both use the same sliding attention window, so ``step`` after t frames returns what ``forward`` returns at
position t, and the cost of a step does not depend on how long the stream has been running: the cache
holds exactly ``attention_window_frames`` keys per neuron and layer. The receptive field is
``n_layers * (attention_window_frames - 1) + token_window_frames`` frames.

Relative position along time is a learned bias per head and offset (query time - key time), not RoPE:
absolute-position angles in float32 lose precision after hours of streaming; offsets stay small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from rtcalm.model.encoder import TemporalEncoder, normalise_windows
from rtcalm.model.optim import configure_adamw
from rtcalm.model.tokenizer import TraceTokenizer

INPUT_MODES = ("tokens", "continuous", "encoder")


@dataclass
class CalmConfig:
    """Defaults are the shipped tokenized model's, ``tokens`` (configs/pretrain_tokens.json, CalM's design);
    the shipped ``default`` uses the encoder input mode (configs/pretrain_default.json)."""

    # tokenizer (stage 1)
    token_window_frames: int = 4  # frames per token window (stride 1: one token per frame and neuron)
    codebook_size: int = 256
    code_dim: int = 4
    tokenizer_hidden: int = 64
    # transformer (stage 2)
    # "tokens" (codes) | "continuous" (Linear on the raw window; ablation) | "encoder" (per-neuron MLP on
    # the window normalised by its own statistics, rtcalm.model.encoder; forecasts decoded by that MLP,
    # modulated by the transformer's population state through FiLM)
    input_mode: str = "tokens"
    encoder_hidden: int = 128  # encoder mode: width of the per-neuron temporal MLP
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 4  # query heads; keys/values have one head (multi-query attention)
    mlp_hidden: int = 128
    attention_window_frames: int = 32  # keys per neuron and layer that a query sees (incl. itself)
    n_latents: int = 8  # learned latents of the cross-neuron attention
    forecast_horizon_frames: int = 30
    # forecast += Linear(raw [value, missing] pairs of the last autoregressive_order frames -> horizon),
    # shared by all neurons: a linear autoregressive path around the transformer, so the forecast has the
    # exact recent values even when the transformer reads quantised tokens (the transformer learns the
    # correction). The trainer starts it at the least-squares AR fit (trainer.pretrain.fit_autoregressive_skip).
    autoregressive_skip: bool = True
    autoregressive_order: int = 16
    dropout: float = 0.1  # training only
    rate_hz: float = 30.0  # frame rate of the training data; the model is only valid at this rate

    def __post_init__(self):
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        for name in ("token_window_frames", "codebook_size", "code_dim", "tokenizer_hidden", "encoder_hidden", "d_model",
                     "n_layers", "n_heads", "mlp_hidden", "attention_window_frames", "n_latents",
                     "forecast_horizon_frames", "autoregressive_order"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.rate_hz, int | float) and math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {self.rate_hz!r}")
        self.dropout = float(self.dropout)
        self.rate_hz = float(self.rate_hz)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def raw_window_frames(self) -> int:
        """Frames of raw [value, missing] pairs kept per neuron: the tokenizer's window and the skip's."""
        return max(self.token_window_frames, self.autoregressive_order if self.autoregressive_skip else 0)

    @property
    def receptive_field_frames(self) -> int:
        """How many frames (including the current one) can influence an output."""
        return max(self.n_layers * (self.attention_window_frames - 1) + self.token_window_frames,
                   self.raw_window_frames)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CalmConfig:
        return config_from_dict(cls, d, "model config")


def config_from_dict(cls, d: dict, what: str):
    """The dataclass ``cls`` from the JSON object ``d`` (``what`` it is, for the errors). Strict: unknown
    keys are a ValueError (a config from a newer version must not load silently)."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown}")
    return cls(**d)


@dataclass
class CalmOutput:
    """Model outputs. Leading dims are (B, T) for ``forward`` and absent for ``step``."""

    forecast: torch.Tensor  # (..., N, forecast_horizon_frames): [..., k] predicts frame t + 1 + k, normalised
    codes: torch.Tensor | None  # (..., N) int64: the input token (code of the window ending at this
    #                             frame); None in continuous mode, where the model does not tokenize
    next_code_logits: torch.Tensor | None = None  # (..., N, codebook_size), only when asked for
    hidden: torch.Tensor | None = None  # (..., N, D): the normalised final residual stream, the population
    #                                     state that decoding heads read (rtcalm.model.heads)


# --- building blocks ------------------------------------------------------------------------------

def linear_into(out: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``F.linear(x, linear.weight, linear.bias)`` for 2-D x, written into the preallocated ``out``."""
    if linear.bias is None:
        return torch.mm(x, linear.weight.t(), out=out)
    return torch.addmm(linear.bias, x, linear.weight.t(), out=out)


class TemporalAttention(nn.Module):
    """Causal self-attention along time, separately for every neuron, over the last
    ``attention_window_frames`` positions. Multi-query (Shazeer 2019): n_heads query heads share one
    key/value head, which makes the per-neuron KV cache n_heads times smaller and turns the streaming
    step into one batched matmul per neuron instead of one per (neuron, head)."""

    def __init__(self, config: CalmConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.window = config.n_heads, config.head_dim, config.attention_window_frames
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * self.head_dim)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # relative_bias[h, offset], offset = query time - key time in [0, window)
        self.relative_bias = nn.Parameter(torch.zeros(self.n_heads, self.window))
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def window_bias(self, n_frames: int) -> torch.Tensor:
        """(H, T, T) additive mask for a whole sequence: the relative bias inside the causal window,
        -inf outside it."""
        device = self.relative_bias.device
        offsets = torch.arange(n_frames, device=device)[:, None] - torch.arange(n_frames, device=device)[None, :]
        inside = (offsets >= 0) & (offsets < self.window)
        bias = self.relative_bias[:, offsets.clamp(0, self.window - 1)]  # (H, T, T)
        return bias.masked_fill(~inside, float("-inf"))

    def slot_bias_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias over ring-buffer slots for the streaming step, precomputed for every write slot.

        Returns (steady (W, H, W), warmup (W, H, W)): ``steady[w]`` is the (H, slots) bias when the
        newest key was written to slot w and the buffer is full; ``warmup[t]`` is the bias at stream
        position t < W (slot t newest, slots > t not yet written: -inf)."""
        W = self.window
        slot = torch.arange(W, device=self.relative_bias.device)
        offset = (slot[:, None] - slot[None, :]) % W  # [newest slot, slot] -> age of that slot's key
        steady = self.relative_bias[:, offset].permute(1, 0, 2).contiguous()  # (W, H, W)
        unwritten = slot[None, :] > slot[:, None]  # [t, slot]: slot not yet written at position t < W
        warmup = steady.masked_fill(unwritten[:, None, :], float("-inf"))
        return steady, warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, D) -> (B, T, N, D)."""
        B, T, N, D = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).split([D, hd, hd], dim=-1)  # (B, T, N, D), (B, T, N, hd), (B, T, N, hd)
        q = q.reshape(B, T, N, H, hd).permute(0, 2, 3, 1, 4).reshape(B * N, H, T, hd)
        k = k.permute(0, 2, 1, 3).reshape(B * N, 1, T, hd).expand(-1, H, -1, -1)  # one head shared by all
        v = v.permute(0, 2, 1, 3).reshape(B * N, 1, T, hd).expand(-1, H, -1, -1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.window_bias(T), scale=self.scale)  # (B*N, H, T, hd)
        y = y.reshape(B, N, H, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, N, D)
        return self.dropout(self.proj(y))

    def step(self, x: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, slot: int, bias: torch.Tensor,
             scratch: StepScratch) -> torch.Tensor:
        """One frame. x (N, D); keys_t (N, head_dim, W) and values (N, W, head_dim) are this layer's ring
        buffers (keys stored transposed so the scores are a single bmm); the new key/value go to ``slot``.
        bias (H, W) is the relative bias per slot (-inf for unwritten slots). Returns (N, D) in scratch."""
        N, D = x.shape
        qkv = linear_into(scratch.temporal_qkv, x, self.qkv)  # (N, D + 2 head_dim)
        q = qkv[:, :D].view(N, self.n_heads, self.head_dim)
        keys_t[:, :, slot].copy_(qkv[:, D:D + self.head_dim])
        values[:, slot, :].copy_(qkv[:, D + self.head_dim:])
        scores = torch.baddbmm(bias, q, keys_t, alpha=self.scale, out=scratch.scores)  # (N, H, W) = bias + scale q.k
        probs = torch.softmax(scores, dim=-1, out=scratch.probs)
        y = torch.bmm(probs, values, out=scratch.temporal_out)  # (N, H, head_dim)
        return linear_into(scratch.residual_update, y.view(N, D), self.proj)


class CrossNeuronAttention(nn.Module):
    """Attention across the neurons of one time step through ``n_latents`` learned latents (the induced
    set attention block of Lee et al. 2019, "Set Transformer"): the latents read all N neurons, then every
    neuron reads the latents. Cost O(N * n_latents) instead of O(N^2); permutation-equivariant in the
    neurons and blind to their identity, so any population size and any new session work.

    Multi-head attention with few latents is written with block-diagonal matrices instead of a head axis:
    a (H * L, D) matrix whose row (h, l) holds latent l's head-h vector in head h's columns and zeros
    elsewhere. Then every product is a plain matmul over the (..., N, D) activations (no head transposes,
    no copies), which is what makes the streaming step fast on a CPU; the extra zeros cost H x a few
    thousand multiply-adds per neuron."""

    def __init__(self, config: CalmConfig):
        super().__init__()
        D, H, L = config.d_model, config.n_heads, config.n_latents
        self.n_heads, self.n_latents, self.d_model = H, L, D
        self.latents = nn.Parameter(torch.randn(L, D) * 0.02)  # (L, D)
        self.latent_query = nn.Linear(D, D)
        # From each (already normalised) neuron token: key and value for the latents to read, and the
        # neuron's query for reading the latents back; fused into one matmul.
        self.neuron_kvq = nn.Linear(D, 3 * D)
        self.latent_proj = nn.Linear(D, D)
        self.latent_norm = nn.LayerNorm(D)
        self.latent_kv = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(D, D)
        self.dropout = nn.Dropout(config.dropout)
        self.scale = 1.0 / math.sqrt(config.head_dim)
        head_of_column = torch.arange(D) // config.head_dim
        # head_mask[h, 0, d] = 1 where column d belongs to head h
        self.register_buffer("head_mask", (head_of_column[None, None, :] == torch.arange(H)[:, None, None]).float(),
                             persistent=False)

    def block_diagonal(self, per_latent: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., H * L, D): row (h, l) keeps only head h's columns of row l."""
        return (per_latent.unsqueeze(-3) * self.head_mask).flatten(-3, -2)

    def forward(self, x: torch.Tensor, kvq_out: torch.Tensor | None = None,
                proj_out: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., N, D) -> (..., N, D). kvq_out (N, 3D) / proj_out (N, D): optional preallocated
        buffers for the two per-neuron linear layers (the streaming step passes them; x is then 2-D)."""
        D, H, L = self.d_model, self.n_heads, self.n_latents
        kvq = self.neuron_kvq(x) if kvq_out is None else linear_into(kvq_out, x, self.neuron_kvq)
        key, value, query = kvq.split(D, dim=-1)  # each (..., N, D)
        # 1. latents read the neurons: weights normalised over the neurons
        # (the score scale is applied to the small latent-side matrices, not to the (N, H*L) scores)
        latent_query = self.block_diagonal(self.latent_query(self.latents) * self.scale)  # (H*L, D), no neuron input
        weights = torch.softmax(key @ latent_query.t(), dim=-2)  # (..., N, H*L)
        read = weights.transpose(-1, -2) @ value  # (..., H*L, D)
        summary = (read.unflatten(-2, (H, L)) * self.head_mask).sum(-3)  # (..., L, D): head h's columns from head h
        summary = self.latents + self.latent_proj(summary)
        # 2. every neuron reads the latents: weights normalised over the latents of each head
        latent_key, latent_value = self.latent_kv(self.latent_norm(summary)).split(D, dim=-1)  # (..., L, D)
        scores = self.block_diagonal(latent_key * self.scale) @ query.transpose(-1, -2)  # (..., H*L, N)
        # (..., H, L, N) normalised over L: a middle dim with a long last dim is torch's fast softmax
        weights = torch.softmax(scores.unflatten(-2, (H, L)), dim=-2).flatten(-3, -2)  # (..., H*L, N)
        y = weights.transpose(-1, -2) @ self.block_diagonal(latent_value)  # (..., N, D)
        if proj_out is None:
            return self.dropout(self.proj(y))
        return linear_into(proj_out, y, self.proj)


class MLP(nn.Module):
    def __init__(self, config: CalmConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.mlp_hidden)
        self.proj = nn.Linear(config.mlp_hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.fc(x))))

    def step(self, x: torch.Tensor, scratch: StepScratch) -> torch.Tensor:
        hidden = F.silu(linear_into(scratch.mlp_hidden, x, self.fc), inplace=True)  # (N, mlp_hidden)
        return linear_into(scratch.residual_update, hidden, self.proj)


class Block(nn.Module):
    """Pre-LayerNorm residual block: time, then neurons, then MLP."""

    def __init__(self, config: CalmConfig):
        super().__init__()
        self.time_norm = nn.LayerNorm(config.d_model)
        self.temporal = TemporalAttention(config)
        self.neuron_norm = nn.LayerNorm(config.d_model)
        self.cross = CrossNeuronAttention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, N, D)
        x = x + self.temporal(self.time_norm(x))
        x = x + self.cross(self.neuron_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, slot: int, bias: torch.Tensor,
             scratch: StepScratch) -> None:  # x (N, D), updated in place
        x.add_(self.temporal.step(self.time_norm(x), keys_t, values, slot, bias, scratch))
        x.add_(self.cross(self.neuron_norm(x), kvq_out=scratch.cross_kvq, proj_out=scratch.residual_update))
        x.add_(self.mlp.step(self.mlp_norm(x), scratch))


# --- streaming state --------------------------------------------------------------------------------

@dataclass
class StepScratch:
    """Per-stream work buffers reused by every step (and shared by the layers, which run one after the
    other), so a step does not allocate its large (N, ...) intermediates."""

    x: torch.Tensor  # (N, D) residual stream
    frame_pair: torch.Tensor  # (N, 2) [value, missing] of the new frame
    temporal_qkv: torch.Tensor  # (N, D + 2 head_dim)
    scores: torch.Tensor  # (N, H, W)
    probs: torch.Tensor  # (N, H, W)
    temporal_out: torch.Tensor  # (N, H, head_dim)
    cross_kvq: torch.Tensor  # (N, 3D)
    mlp_hidden: torch.Tensor  # (N, mlp_hidden)
    residual_update: torch.Tensor  # (N, D)


@dataclass
class StreamState:
    """Everything ``Calm.step`` needs besides the weights. Make one with ``Calm.new_state``; it belongs
    to the weights it was made with (it caches their position-bias tables), so make a new state after
    changing weights. ``step`` updates it in place and also returns it."""

    n_neurons: int
    frames_seen: int  # frames consumed so far = stream position of the next frame
    # Mirrored ring buffer of [value, missing] pairs, R = raw_window_frames: frame t is written at slots
    # t % R and t % R + R, so the last R frames in time order are always the slice [t % R + 1, t % R + 1 + R).
    token_window: torch.Tensor  # (N, 2 * raw_window_frames, 2)
    keys_t: list[torch.Tensor]  # per layer (N, head_dim, attention_window_frames), slot = t % window
    values: list[torch.Tensor]  # per layer (N, attention_window_frames, head_dim)
    steady_bias: list[torch.Tensor]  # per layer (W, H, W), see TemporalAttention.slot_bias_tables
    warmup_bias: list[torch.Tensor]  # per layer (W, H, W)
    neuron_embedding: torch.Tensor | None  # (N, D) per-session neuron embedding, or None
    scratch: StepScratch


# --- the model ----------------------------------------------------------------------------------------

class Calm(nn.Module):
    checkpoint_format = "rtcalm-calm"  # config.json's "format" (rtcalm.model.checkpoint)

    def __init__(self, config: CalmConfig):
        super().__init__()
        self.config = config
        D, E, Wt = config.d_model, config.encoder_hidden, config.token_window_frames
        if config.input_mode == "encoder":
            # the window normalised by its own statistics and its missing flags; nothing in the caller's
            # units, so a neuron's forecast follows any affine change of its normalisation exactly (the
            # daemon's running statistics drift; whole-recording training statistics would leak the future)
            self.temporal_encoder = TemporalEncoder(2 * Wt, E)
            self.encoder_projection = nn.Linear(E, D)
        else:
            self.tokenizer = TraceTokenizer(config.token_window_frames, config.codebook_size, config.code_dim,
                                            config.tokenizer_hidden)
        if config.input_mode == "tokens":
            self.code_embedding = nn.Embedding(config.codebook_size, D)
        elif config.input_mode == "continuous":
            self.window_projection = nn.Linear(2 * config.token_window_frames, D)
        self.missing_embedding = nn.Parameter(torch.zeros(D))  # added where the current frame is missing
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(D)
        if config.input_mode == "encoder":
            self.forecast_head = nn.Linear(E, config.forecast_horizon_frames)
            self.population_film = nn.Linear(D, 2 * E)  # (gamma, beta) per neuron from the population state
        else:
            self.forecast_head = nn.Linear(D, config.forecast_horizon_frames)
        if config.autoregressive_skip:
            self.forecast_skip = nn.Linear(2 * config.autoregressive_order, config.forecast_horizon_frames)
        if config.input_mode != "encoder":
            self.next_code_head = nn.Linear(D, config.codebook_size)
        self.apply(self._init_weights)
        if config.input_mode == "encoder":
            # start as the per-neuron MLP forecaster: the population pathway learns what it adds
            nn.init.zeros_(self.population_film.weight)
            nn.init.zeros_(self.population_film.bias)
            for linear in (self.temporal_encoder.fc_in, self.temporal_encoder.fc_residual, self.forecast_head):
                linear.reset_parameters()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW over the parameters that require gradients (the trainer freezes the tokenizer, and
        optionally the encoder mode's per-neuron path, first); weight decay on matrices only, and not on the
        autoregressive skip, which starts at a least-squares fit that decay would pull towards zero."""
        return configure_adamw(self, weight_decay, lr, betas, no_decay_prefixes=("forecast_skip.",))

    # --- shared pieces of forward and step ---
    def _check_neuron_embedding(self, neuron_embedding: torch.Tensor | None, n_neurons: int) -> None:
        if neuron_embedding is not None and (neuron_embedding.shape[-2:] != (n_neurons, self.config.d_model)):
            raise ValueError(f"neuron_embedding must be (N={n_neurons}, d_model={self.config.d_model}), "
                             f"got {tuple(neuron_embedding.shape)}")

    def embed(self, token_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple | None]:
        """token_input (..., N, 2 Wt) interleaved [value, missing] pairs, oldest first -> (x (..., N, D),
        codes (..., N) or None, encoded) where ``encoded`` = (encoder hidden, window mean, window std) in
        encoder mode (the forecast decoder needs them), else None. Shared by forward, step and StepGraph."""
        mode = self.config.input_mode
        if mode == "tokens":
            codes = self.tokenizer.encode(token_input)
            return self.code_embedding(codes), codes, None
        if mode == "continuous":
            return self.window_projection(token_input), None, None
        return self.embed_window(token_input[..., 0::2], token_input[..., 1::2])

    def embed_window(self, values: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                                  tuple | None]:
        """:meth:`embed` of the window given as its two halves, values (..., N, Wt) (0 where missing) and
        missing (..., N, Wt) 0/1, oldest first: the step graph keeps them apart, so that the encoder
        mode reads them without first interleaving and then splitting them again (two copies of the
        window per frame). The same numbers as ``embed`` of the interleaved pairs."""
        if self.config.input_mode != "encoder":
            return self.embed(torch.stack([values, missing], dim=-1).flatten(-2))
        normalised, mean, std = normalise_windows(values, missing)
        hidden = self.temporal_encoder(torch.cat([normalised, missing], dim=-1))  # (..., N, E)
        return self.encoder_projection(hidden), None, (hidden, mean, std)

    def readout(self, x: torch.Tensor, windows: torch.Tensor, codes: torch.Tensor | None,
              with_code_logits: bool, encoded: tuple | None = None) -> CalmOutput:
        """The output heads, shared by forward, step and the step graph. x (..., N, D) final residual
        stream, windows (..., N, 2 R) raw windows (R = raw_window_frames), encoded: :meth:`embed`'s third
        output."""
        h = self.final_norm(x)
        if encoded is None:
            forecast = self.forecast_head(h)
        else:  # encoder mode: the per-neuron MLP's forecast, FiLM-modulated by the population state
            hidden, mean, std = encoded
            gamma, beta = self.population_film(h).chunk(2, dim=-1)
            forecast = mean + std * self.forecast_head(hidden * (1.0 + gamma) + beta)
        if self.config.autoregressive_skip:
            forecast = forecast + self.forecast_skip(windows[..., -2 * self.config.autoregressive_order:])
        logits = self.next_code_head(h) if with_code_logits and self.config.input_mode != "encoder" else None
        return CalmOutput(forecast=forecast, codes=codes, next_code_logits=logits, hidden=h)

    # --- full pass ---
    def token_windows(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokenizer's input: :meth:`raw_windows` of token_window_frames frames."""
        return self.raw_windows(frames, self.config.token_window_frames)

    def raw_windows(self, frames: torch.Tensor, window_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, N) -> (windows (B, T, N, 2 Wt) interleaved [value, missing] oldest first,
        missing (B, T, N) float 0/1), Wt = window_frames (default raw_window_frames). Frames before the
        start of the history count as missing."""
        B, T, N = frames.shape
        Wt = self.config.raw_window_frames if window_frames is None else window_frames
        finite = torch.isfinite(frames)
        missing = (~finite).to(frames.dtype)
        pairs = torch.stack([torch.where(finite, frames, 0.0), missing], dim=-1)  # (B, T, N, 2)
        before_start = pairs.new_zeros(B, Wt - 1, N, 2)
        before_start[..., 1] = 1.0
        padded = torch.cat([before_start, pairs], dim=1)  # (B, T + Wt - 1, N, 2)
        windows = padded.unfold(1, Wt, 1)  # (B, T, N, 2, Wt)
        return windows.transpose(-1, -2).reshape(B, T, N, 2 * Wt), missing

    def forward(self, frames: torch.Tensor, neuron_embedding: torch.Tensor | None = None,
                with_code_logits: bool = False, window_only_frames: int = 0) -> CalmOutput:
        """frames (B, T, N) or (T, N), normalised, NaN = missing; frame 0 is the start of the stream.
        neuron_embedding: optional (N, D) or (B, N, D). Returns CalmOutput with leading dims (B, T)
        (or (T,) for unbatched input).

        ``window_only_frames`` = k: the first k frames only fill the raw windows of the later ones (the
        transformer starts at frame k, outputs have T - k positions). Training uses it to skip positions
        whose outputs are never scored and that no scored position attends to."""
        unbatched = frames.dim() == 2
        if unbatched:
            frames = frames.unsqueeze(0)
        if frames.dim() != 3:
            raise ValueError(f"frames must be (T, N) or (B, T, N), got shape {tuple(frames.shape)}")
        B, T, N = frames.shape
        self._check_neuron_embedding(neuron_embedding, N)
        windows, missing = self.raw_windows(frames)  # (B, T, N, 2 R)
        if window_only_frames:
            windows, missing = windows[:, window_only_frames:], missing[:, window_only_frames:]
        token_input = windows[..., -2 * self.config.token_window_frames:]  # (B, T, N, 2 Wt)
        x, codes, encoded = self.embed(token_input)  # (B, T, N, D)
        x = x + missing.unsqueeze(-1) * self.missing_embedding
        if neuron_embedding is not None:
            x = x + (neuron_embedding if neuron_embedding.dim() == 2 else neuron_embedding.unsqueeze(1))
        for block in self.blocks:
            x = block(x)
        out = self.readout(x, windows, codes, with_code_logits, encoded)
        if unbatched:
            out = CalmOutput(out.forecast[0], None if out.codes is None else out.codes[0],
                             None if out.next_code_logits is None else out.next_code_logits[0], out.hidden[0])
        return out

    # --- streaming ---
    @torch.inference_mode()
    def new_state(self, n_neurons: int, neuron_embedding: torch.Tensor | None = None) -> StreamState:
        """A fresh stream of ``n_neurons`` neurons (position 0, empty history)."""
        cfg = self.config
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be positive, got {n_neurons}")
        self._check_neuron_embedding(neuron_embedding, n_neurons)
        N, D, H, hd, W = n_neurons, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.attention_window_frames
        device, dtype = self.forecast_head.weight.device, self.forecast_head.weight.dtype

        def empty(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)

        token_window = empty(N, 2 * cfg.raw_window_frames, 2)
        token_window[..., 1] = 1.0  # before the first frame everything is missing (as in forward)
        tables = [block.temporal.slot_bias_tables() for block in self.blocks]
        scratch = StepScratch(
            x=empty(N, D), frame_pair=empty(N, 2), temporal_qkv=empty(N, D + 2 * hd), scores=empty(N, H, W),
            probs=empty(N, H, W), temporal_out=empty(N, H, hd), cross_kvq=empty(N, 3 * D),
            mlp_hidden=empty(N, cfg.mlp_hidden), residual_update=empty(N, D))
        return StreamState(
            n_neurons=N, frames_seen=0, token_window=token_window,
            keys_t=[empty(N, hd, W) for _ in self.blocks], values=[empty(N, W, hd) for _ in self.blocks],
            steady_bias=[steady for steady, _ in tables], warmup_bias=[warmup for _, warmup in tables],
            neuron_embedding=None if neuron_embedding is None else neuron_embedding.detach().to(device, dtype).clone(),
            scratch=scratch)

    @torch.inference_mode()
    def step(self, frame, state: StreamState, with_code_logits: bool = False) -> tuple[CalmOutput, StreamState]:
        """Consume one frame (N,) of normalised ΔF/F (NaN = missing) and return the outputs at this
        frame, equal to ``forward`` over the whole history so far at its last position."""
        if self.training:
            raise RuntimeError("Calm.step needs eval mode (dropout off): call model.eval()")
        cfg, s = self.config, state.scratch
        frame = torch.as_tensor(frame, dtype=s.x.dtype, device=s.x.device)
        if frame.shape != (state.n_neurons,):
            raise ValueError(f"frame must have shape ({state.n_neurons},), got {tuple(frame.shape)}")
        t = state.frames_seen
        R = cfg.raw_window_frames
        # 1. raw window: write the new [value, missing] pair into the mirrored ring buffer
        finite = torch.isfinite(frame)
        s.frame_pair[:, 0] = torch.where(finite, frame, 0.0)
        s.frame_pair[:, 1] = ~finite
        w = t % R
        state.token_window[:, w].copy_(s.frame_pair)
        state.token_window[:, w + R].copy_(s.frame_pair)
        window = state.token_window[:, w + 1:w + 1 + R].reshape(state.n_neurons, 2 * R)  # a view
        token_input = window[:, -2 * cfg.token_window_frames:]  # (N, 2 Wt), a view
        # 2. input embedding
        x, encoded = s.x, None
        if cfg.input_mode == "tokens":
            codes = self.tokenizer.encode(token_input)  # (N,)
            torch.index_select(self.code_embedding.weight, 0, codes, out=x)
        elif cfg.input_mode == "continuous":
            codes = None
            linear_into(x, token_input, self.window_projection)
        else:
            embedded, codes, encoded = self.embed(token_input)
            x.copy_(embedded)
        x.addcmul_(s.frame_pair[:, 1:2], self.missing_embedding)
        if state.neuron_embedding is not None:
            x.add_(state.neuron_embedding)
        # 3. blocks, each with its own ring buffer; all layers write the same slot
        slot = t % cfg.attention_window_frames
        for layer, block in enumerate(self.blocks):
            bias = state.warmup_bias[layer][t] if t < cfg.attention_window_frames else state.steady_bias[layer][slot]
            block.step(x, state.keys_t[layer], state.values[layer], slot, bias, s)
        state.frames_seen = t + 1
        return self.readout(x, window, codes, with_code_logits, encoded), state

    @torch.inference_mode()
    def step_many(self, frames, state: StreamState, with_code_logits: bool = False) -> tuple[CalmOutput, StreamState]:
        """Catch up on k frames (k, N) at once; equal to k calls of ``step``. Returns outputs with a
        leading k dim. (Implemented as k steps: a bounded window means the ring buffer cannot hold the
        keys of k > 1 new frames without overwriting ones the earlier of them still need.)"""
        frames = torch.as_tensor(frames, dtype=state.scratch.x.dtype, device=state.scratch.x.device)
        if frames.dim() != 2 or frames.shape[1] != state.n_neurons:
            raise ValueError(f"frames must have shape (k, {state.n_neurons}), got {tuple(frames.shape)}")
        k, N = frames.shape
        forecast = frames.new_empty(k, N, self.config.forecast_horizon_frames)
        codes = torch.empty(k, N, dtype=torch.long, device=frames.device) if self.config.input_mode == "tokens" else None
        logits = frames.new_empty(k, N, self.config.codebook_size) if with_code_logits else None
        for i in range(k):
            out, state = self.step(frames[i], state, with_code_logits)
            forecast[i] = out.forecast
            if codes is not None:
                codes[i] = out.codes
            if logits is not None:
                logits[i] = out.next_code_logits
        return CalmOutput(forecast, codes, logits), state
