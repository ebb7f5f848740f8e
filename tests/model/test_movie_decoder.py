"""The movie decoder: shapes, multi-scale embedding injection, SSIM, losses, training, the trainer's
split and its Allen natural-movie path (with a small fake template)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from rtcalm.data import save_recording
from rtcalm.data.recording import TrialTable
from rtcalm.errors import RtcalmError
from rtcalm.model.movie_decoder import (
    ActivityWindowEncoder,
    ActivityWindowEncoderConfig,
    MovieLoss,
    MovieLossConfig,
    SkipUNetDecoder,
    SkipUNetDecoderConfig,
    fft_amplitude_loss,
    focal_frequency_loss,
    gaussian_window,
    ssim,
)
from rtcalm.sim.visual_cortex import VisualCortexConfig, make_movie, simulate_visual_cortex
from trainer import movie as movie_trainer

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


@pytest.fixture(scope="module")
def tiny_synthetic():
    return movie_trainer.synthetic_movie_data(seed=1, n_neurons=128, n_frames=2400, height=16, width=32)


def test_split_is_temporally_separated(tiny_synthetic):
    train, held_out = movie_trainer.split_samples(tiny_synthetic, window=8, lag=4, held_out_fraction=0.2,
                                                  gap_frames=60)
    end = tiny_synthetic.neural_frame + 4
    assert end[train].max() < end[held_out].min() - 7 - 60  # training windows end > gap before held-out ones start
    assert 0.15 < held_out.size / (train.size + held_out.size) < 0.25
    assert (end[train] - 7).min() >= 0 and end[held_out].max() < tiny_synthetic.dff.shape[0]


def test_tiny_training_run_improves(tiny_synthetic):
    cfg = movie_trainer.MovieTrainConfig(steps=60, batch_size=32, eval_every=60, lr=3e-3,
                                         encoder=dict(hidden_dim=64, embed_dim=32),
                                         decoder=dict(base_channels=32, min_channels=8, n_upsample=3))
    result = movie_trainer.train_movie_decoder(tiny_synthetic, cfg, log=lambda _msg: None)
    m = result["metrics"]
    assert m["final_loss"] < 0.8 * m["first_loss"]
    assert np.isfinite(m["heldout_ssim_model"]) and np.isfinite(m["heldout_ssim_mean_frame"])
    assert result["decoded"].shape == result["true"].shape == (m["n_heldout"], 16, 32)


# --- Allen natural-movie path (fake template) --------------------------------------------------------

@pytest.fixture(scope="module")
def fake_allen(tmp_path_factory):
    """A 40-frame 'natural movie' (24x48 uint8) shown 6 times with gray in between, the simulated
    cortex watching it, and an Allen-style stimulus table (plus rows of another stimulus)."""
    folder = tmp_path_factory.mktemp("allen")
    clip, _ = make_movie(VisualCortexConfig(n_frames=40, height=24, width=48, seed=9))
    template = np.round(clip * 255).astype(np.uint8)
    gray = np.full((20, 24, 48), 0.5, dtype=np.float32)
    shown, start_frame, movie_frame = [gray], [], []
    for _repeat in range(6):
        offset = sum(len(block) for block in shown)
        shown.append(template.astype(np.float32) / 255)
        shown.append(gray)
        start_frame += list(offset + np.arange(40))
        movie_frame += list(range(40))
    screen = np.concatenate(shown)
    recording = simulate_visual_cortex(screen, n_neurons=64, seed=9)
    n_other = 5
    recording.trials = TrialTable({
        "onset_s": np.r_[np.array(start_frame) / 30.0, np.arange(n_other)],
        "stimulus": np.array(["natural_movie_one"] * len(start_frame) + ["spontaneous"] * n_other),
        "start_frame": np.r_[start_frame, np.arange(n_other)].astype(np.float64),
        "end_frame": np.r_[np.array(start_frame) + 1, np.arange(n_other) + 1].astype(np.float64),
        "frame": np.r_[movie_frame, np.full(n_other, np.nan)],
    })
    recording_path = folder / "session.rtcalm.h5"
    save_recording(recording, recording_path)
    np.save(folder / "template.npy", template)
    with h5py.File(folder / "template.h5", "w") as f:
        f["natural_movie_one"] = template
        f["other"] = np.zeros(3)
    return {"folder": folder, "recording": recording, "template": template, "path": recording_path,
            "start_frame": np.array(start_frame), "movie_frame": np.array(movie_frame)}


def test_allen_template_loading_and_alignment(fake_allen):
    folder = fake_allen["folder"]
    from_npy = movie_trainer.load_template(folder / "template.npy")
    from_h5 = movie_trainer.load_template(folder / "template.h5")
    assert np.array_equal(from_npy, from_h5) and from_npy.dtype == np.float32
    assert np.allclose(from_npy * 255, fake_allen["template"])
    data = movie_trainer.allen_movie_data(fake_allen["recording"], from_npy, height=16, width=32)
    assert data.n_samples == 240  # the 'spontaneous' rows are ignored
    assert np.array_equal(data.neural_frame, fake_allen["start_frame"])
    assert np.array_equal(data.movie_frame, fake_allen["movie_frame"])
    assert data.frames.shape == (40, 16, 32)
    assert np.allclose(data.frames.mean(axis=(1, 2)), from_npy.mean(axis=(1, 2)), atol=0.01)
    # with an integer factor the area resize is exactly the block mean
    half = movie_trainer.allen_movie_data(fake_allen["recording"], from_npy, height=12, width=24)
    block_mean = from_npy.reshape(40, 12, 2, 24, 2).mean(axis=(2, 4))
    assert np.allclose(half.frames, block_mean, atol=1e-6)


def test_allen_bad_inputs_are_rejected(fake_allen, tmp_path):
    recording, template = fake_allen["recording"], fake_allen["template"]
    with pytest.raises(RtcalmError, match="frame indices"):
        movie_trainer.allen_movie_data(recording, template[:30])
    with pytest.raises(RtcalmError, match="grayscale"):
        movie_trainer.allen_movie_data(recording, template[0])
    bad = template.astype(np.float32)
    with pytest.raises(RtcalmError, match="\\[0, 1\\]"):
        movie_trainer.allen_movie_data(recording, bad)
    bad[0, 0, 0] = np.nan
    with pytest.raises(RtcalmError, match="NaN"):
        movie_trainer.allen_movie_data(recording, bad)
    with pytest.raises(RtcalmError, match="no natural_movie_three"):
        movie_trainer.allen_movie_data(recording, template, stimulus="natural_movie_three")
    with pytest.raises(RtcalmError, match="not found"):
        movie_trainer.load_template(tmp_path / "missing.npy")
    (tmp_path / "movie.txt").write_text("1 2 3")
    with pytest.raises(RtcalmError, match=".npy, .h5"):
        movie_trainer.load_template(tmp_path / "movie.txt")
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    with pytest.raises(RtcalmError, match="cannot read"):
        movie_trainer.load_template(tmp_path / "broken.npy")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = template
        f["b"] = template
    with pytest.raises(RtcalmError, match="template-key"):
        movie_trainer.load_template(tmp_path / "two.h5")
    assert movie_trainer.load_template(tmp_path / "two.h5", key="b").shape == template.shape
    with pytest.raises(RtcalmError, match="no dataset"):
        movie_trainer.load_template(tmp_path / "two.h5", key="c")


def test_allen_cli_trains_and_writes_outputs(fake_allen, tmp_path, capsys):
    out = tmp_path / "run"
    code = movie_trainer.main(["--allen-recording", str(fake_allen["path"]),
                               "--allen-template", str(fake_allen["folder"] / "template.npy"),
                               "--height", "16", "--width", "32", "--steps", "20", "--batch-size", "16",
                               "--out", str(out), "--threads", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_heldout"] > 0 and np.isfinite(metrics["heldout_ssim_model"])
    assert (out / "movie_decoding.png").stat().st_size > 1000
    model = movie_trainer.load_checkpoint(out / "movie_decoder.safetensors")
    assert model.decoder.cfg.height == 16 and model.encoder.cfg.n_neurons == 64
    assert "held-out SSIM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--allen-recording", "x.nwb"], "needs --allen-template"),
    (["--synthetic", "--steps", "0"], "--steps must be >= 1"),
    (["--synthetic", "--lag", "-1"], "--lag must be >= 0"),
    (["--synthetic", "--height", "24"], "divisible"),
])
def test_cli_rejects_bad_arguments(argv, message, capsys, tmp_path):
    assert movie_trainer.main([*argv, "--out", str(tmp_path), "--neurons", "8", "--frames", "300"]) == 2
    assert message in capsys.readouterr().err
