"""The movie decoder model: shapes, multi-scale embedding injection, SSIM, losses, learning, its optimizer
groups and its checkpoint (the trainer's side is tests/trainer/test_trainer_movie.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtcalm.model import CheckpointError, load_checkpoint, save_checkpoint
from rtcalm.model.movie_decoder import (
    ActivityWindowEncoder,
    ActivityWindowEncoderConfig,
    MovieDecoderConfig,
    MovieDecodingModel,
    MovieLoss,
    MovieLossConfig,
    SkipUNetDecoder,
    SkipUNetDecoderConfig,
    fft_amplitude_loss,
    focal_frequency_loss,
    gaussian_window,
    load_movie_decoder,
    ssim,
)

torch.set_num_threads(1)


def small_decoder(**overrides) -> SkipUNetDecoder:
    torch.manual_seed(0)
    cfg = dict(embed_dim=16, height=16, width=32, n_upsample=3, base_channels=32, min_channels=8)
    return SkipUNetDecoder(SkipUNetDecoderConfig(**{**cfg, **overrides}))


# --- shapes ------------------------------------------------------------------------------------------

def test_shapes():
    encoder = ActivityWindowEncoder(ActivityWindowEncoderConfig(n_neurons=40, window=6, embed_dim=16, hidden_dim=32))
    embedding = encoder(torch.randn(5, 6, 40))
    assert embedding.shape == (5, 16)
    decoder = small_decoder()
    frame = decoder(embedding)
    assert frame.shape == (5, 1, 16, 32) and frame.min() >= 0 and frame.max() <= 1
    assert decoder.cfg.stage_grids() == [(2, 4), (4, 8), (8, 16), (16, 32)]
    square = SkipUNetDecoder(SkipUNetDecoderConfig(embed_dim=8, height=64, width=64, n_upsample=5,
                                                   base_channels=32, min_channels=4))
    assert square.cfg.stage_grids()[:4] == [(2, 2), (4, 4), (8, 8), (16, 16)]
    assert square(torch.randn(2, 8)).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="embedding"):
        decoder(torch.randn(5, 17))
    with pytest.raises(ValueError, match="activity"):
        encoder(torch.randn(5, 7, 40))
    with pytest.raises(ValueError, match="divisible"):
        SkipUNetDecoderConfig(height=24, width=32, n_upsample=4).validate()


def test_untrained_decoder_starts_at_its_frame_prior():
    decoder = small_decoder()
    mean_frame = torch.rand(16, 32) * 0.6 + 0.2
    decoder.set_frame_prior(mean_frame)
    out = decoder(torch.randn(4, 16))[:, 0]
    assert (out - mean_frame).abs().mean() < 0.05


# --- multi-scale injection ---------------------------------------------------------------------------

def test_embedding_is_injected_at_every_scale():
    decoder = small_decoder().eval()
    captured = {}
    for s, injection in enumerate(decoder.injections):
        injection.register_forward_hook(lambda _m, _i, out, s=s: captured.__setitem__(s, out))
    a, b = torch.randn(2, 16), torch.randn(2, 16)
    decoder(a)
    maps_a = dict(captured)
    decoder(b)
    grids = decoder.cfg.stage_grids()
    assert len(maps_a) == decoder.cfg.n_upsample == 3
    for s in range(decoder.cfg.n_upsample):
        assert maps_a[s].shape[-2:] == grids[s]
        assert not torch.allclose(maps_a[s], captured[s])

    # Each scale alone carries the embedding to the output: cut the stem and every other injection
    # (zero weights and biases), and the output still changes with the embedding.
    for s in range(decoder.cfg.n_upsample):
        ablated = small_decoder().eval()
        with torch.no_grad():
            for layer in [ablated.stem] + [inj.proj for k, inj in enumerate(ablated.injections) if k != s]:
                layer.weight.zero_()
                layer.bias.zero_()
            difference = (ablated(a) - ablated(b)).abs().mean()
            ablated.injections[s].proj.weight.zero_()  # and with this scale cut too, nothing is left
            nothing = (ablated(a) - ablated(b)).abs().max()
        assert difference > 1e-4, f"scale {s} does not reach the output"
        assert nothing == 0


# --- SSIM --------------------------------------------------------------------------------------------

def reference_ssim_single_window(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two 11x11 images (one valid window), written out from Wang et al. (2004) in numpy."""
    coords = np.arange(11) - 5.0
    g = np.exp(-coords**2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_matches_the_formula():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.random((11, 11))
        y = np.clip(x + 0.2 * rng.standard_normal((11, 11)), 0, 1)
        got = float(ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None]))
        assert got == pytest.approx(reference_ssim_single_window(x, y), abs=1e-10)
    assert gaussian_window().sum() == pytest.approx(1.0)


