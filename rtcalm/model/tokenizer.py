"""Trace tokenizer: short windows of ONE neuron's normalised ΔF/F trace <-> codes of one shared vocabulary.

Every (frame, neuron) gets a token: the window of the last ``window_frames`` frames of that neuron ending
at that frame (stride 1, so each new frame yields a fresh token for every neuron). The window is fed to
the encoder *interleaved with a missing-data flag per frame*, ``[x_0, m_0, x_1, m_1, ..., x_{W-1}, m_{W-1}]``
(oldest first, missing values replaced by 0), so gaps and the start of a stream are visible to the
encoder instead of looking like a flat trace at the mean.

    window (..., 2W) -> MLP encoder -> z (..., code_dim) -> nearest codebook entry -> code (...)
    code (...) -> codebook vector (..., code_dim) -> MLP decoder -> reconstructed window values (..., W)

The codebook is shared by all neurons of all sessions: a new neuron in a new mouse needs no new
parameters. Against codebook collapse (few codes used) we use the two standard VQ-VAE remedies:

- EMA codebook updates (van den Oord et al. 2017, appendix; Razavi et al. 2019): codes move to the running
  mean of the encoder outputs assigned to them instead of being trained by gradients, which keeps them
  near the data;
- dead-code restarts (Dhariwal et al. 2020, Jukebox): a code whose EMA usage falls below
  ``dead_code_threshold`` assignments per batch is moved onto a random encoder output of the current batch.

The codebook is initialised from the first training batch's encoder outputs (k-means++-free "data init").
The codebook and its EMA statistics are buffers, not parameters, so they are saved in the checkpoint and
a resumed run continues the same EMA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtcalm.model.optim import configure_adamw


class TraceTokenizer(nn.Module):
    def __init__(self, window_frames: int, codebook_size: int, code_dim: int, hidden: int,
                 ema_decay: float = 0.99, dead_code_threshold: float = 1.0, commitment_weight: float = 0.25):
        super().__init__()
        self.window_frames = window_frames
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.commitment_weight = commitment_weight
        # The encoder runs for every neuron at every frame in the streaming step, so it is kept to one
        # hidden layer; the decoder only runs in training and evaluation and gets two.
        self.encoder = nn.Sequential(
            nn.Linear(2 * window_frames, hidden), nn.SiLU(),
            nn.Linear(hidden, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, window_frames),
        )
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim) * 0.1)  # (K, code_dim)
        self.register_buffer("ema_cluster_size", torch.ones(codebook_size))  # (K,) running assignments per batch
        self.register_buffer("ema_code_sum", self.codebook.clone())  # (K, code_dim) running sum of assigned z
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        """AdamW over the encoder and decoder (the codebook is a buffer, moved by EMA, not by gradients)."""
        return configure_adamw(self, weight_decay, lr, betas)

    # --- inference ------------------------------------------------------------------------------
    def encode_latent(self, window: torch.Tensor) -> torch.Tensor:
        """(..., 2W) interleaved window -> (..., code_dim) continuous encoder output."""
        return self.encoder(window)

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """(..., code_dim) -> (...,) int64 index of the nearest codebook entry (squared Euclidean)."""
        flat = latent.reshape(-1, self.code_dim)
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2; ||z||^2 is the same for every code, so it is dropped.
        distance = torch.addmm((self.codebook * self.codebook).sum(1), flat, self.codebook.t(), alpha=-2.0)
        return distance.argmin(dim=1).view(latent.shape[:-1])

    def encode(self, window: torch.Tensor) -> torch.Tensor:
        """(..., 2W) interleaved window -> (...,) codes."""
        return self.nearest_codes(self.encode_latent(window))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) codes -> (..., W) reconstructed window values (normalised units, oldest first)."""
        return self.decoder(F.embedding(codes, self.codebook))

    # --- training -------------------------------------------------------------------------------
    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass. window (B, 2W) -> (reconstruction (B, W), codes (B,), commitment loss ()).

        In training mode this also updates the codebook (EMA) and restarts dead codes; call it under a
        gradient-enabled context and add ``commitment loss`` to the reconstruction loss."""
        latent = self.encode_latent(window)  # (B, code_dim)
        if self.training and not bool(self.initialised):
            self._init_codebook_from(latent.detach())
        codes = self.nearest_codes(latent)
        quantised = F.embedding(codes, self.codebook)  # (B, code_dim)
        commitment = self.commitment_weight * F.mse_loss(latent, quantised.detach())
        if self.training:
            self._ema_update(latent.detach(), codes)
        # Straight-through estimator: the decoder sees the code vector, the encoder gets its gradient.
        quantised_st = latent + (quantised - latent).detach()
        return self.decoder(quantised_st), codes, commitment

    @torch.no_grad()
    def _init_codebook_from(self, latent: torch.Tensor) -> None:
        pick = torch.randint(0, latent.shape[0], (self.codebook_size,), device=latent.device)
        self.codebook.copy_(latent[pick])
        self.ema_code_sum.copy_(self.codebook)
        self.ema_cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, latent: torch.Tensor, codes: torch.Tensor) -> None:
        one_hot = F.one_hot(codes, self.codebook_size).to(latent.dtype)  # (B, K)
        counts = one_hot.sum(0)  # (K,)
        sums = one_hot.t() @ latent  # (K, code_dim)
        self.ema_cluster_size.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        self.ema_code_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + 1e-5) / (total + self.codebook_size * 1e-5) * total
        self.codebook.copy_(self.ema_code_sum / smoothed.unsqueeze(1))
        dead = self.ema_cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, latent.shape[0], (n_dead,), device=latent.device)
            self.codebook[dead] = latent[pick]
            self.ema_code_sum[dead] = latent[pick]
            self.ema_cluster_size[dead] = 1.0


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code usage histogram: 1 = collapse onto one code, codebook_size = uniform use."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())
