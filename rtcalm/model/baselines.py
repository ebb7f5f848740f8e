"""Learned forecasting baselines: what a lab would deploy instead of CalM, so CalM must beat them.

- ``mlp``: a per-neuron MLP. Each neuron's last ``context_frames`` values, normalised with that window's
  own mean and std (:func:`rtcalm.model.encoder.normalise_windows`) -> :class:`TemporalEncoder`
  (Linear(W, E), GELU, residual Linear(E, E), GELU) -> Linear(E, horizon): all future frames at once,
  mapped back with the window's mean and std. Neurons never see each other.
- ``poco``: the same MLP whose first hidden layer is modulated per neuron by FiLM, h·(1+γ)+β
  (zero-initialised, so it starts as the MLP), with γ, β from a Perceiver-style population encoder:
  per-neuron history embeddings; ``n_latents`` learned latents cross-attend over the neurons, then
  self-attend; every neuron queries the latents (POCO, Duan et al. 2025, arXiv 2506.14957).

Both read per-neuron z-scored frames (T, N) like every forecaster of rtcalm.eval.forecast and return
z-scored forecasts; window normalisation makes them indifferent to how the caller z-scored.

Saved like a model (no pickle): a directory with ``config.json`` ({"format": "rtcalm-baseline",
"format_version": 1, "kind", "config", "metadata"}) and ``model.safetensors``. The trainer fits them on
the same recordings as the model (``python -m trainer baselines``); shipped ones live in
``rtcalm/models/baselines/<kind>/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtcalm.model.calm import config_from_dict
from rtcalm.model.checkpoint import (
    SHIPPED_MODELS_DIR,
    CheckpointError,
    _write_atomically,
    check_state_dict,
    read_config_json,
    read_weights,
)
from rtcalm.model.encoder import TemporalEncoder, normalise_windows
from rtcalm.model.optim import configure_adamw

BASELINE_FORMAT = "rtcalm-baseline"
BASELINE_FORMAT_VERSION = 1
SHIPPED_BASELINES_DIR = SHIPPED_MODELS_DIR / "baselines"
KINDS = ("mlp", "poco")


@dataclass
class BaselineConfig:
    kind: str = "mlp"  # "mlp" | "poco"
    context_frames: int = 64
    hidden: int = 128
    forecast_horizon_frames: int = 30
    # poco only
    d_population: int = 64
    n_latents: int = 8
    n_heads: int = 4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("context_frames", "hidden", "forecast_horizon_frames", "d_population", "n_latents", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_population % self.n_heads:
            raise ValueError(f"d_population ({self.d_population}) must be divisible by n_heads ({self.n_heads})")

    @classmethod
    def from_dict(cls, d: dict) -> BaselineConfig:
        return config_from_dict(cls, d, "baseline config")


class PopulationFiLM(nn.Module):
    """Perceiver-style population encoder -> per-neuron FiLM (γ, β) for the MLP's first hidden layer."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        D, H = config.d_population, config.n_heads
        self.embed = nn.Linear(config.context_frames + 2, D)  # normalised window + window mean, log std
        self.latents = nn.Parameter(torch.randn(config.n_latents, D) * 0.02)
        self.read = nn.MultiheadAttention(D, H, batch_first=True)
        self.latent_norm = nn.LayerNorm(D)
        self.process = nn.MultiheadAttention(D, H, batch_first=True)
        self.neuron_norm = nn.LayerNorm(D)
        self.query = nn.MultiheadAttention(D, H, batch_first=True)
        self.film = nn.Linear(D, 2 * config.hidden)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, N, W + 2) -> gamma, beta (B, N, hidden)."""
        tokens = self.embed(features)  # (B, N, D)
        latents = self.latents.expand(tokens.shape[0], -1, -1)  # (B, L, D)
        latents = latents + self.read(latents, tokens, tokens, need_weights=False)[0]
        normed = self.latent_norm(latents)
        latents = latents + self.process(normed, normed, normed, need_weights=False)[0]
        queries = self.neuron_norm(tokens)
        conditioned = self.query(queries, latents, latents, need_weights=False)[0]  # (B, N, D)
        return self.film(conditioned).chunk(2, dim=-1)


class BaselineForecaster(nn.Module):
    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.encoder = TemporalEncoder(config.context_frames, config.hidden)
        self.head = nn.Linear(config.hidden, config.forecast_horizon_frames)
        self.population = PopulationFiLM(config) if config.kind == "poco" else None

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows (B, N, W) z-scored, oldest first, NaN = missing -> forecasts (B, N, horizon), same units."""
        missing = (~torch.isfinite(windows)).to(windows.dtype)
        values = torch.where(missing > 0, 0.0, windows)
        normalised, mean, std = normalise_windows(values, missing)
        h = F.gelu(self.encoder.fc_in(normalised))  # (B, N, E)
        if self.population is not None:
            gamma, beta = self.population(torch.cat([normalised, mean, std.log()], dim=-1))
            h = h * (1.0 + gamma) + beta
        h = F.gelu(h + self.encoder.fc_residual(h))
        return mean + std * self.head(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        return configure_adamw(self, weight_decay, lr, betas)


def context_windows(z: np.ndarray, times: np.ndarray, context_frames: int) -> np.ndarray:
    """(K, N, context_frames) windows ending at each time (inclusive); frames before 0 are NaN."""
    offsets = np.arange(-context_frames + 1, 1)
    index = times[:, None] + offsets[None, :]  # (K, W)
    padded = np.concatenate([np.full((context_frames - 1, z.shape[1]), np.nan, dtype=np.float32), z])
    return padded[index + context_frames - 1].transpose(0, 2, 1)


def baseline_forecaster(model: BaselineForecaster, batch_times: int = 64):
    """``(z, test_times, context_frames) -> (K, N, horizon)`` for rtcalm.eval.forecast. The model reads
    ``min(context_frames, its own context)`` frames; older ones count as missing."""

    def forecast(z: np.ndarray, test_times: np.ndarray, context_frames: int) -> np.ndarray:
        model.eval()
        W = model.config.context_frames
        out = []
        with torch.inference_mode():
            for lo in range(0, test_times.size, batch_times):
                windows = context_windows(z, test_times[lo:lo + batch_times], W)
                if context_frames < W:
                    windows[:, :, :W - context_frames] = np.nan
                out.append(model(torch.from_numpy(windows)).numpy())
        return np.concatenate(out).astype(np.float32)

    return forecast


# --- files ------------------------------------------------------------------------------------------

def save_baseline(model: BaselineForecaster, directory, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _write_atomically(directory / "model.safetensors",
                      lambda p: save_file(tensors, str(p), metadata={"format": BASELINE_FORMAT}))
    document = {"format": BASELINE_FORMAT, "format_version": BASELINE_FORMAT_VERSION,
                "config": asdict(model.config), "metadata": metadata or {}}
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    _write_atomically(directory / "config.json", lambda p: p.write_text(text))
    return directory


def load_baseline(directory) -> BaselineForecaster:
    """Load a baseline directory; every problem raises CheckpointError naming the file."""
    directory = Path(directory)
    path = directory / "config.json"
    document = read_config_json(path, "a baseline")
    if document.get("format") != BASELINE_FORMAT:
        raise CheckpointError(path, f"not an rtcalm baseline (format must be {BASELINE_FORMAT!r})")
    if document.get("format_version") != BASELINE_FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {document.get('format_version')!r} is not supported")
    try:
        config = BaselineConfig.from_dict(document.get("config"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"bad config: {exc}") from None
    model = BaselineForecaster(config)
    weights_path = directory / "model.safetensors"
    tensors = read_weights(weights_path)
    check_state_dict(weights_path, model.state_dict(), tensors)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def shipped_baselines() -> dict[str, BaselineForecaster]:
    """The shipped learned baselines by kind (those present)."""
    return {kind: load_baseline(SHIPPED_BASELINES_DIR / kind) for kind in KINDS
            if (SHIPPED_BASELINES_DIR / kind / "config.json").is_file()}
