"""``python -m trainer movie`` (trainer/movie.py): the presentations read from the recording's stimulus table,
the temporally separated split, training in the trainer's loop (the loss falls; a micro-batched step is the
whole-batch step), the Allen natural-movie path with a small fake template, and the command line."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from rtcalm.data import read_movie_template, save_recording
from rtcalm.data.readers import checked_movie_template
from rtcalm.data.recording import TrialTable
from rtcalm.errors import RtcalmError
from rtcalm.model.movie_decoder import MovieLoss, load_movie_decoder
from rtcalm.sim.visual_cortex import VisualCortexConfig, make_movie, simulate_visual_cortex
from trainer import movie as movie_trainer
from trainer.__main__ import main as trainer_main
from trainer.distributed import Precision, Runtime, Sharding
from trainer.steps import movie_step

TINY_MODEL = dict(encoder=dict(hidden_dim=64, embed_dim=32), decoder=dict(base_channels=32, min_channels=8, n_upsample=3))


@pytest.fixture(scope="module")
def tiny_synthetic():
    return movie_trainer.synthetic_movie(seed=1, n_neurons=128, n_frames=2400, height=16, width=32)


def test_synthetic_presentations_are_one_per_imaging_frame(tiny_synthetic):
    recording, frames = tiny_synthetic
    neural_frame, movie_frame = movie_trainer.presentations(recording, frames.shape[0],
                                                            movie_trainer.SYNTHETIC_STIMULUS)
    assert frames.shape == (2400, 16, 32) and recording.n_frames == 2400
    assert np.array_equal(neural_frame, np.arange(2400)) and np.array_equal(movie_frame, np.arange(2400))


def test_split_is_temporally_separated(tiny_synthetic):
    recording, frames = tiny_synthetic
    neural_frame, _ = movie_trainer.presentations(recording, frames.shape[0], movie_trainer.SYNTHETIC_STIMULUS)
    train, held_out = movie_trainer.split_samples(neural_frame, recording.n_frames, window=8, lag=4,
                                                  held_out_fraction=0.2, gap_frames=60)
    end = neural_frame + 4
    assert end[train].max() < end[held_out].min() - 7 - 60  # training windows end > gap before held-out ones start
    assert 0.15 < held_out.size / (train.size + held_out.size) < 0.25
    assert (end[train] - 7).min() >= 0 and end[held_out].max() < recording.n_frames


def test_tiny_training_run_improves(tiny_synthetic, tmp_path):
    recording, frames = tiny_synthetic
    cfg = movie_trainer.MovieTrainConfig(steps=60, batch_size=32, eval_every=30, lr=3e-3, **TINY_MODEL)
    logged = []
    result = movie_trainer.train_movie_decoder(recording, frames, cfg, movie_trainer.SYNTHETIC_STIMULUS,
                                               log=logged.append, out_dir=tmp_path)
    m = result["metrics"]
    assert m["final_loss"] < 0.8 * m["first_loss"]
    assert np.isfinite(m["heldout_ssim_model"]) and np.isfinite(m["heldout_ssim_mean_frame"])
    assert result["decoded"].shape == result["true"].shape == (m["n_heldout"], 16, 32)
    assert sum("held-out SSIM" in line for line in logged) == 2  # steps 30 and 60
    with open(tmp_path / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60] and {r["stage"] for r in rows} == {"movie"}
    # step 10 took 0-based step 9: 3 steps into the cosine decay after 6 warm-up steps (10 % of 60)
    assert float(rows[0]["lr"]) == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 54)), rel=1e-5)


def test_a_step_in_micro_batches_is_the_whole_batch_step():
    """movie_step's share arithmetic: 2 micro-batches of 4 give the gradient of one batch of 8 (no dropout,
    so both see the same function; plain SGD, so the step is the gradient)."""
    recording, frames = movie_trainer.synthetic_movie(seed=2, n_neurons=16, n_frames=300, height=16, width=32)
    cfg = movie_trainer.MovieTrainConfig(encoder=dict(hidden_dim=16, embed_dim=16, dropout=0.0, neuron_dropout=0.0),
                                         decoder=TINY_MODEL["decoder"])
    dff, targets = torch.as_tensor(recording.dff), torch.as_tensor(frames)
    ends = torch.arange(cfg.window - 1, 280)

    def sample(indices):
        return movie_trainer.windows_ending_at(dff, ends[indices], cfg.window), targets[ends[indices]][:, None]

    def fresh_model():
        torch.manual_seed(0)
        return movie_trainer.build_model(16, 16, 32, cfg)

    weights = []
    for accumulation in (1, 2):
        model = fresh_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        runtime = Runtime()
        parts = movie_step(Sharding(runtime, accumulation), Precision("fp32", runtime.device), model, MovieLoss(),
                           optimizer, sample, len(ends), 8, torch.Generator().manual_seed(5))
        assert set(parts) == {"loss", "l1", "fft", "ssim"}
        weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    start = torch.cat([p.detach().reshape(-1) for p in fresh_model().parameters()])
    assert (weights[0] - start).abs().max() > 1e-3  # the step moved the weights ...
    assert torch.allclose(weights[0], weights[1], rtol=0, atol=1e-6)  # ... the same way


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
    from_npy = read_movie_template(folder / "template.npy")
    from_h5 = read_movie_template(folder / "template.h5")
    assert np.array_equal(from_npy, from_h5) and from_npy.dtype == np.float32
    assert np.allclose(from_npy * 255, fake_allen["template"])
    neural_frame, movie_frame = movie_trainer.presentations(fake_allen["recording"], 40, "natural_movie_one")
    assert neural_frame.size == 240  # the 'spontaneous' rows are ignored
    assert np.array_equal(neural_frame, fake_allen["start_frame"])
    assert np.array_equal(movie_frame, fake_allen["movie_frame"])
    frames = movie_trainer.resize_frames(from_npy, 16, 32)
    assert frames.shape == (40, 16, 32)
    assert np.allclose(frames.mean(axis=(1, 2)), from_npy.mean(axis=(1, 2)), atol=0.01)
    # with an integer factor the area resize is exactly the block mean
    block_mean = from_npy.reshape(40, 12, 2, 24, 2).mean(axis=(2, 4))
    assert np.allclose(movie_trainer.resize_frames(from_npy, 12, 24), block_mean, atol=1e-6)


def test_allen_bad_inputs_are_rejected(fake_allen, tmp_path):
    recording, template = fake_allen["recording"], fake_allen["template"]
    with pytest.raises(RtcalmError, match="frame indices"):
        movie_trainer.presentations(recording, 30, "natural_movie_one")
    with pytest.raises(RtcalmError, match="no natural_movie_three"):
        movie_trainer.presentations(recording, 40, "natural_movie_three")
    with pytest.raises(RtcalmError, match="grayscale"):
        checked_movie_template(template[0])
    bad = template.astype(np.float32)
    with pytest.raises(RtcalmError, match="\\[0, 1\\]"):
        checked_movie_template(bad)
    bad[0, 0, 0] = np.nan
    with pytest.raises(RtcalmError, match="NaN"):
        checked_movie_template(bad)
    with pytest.raises(RtcalmError, match="not found"):
        read_movie_template(tmp_path / "missing.npy")
    (tmp_path / "movie.txt").write_text("1 2 3")
    with pytest.raises(RtcalmError, match=".npy, .h5"):
        read_movie_template(tmp_path / "movie.txt")
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    with pytest.raises(RtcalmError, match="cannot read"):
        read_movie_template(tmp_path / "broken.npy")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = template
        f["b"] = template
    with pytest.raises(RtcalmError, match="template-key"):
        read_movie_template(tmp_path / "two.h5")
    assert read_movie_template(tmp_path / "two.h5", key="b").shape == template.shape
    with pytest.raises(RtcalmError, match="no dataset"):
        read_movie_template(tmp_path / "two.h5", key="c")


def test_allen_command_trains_and_writes_outputs(fake_allen, tmp_path, capsys):
    out = tmp_path / "run"
    code = trainer_main(["movie", "--allen-recording", str(fake_allen["path"]),
                         "--allen-template", str(fake_allen["folder"] / "template.npy"),
                         "--height", "16", "--width", "32", "--steps", "20", "--batch-size", "16",
                         "--out", str(out), "--threads", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_heldout"] > 0 and np.isfinite(metrics["heldout_ssim_model"])
    assert metrics["command"].startswith("python -m trainer movie --allen-recording")
    assert (out / "movie_decoding.png").stat().st_size > 1000
    assert (out / "steps.csv").read_text().splitlines()[-1].startswith("movie,20,")
    model = load_movie_decoder(out / "movie_decoder")
    assert model.decoder.cfg.height == 16 and model.encoder.cfg.n_neurons == 64
    config = json.loads((out / "movie_decoder" / "config.json").read_text())
    assert config["metadata"]["metrics"] == {k: metrics[k] for k in config["metadata"]["metrics"]}
    assert "held-out SSIM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--allen-recording", "x.nwb"], "--allen-recording needs --allen-template"),
    (["--synthetic", "--height", "24"], "divisible"),
])
def test_bad_settings_are_one_line_errors(argv, message, capsys, tmp_path):
    assert trainer_main(["movie", *argv, "--out", str(tmp_path), "--neurons", "8", "--frames", "300"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainer: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--synthetic", "--steps", "0"], "expected a positive integer"),
    (["--synthetic", "--lag", "-1"], "expected an integer >= 0"),
    (["--synthetic", "--window", "eight"], "expected a positive integer"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit):
        trainer_main(["movie", *argv])
    assert message in capsys.readouterr().err
