"""The VQ tokenizer: shapes, EMA codebook, dead-code restarts, reconstruction on calcium-like traces."""

from __future__ import annotations

import math

import pytest
import torch

from rtcalm.model import TraceTokenizer, codebook_perplexity


def calcium_like_windows(n: int, window: int, seed: int = 0) -> torch.Tensor:
    """(n, 2*window) interleaved [value, missing] windows of z-scored spike-train-through-a-kernel traces."""
    g = torch.Generator().manual_seed(seed)
    length = n + window
    spikes = (torch.rand(8, length, generator=g) < 0.05).float() * (1 + torch.rand(8, length, generator=g))
    kernel = torch.exp(-torch.arange(30) / 8.0)
    trace = torch.nn.functional.conv1d(spikes[:, None], kernel.flip(0)[None, None], padding=29)[:, 0, :length]
    trace = trace + 0.1 * torch.randn(trace.shape, generator=g)
    trace = (trace - trace.mean(1, keepdim=True)) / trace.std(1, keepdim=True)
    values = trace.unfold(1, window, 1)[:, :n].reshape(-1, window)  # (8n, window)
    pick = torch.randperm(values.shape[0], generator=g)[:n]
    values = values[pick]
    return torch.stack([values, torch.zeros_like(values)], dim=-1).reshape(n, 2 * window)


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1.0 - float(((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def test_shapes():
    tok = TraceTokenizer(window_frames=6, codebook_size=32, code_dim=4, hidden=16)
    windows = torch.randn(3, 5, 12)
    codes = tok.encode(windows)
    assert codes.shape == (3, 5) and codes.dtype == torch.int64 and int(codes.max()) < 32
    assert tok.decode(codes).shape == (3, 5, 6)


def test_nearest_code_is_the_euclidean_argmin():
    tok = TraceTokenizer(window_frames=4, codebook_size=50, code_dim=3, hidden=8)
    tok.codebook.normal_()
    latent = torch.randn(200, 3)
    expected = torch.cdist(latent, tok.codebook).argmin(dim=1)
    assert torch.equal(tok.nearest_codes(latent), expected)


def test_perplexity():
    assert codebook_perplexity(torch.zeros(100, dtype=torch.long), 256) == pytest.approx(1.0)
    assert codebook_perplexity(torch.arange(256).repeat(3), 256) == pytest.approx(256.0)
    assert codebook_perplexity(torch.tensor([0, 1]), 8) == pytest.approx(2.0)


def test_ema_moves_codes_to_the_mean_of_their_assignments():
    tok = TraceTokenizer(window_frames=2, codebook_size=2, code_dim=2, hidden=4, ema_decay=0.0,
                         dead_code_threshold=0.0)
    tok.initialised.fill_(True)
    tok.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    latent = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    tok._ema_update(latent, tok.nearest_codes(latent))
    assert torch.allclose(tok.codebook, torch.tensor([[0.5, 0.5], [9.0, 9.0]]), atol=1e-4)


def test_dead_codes_are_restarted_onto_data():
    tok = TraceTokenizer(window_frames=2, codebook_size=4, code_dim=2, hidden=4, ema_decay=0.5,
                         dead_code_threshold=1.0)
    tok.initialised.fill_(True)
    tok.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    tok.ema_code_sum.copy_(tok.codebook)
    latent = torch.randn(64, 2) * 0.1  # all near code 0: codes 1-3 get nothing
    for _ in range(3):
        tok._ema_update(latent, tok.nearest_codes(latent))
    assert float(tok.codebook[1:].abs().max()) < 1.0  # moved from 100..300 onto the data


def test_training_reconstructs_calcium_traces_and_uses_the_codebook():
    torch.manual_seed(0)
    window = 6
    train = calcium_like_windows(4096, window, seed=0)
    test = calcium_like_windows(2048, window, seed=1)
    tok = TraceTokenizer(window_frames=window, codebook_size=64, code_dim=4, hidden=32)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    tok.train()
    for _ in range(300):
        batch = train[torch.randint(0, train.shape[0], (512,))]
        recon, _, commitment = tok(batch)
        loss = torch.nn.functional.mse_loss(recon, batch[:, 0::2]) + commitment
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        codes = tok.encode(test)
        r2 = r_squared(tok.decode(codes), test[:, 0::2])
    perplexity = codebook_perplexity(codes, 64)
    assert r2 > 0.8, r2
    assert perplexity > 16, perplexity  # no collapse onto a handful of codes
    assert math.isfinite(perplexity)
