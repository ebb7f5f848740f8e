"""POYO-CAP's movie decoder: neural embedding -> grayscale movie frame.

Three parts, each usable on its own:

- :class:`SkipUNetDecoder` — the decoder proper. It takes a neural embedding ``(B, E)`` (from any
  encoder: the small window encoder below, or later a pretrained CalM backbone's pooled latents) and
  produces a frame ``(B, 1, H, W)`` in [0, 1]. It is POYO-CAP's "skip-connection U-Net": a U-Net
  decoder path whose skip connections do not come from an image encoder (there is none) but from the
  neural embedding itself, projected by a linear layer into a feature map at every scale of the
  upsampling path (2x4, 4x8, 8x16, 16x32 for 32x64 frames; 2x2 ... 16x16 for square ones) and fused
  with the upsampled features by a 1x1 convolution. Re-injecting the embedding at every scale is what
  the paper's ablation says matters (U-Net without these skips: SSIM 0.466 vs 0.593).
- :class:`ActivityWindowEncoder` — a small encoder for the synthetic verification: the last ``window``
  frames of population ΔF/F ``(B, window, N)`` -> per-neuron learned temporal filters (shared across
  neurons; they can learn to deconvolve the calcium kernel) -> MLP across neurons -> ``(B, E)``.
  Neuron dropout during training, as POYO-CAP's unit dropout.
- :class:`MovieLoss` and :func:`ssim` — the reconstruction loss (L1 + FFT amplitude + SSIM, optional
  focal frequency and perceptual terms) and the SSIM metric, implemented here in torch.

Loss weights (:class:`MovieLossConfig`): POYO-CAP uses ``50 focal + 50 L1 + 50 FFT + 1 perceptual +
0.1 SSIM``. Here the defaults are ``1 L1 + 1 FFT + 1 (1 - SSIM)``, focal 0, perceptual 0: SSIM is the
metric we report, so it gets a weight comparable to the pixel terms (in the paper's mix it is 1/500 of
L1), and there are no pretrained image features to compute a perceptual loss with (none can be
downloaded here). ``MovieLoss(perceptual_fn=...)`` is the hook for one (e.g. VGG features), off by
default.

SSIM follows Wang et al. (2004) as implemented by scikit-image with ``gaussian_weights=True``:
an 11x11 gaussian window with sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with data range
``L = 1``, population (not sample) covariances, statistics over "valid" windows only (no padding), and
the mean over the SSIM map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtcalm.model.calm import config_from_dict
from rtcalm.model.checkpoint import CONFIG_FILE, CheckpointError, load_weights, read_checkpoint_document
from rtcalm.model.optim import configure_adamw

MOVIE_DECODER_FORMAT = "rtcalm-movie-decoder"  # config.json's "format" (rtcalm.model.checkpoint)

# --- configs -----------------------------------------------------------------------------------------


@dataclass
class ActivityWindowEncoderConfig:
    n_neurons: int
    window: int = 8  # frames of population activity per sample
    temporal_filters: int = 4  # learned temporal filters, shared by all neurons
    hidden_dim: int = 512
    embed_dim: int = 256  # E
    neuron_dropout: float = 0.1  # fraction of neurons silenced per sample during training
    dropout: float = 0.1


@dataclass
class SkipUNetDecoderConfig:
    embed_dim: int = 256  # E
    height: int = 32
    width: int = 64
    n_upsample: int = 4  # coarsest grid = (height, width) / 2**n_upsample
    base_channels: int = 128  # channels at the coarsest grid; halved at every upsampling ...
    min_channels: int = 16  # ... down to this
    inject_ratio: float = 0.5  # channels of each embedding projection, relative to its stage's channels
    dropout: float = 0.0

    def validate(self) -> None:
        scale = 2**self.n_upsample
        if self.n_upsample < 1 or self.height % scale or self.width % scale:
            raise ValueError(f"height and width ({self.height}x{self.width}) must be divisible by "
                             f"2**n_upsample = {scale}, with n_upsample >= 1")
        if self.embed_dim < 1 or self.min_channels < 1 or self.base_channels < self.min_channels:
            raise ValueError("need embed_dim >= 1 and base_channels >= min_channels >= 1")
        if not 0 < self.inject_ratio <= 4:
            raise ValueError("inject_ratio must be in (0, 4]")

    def stage_channels(self) -> list[int]:
        """Channels at each grid, coarsest first (n_upsample + 1 entries; the last is full resolution)."""
        return [max(self.min_channels, self.base_channels >> s) for s in range(self.n_upsample + 1)]

    def stage_grids(self) -> list[tuple[int, int]]:
        scale = 2**self.n_upsample
        return [(self.height // scale << s, self.width // scale << s) for s in range(self.n_upsample + 1)]


@dataclass
class MovieDecoderConfig:
    """A checkpointed :class:`MovieDecodingModel`: the window encoder's and the decoder's configs."""

    encoder: ActivityWindowEncoderConfig
    decoder: SkipUNetDecoderConfig

    def to_dict(self) -> dict:
        return {"encoder": asdict(self.encoder), "decoder": asdict(self.decoder)}

    @classmethod
    def from_dict(cls, d: dict) -> MovieDecoderConfig:
        if not isinstance(d, dict) or set(d) != {"encoder", "decoder"}:
            raise ValueError("movie decoder config must be a JSON object with exactly 'encoder' and 'decoder'")
        return cls(config_from_dict(ActivityWindowEncoderConfig, d["encoder"], "encoder config"),
                   config_from_dict(SkipUNetDecoderConfig, d["decoder"], "decoder config"))


@dataclass
class MovieLossConfig:
    l1: float = 1.0
    fft: float = 1.0  # L1 between the amplitude spectra (orthonormal 2-D FFT)
    ssim: float = 1.0  # weight of (1 - SSIM)
    focal_frequency: float = 0.0  # Jiang et al. (2021), optional
    focal_alpha: float = 1.0
    perceptual: float = 0.0  # needs perceptual_fn; off: no pretrained features here


# --- SSIM and losses ---------------------------------------------------------------------------------


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 2-D gaussian window ``(1, 1, size, size)``."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of grayscale images ``(B, 1, H, W)`` or ``(B, H, W)`` (see the module
    docstring for the exact definition). ``reduction="none"`` gives one value per image ``(B,)``;
    ``"mean"`` their mean. Differentiable, so ``1 - ssim`` is a loss."""
    if x.shape != y.shape:
        raise ValueError(f"ssim needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[:, None], y[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim expects (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the {window_size}x{window_size} window")
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def local_mean(img):  # valid windows only, as in Wang et al. and scikit-image
        return F.conv2d(img, window)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_image = ssim_map.flatten(1).mean(dim=1)  # (B,)
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def fft_amplitude_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the amplitude spectra (orthonormal real 2-D FFT over H, W). Unlike a
    pixel loss it does not punish a texture at a slightly wrong position, so it counteracts the blur
    that pixel losses alone produce under uncertainty."""
    amp_pred = torch.fft.rfft2(pred, norm="ortho").abs()
    amp_target = torch.fft.rfft2(target, norm="ortho").abs()
    return (amp_pred - amp_target).abs().mean()


def focal_frequency_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021): squared spectral distance, each frequency weighted
    by its own (detached) distance ** alpha, normalised to [0, 1] per image, so the frequencies the model
    gets most wrong dominate."""
    diff = torch.fft.fft2(pred, norm="ortho") - torch.fft.fft2(target, norm="ortho")
    distance = diff.real**2 + diff.imag**2  # (B, C, H, W)
    weight = distance.detach().sqrt() ** alpha
    weight = weight / weight.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (weight.dim() - 1)))
    return (weight * distance).mean()