def test_ssim_properties():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 64)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    constant = torch.full((2, 1, 16, 16), 0.3)
    assert float(ssim(constant, constant)) == pytest.approx(1.0, abs=1e-6)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(x, y)) == pytest.approx(float(ssim(y, x)), abs=1e-6)  # symmetric
    values = [float(ssim(x, (x + sigma * torch.randn_like(x)).clamp(0, 1))) for sigma in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True)), values  # decreases with noise
    assert 1 > values[0] and values[-1] > -1
    per_image = ssim(x, y, reduction="none")
    assert per_image.shape == (4,) and float(per_image.mean()) == pytest.approx(float(ssim(x, y)), abs=1e-6)
    assert ssim(x[:, 0], y[:, 0]).shape == ()  # (B, H, W) is accepted too
    with pytest.raises(ValueError, match="smaller"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


# --- losses ------------------------------------------------------------------------------------------

def test_losses_are_finite_and_behave():
    torch.manual_seed(0)
    target = torch.rand(3, 1, 16, 32)
    pred = torch.rand(3, 1, 16, 32, requires_grad=True)
    loss_fn = MovieLoss(MovieLossConfig(focal_frequency=1.0, perceptual=0.5),
                        perceptual_fn=lambda a, b: ((a - b) ** 2).mean())
    total, parts = loss_fn(pred, target)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert set(parts) == {"l1", "fft", "ssim", "focal", "perceptual"}
    same, _ = loss_fn(target, target)
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    # the FFT amplitude term ignores where a pattern is (circular shift), the pixel terms do not
    shifted = torch.roll(target, shifts=(3, 5), dims=(2, 3))
    assert float(fft_amplitude_loss(shifted, target)) < 1e-5 < float((shifted - target).abs().mean())
    assert float(focal_frequency_loss(shifted, target)) > 0
    with pytest.raises(ValueError, match="perceptual_fn"):
        MovieLoss(MovieLossConfig(perceptual=1.0))


# --- training ----------------------------------------------------------------------------------------

def test_decoder_learns_to_map_embeddings_to_frames():
    torch.manual_seed(0)
    decoder = small_decoder()
    embeddings = torch.randn(8, 16)
    targets = torch.rand(8, 1, 16, 32)
    loss_fn = MovieLoss()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss, _ = loss_fn(decoder(embeddings), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- optimizer and checkpoint ------------------------------------------------------------------------

def small_model() -> MovieDecodingModel:
    torch.manual_seed(0)
    return MovieDecodingModel.from_config(MovieDecoderConfig(
        ActivityWindowEncoderConfig(n_neurons=12, window=4, hidden_dim=16, embed_dim=16),
        SkipUNetDecoderConfig(embed_dim=16, height=16, width=32, n_upsample=3, base_channels=32, min_channels=8)))


def test_weight_decay_on_matrices_and_kernels_only():
    model = small_model()
    decay, no_decay = model.configure_optimizers(0.05, 1e-3, (0.9, 0.999)).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "decoder.stem.weight" in decayed and "decoder.head.2.weight" in decayed  # a matrix, a conv kernel
    assert "decoder.frame_prior" not in decayed and "decoder.stem.bias" not in decayed
    assert not decayed & {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = small_model().eval()
    with torch.no_grad():
        model.decoder.frame_prior.normal_()
    directory = save_checkpoint(model, tmp_path / "movie", metadata={"note": "test"})
    document = json.loads((directory / "config.json").read_text())
    assert document["format"] == "rtcalm-movie-decoder" and document["metadata"] == {"note": "test"}
    loaded = load_movie_decoder(directory)
    assert loaded.config == model.config and not loaded.training
    activity = torch.randn(3, 4, 12)
    assert torch.equal(loaded(activity), model(activity))
    with pytest.raises(CheckpointError, match="expected 'rtcalm-calm'"):
        load_checkpoint(directory)  # a movie decoder is not a CalM model
    document["model_config"]["decoder"]["height"] = 20
    (directory / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="divisible"):
        load_movie_decoder(directory)
    document["model_config"]["decoder"]["height"] = 32  # valid, but not the weights' shape
    (directory / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="shape"):
        load_movie_decoder(directory)
    document["model_config"]["encoder"]["use_rope"] = True
    (directory / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="unknown encoder config keys"):
        load_movie_decoder(directory)