class MovieLoss(nn.Module):
    """Weighted sum of the movie reconstruction terms. ``forward`` returns ``(total, parts)`` where
    ``parts`` maps each active term's name to its (unweighted) value, detached."""

    def __init__(self, cfg: MovieLossConfig | None = None,
                 perceptual_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.cfg = cfg or MovieLossConfig()
        if self.cfg.perceptual > 0 and perceptual_fn is None:
            raise ValueError("perceptual weight > 0 needs a perceptual_fn (pretrained image features); "
                             "none is built in because no pretrained weights are available here")
        self.perceptual_fn = perceptual_fn

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if cfg.l1:
            terms["l1"] = (cfg.l1, (pred - target).abs().mean())
        if cfg.fft:
            terms["fft"] = (cfg.fft, fft_amplitude_loss(pred, target))
        if cfg.ssim:
            terms["ssim"] = (cfg.ssim, 1.0 - ssim(pred, target))
        if cfg.focal_frequency:
            terms["focal"] = (cfg.focal_frequency, focal_frequency_loss(pred, target, cfg.focal_alpha))
        if cfg.perceptual:
            terms["perceptual"] = (cfg.perceptual, self.perceptual_fn(pred, target))
        total = sum(weight * value for weight, value in terms.values())
        return total, {name: float(value.detach()) for name, (_, value) in terms.items()}


# --- the neural encoder ------------------------------------------------------------------------------


class ActivityWindowEncoder(nn.Module):
    """Population activity window ``(B, window, N)`` ΔF/F -> embedding ``(B, E)``.

    The input is z-scored per neuron with the ``neuron_mean``/``neuron_std`` buffers (set them from the
    training data with :meth:`set_normalization`), so the module takes raw ΔF/F at inference."""

    def __init__(self, cfg: ActivityWindowEncoderConfig):
        super().__init__()
        if cfg.n_neurons < 1 or cfg.window < 1 or cfg.temporal_filters < 1:
            raise ValueError("need n_neurons, window and temporal_filters >= 1")
        if not 0 <= cfg.neuron_dropout < 1:
            raise ValueError("neuron_dropout must be in [0, 1)")
        self.cfg = cfg
        self.register_buffer("neuron_mean", torch.zeros(cfg.n_neurons))
        self.register_buffer("neuron_std", torch.ones(cfg.n_neurons))
        self.temporal = nn.Linear(cfg.window, cfg.temporal_filters)  # shared over neurons
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_neurons * cfg.temporal_filters, cfg.hidden_dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.embed_dim),
        )
        self.norm = nn.LayerNorm(cfg.embed_dim)

    @torch.no_grad()
    def set_normalization(self, mean, std) -> None:
        self.neuron_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.neuron_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, activity: torch.Tensor) -> torch.Tensor:
        batch, window, n_neurons = activity.shape  # (B, window, N)
        if (window, n_neurons) != (self.cfg.window, self.cfg.n_neurons):
            raise ValueError(f"expected activity (B, {self.cfg.window}, {self.cfg.n_neurons}), "
                             f"got {tuple(activity.shape)}")
        z = (activity - self.neuron_mean) / self.neuron_std  # (B, window, N)
        if self.training and self.cfg.neuron_dropout > 0:
            keep = 1.0 - self.cfg.neuron_dropout
            mask = torch.rand(batch, 1, n_neurons, device=z.device) < keep
            z = z * mask / keep
        features = self.temporal(z.transpose(1, 2))  # (B, N, temporal_filters)
        return self.norm(self.mlp(features.flatten(1)))  # (B, E)


# --- the decoder -------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """GroupNorm -> GELU -> 3x3 conv, twice, plus the input."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        groups = max(1, min(8, channels // 4))
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EmbeddingInjection(nn.Module):
    """Embedding ``(B, E)`` -> feature map ``(B, C_inject, h, w)`` at one scale: the U-Net's skip input."""

    def __init__(self, embed_dim: int, channels: int, grid: tuple[int, int]):
        super().__init__()
        self.channels, self.grid = channels, grid
        self.proj = nn.Linear(embed_dim, channels * grid[0] * grid[1])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.proj(embedding).view(-1, self.channels, *self.grid)


class SkipUNetDecoder(nn.Module):
    """Neural embedding ``(B, E)`` -> frame ``(B, 1, H, W)`` in [0, 1].

    Per stage s (coarsest first; ``C_s`` channels on grid ``(h_s, w_s)``)::

        x_s  = 1x1conv(concat(x_s, inject_s(embedding)))  # inject_s: (B, C_s*ratio, h_s, w_s)
        x_s  = ResidualBlock(x_s)
        x_s+1 = 3x3conv(upsample2x(x_s))                   # (B, C_s+1, 2h_s, 2w_s)

    starting from ``x_0 = stem(embedding)`` and ending with GroupNorm, GELU and a 3x3 conv to one
    channel at full resolution. The output is ``sigmoid(logits + frame_prior)``: ``frame_prior`` is a
    learnable per-pixel offset that the trainer initialises to the logit of the training mean frame,
    so an untrained decoder already outputs (about) the mean-frame baseline.
    """

    def __init__(self, cfg: SkipUNetDecoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        channels, grids = cfg.stage_channels(), cfg.stage_grids()
        c0, (h0, w0) = channels[0], grids[0]
        self.stem = nn.Linear(cfg.embed_dim, c0 * h0 * w0)
        self.injections = nn.ModuleList()
        self.fusions = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for s in range(cfg.n_upsample):
            inject_channels = max(1, round(channels[s] * cfg.inject_ratio))
            self.injections.append(EmbeddingInjection(cfg.embed_dim, inject_channels, grids[s]))
            self.fusions.append(nn.Conv2d(channels[s] + inject_channels, channels[s], kernel_size=1))
            self.blocks.append(ResidualBlock(channels[s], cfg.dropout))
            self.upsamples.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                nn.Conv2d(channels[s], channels[s + 1], 3, padding=1)))
        # no residual block at full resolution: it would cost as much as all coarser stages together
        self.head = nn.Sequential(nn.GroupNorm(max(1, min(8, channels[-1] // 4)), channels[-1]), nn.GELU(),
                                  nn.Conv2d(channels[-1], 1, 3, padding=1))
        self.frame_prior = nn.Parameter(torch.zeros(1, 1, cfg.height, cfg.width))
        with torch.no_grad():  # start close to frame_prior
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.zero_()

    @torch.no_grad()
    def set_frame_prior(self, mean_frame) -> None:
        """Initialise the output offset from a mean frame ``(H, W)`` in [0, 1]."""
        p = torch.as_tensor(mean_frame, dtype=torch.float32).clamp(0.01, 0.99)
        self.frame_prior.copy_(torch.log(p / (1 - p)).view_as(self.frame_prior))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dim() != 2 or embedding.shape[1] != self.cfg.embed_dim:
            raise ValueError(f"expected embedding (B, {self.cfg.embed_dim}), got {tuple(embedding.shape)}")
        c0, (h0, w0) = self.cfg.stage_channels()[0], self.cfg.stage_grids()[0]
        x = self.stem(embedding).view(-1, c0, h0, w0)  # (B, C_0, h_0, w_0)
        for inject, fuse, block, up in zip(self.injections, self.fusions, self.blocks, self.upsamples, strict=True):
            x = fuse(torch.cat([x, inject(embedding)], dim=1))  # (B, C_s, h_s, w_s)
            x = up(block(x))  # (B, C_s+1, 2 h_s, 2 w_s)
        return torch.sigmoid(self.head(x) + self.frame_prior)  # (B, 1, H, W)


class MovieDecodingModel(nn.Module):
    """Encoder + :class:`SkipUNetDecoder`. The encoder is any module mapping a batch to ``(B, E)``
    (here :class:`ActivityWindowEncoder`; a CalM backbone with pooled latents can take its place).
    With the window encoder it is saved like every rtcalm model (:func:`rtcalm.model.save_checkpoint`:
    ``config.json`` + ``model.safetensors``) and read back with :func:`load_movie_decoder`."""

    checkpoint_format = MOVIE_DECODER_FORMAT

    def __init__(self, encoder: nn.Module, decoder: SkipUNetDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def from_config(cls, config: MovieDecoderConfig) -> MovieDecodingModel:
        return cls(ActivityWindowEncoder(config.encoder), SkipUNetDecoder(config.decoder))

    @property
    def config(self) -> MovieDecoderConfig:
        return MovieDecoderConfig(self.encoder.cfg, self.decoder.cfg)

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        """Weight decay on weight matrices and kernels only: not on biases, norms or the frame prior."""
        return configure_adamw(self, weight_decay, lr, betas, no_decay_prefixes=("decoder.frame_prior",))

    def forward(self, activity: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(activity))  # (B, 1, H, W)


def load_movie_decoder(directory) -> MovieDecodingModel:
    """A movie decoder checkpoint directory -> the model in eval mode; every problem with it raises
    :class:`rtcalm.model.CheckpointError` naming the file."""
    config, _ = read_checkpoint_document(directory, MOVIE_DECODER_FORMAT, MovieDecoderConfig)
    try:
        model = MovieDecodingModel.from_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{directory}/{CONFIG_FILE}", f"bad model_config: {exc}") from None
    return load_weights(model, directory).eval()
