"""The learned forecasting baselines: known answers on synthetic data, context discipline, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtcalm.eval.forecast import copy_last
from rtcalm.model.baselines import (
    SHIPPED_BASELINES_DIR,
    BaselineConfig,
    BaselineForecaster,
    baseline_forecaster,
    context_windows,
    load_baseline,
    save_baseline,
    shipped_baselines,
)
from rtcalm.model.checkpoint import CheckpointError
from rtcalm.model.encoder import copy_last_ratio_loss

SMALL = dict(context_frames=16, hidden=32, forecast_horizon_frames=5, d_population=16, n_latents=4, n_heads=2)


def sinusoids(n_frames: int, n_neurons: int, seed: int) -> np.ndarray:
    """Per-neuron sinusoids (random period 10-30 frames, phase, amplitude, offset) plus a little noise:
    copy-last is poor at 5 frames ahead, and a per-neuron forecaster can learn the continuation."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None]
    period = rng.uniform(10, 30, n_neurons)
    phase = rng.uniform(0, 2 * np.pi, n_neurons)
    amplitude = rng.uniform(0.5, 3.0, n_neurons)
    offset = rng.normal(0, 2, n_neurons)
    x = offset + amplitude * np.sin(2 * np.pi * t / period + phase) + rng.normal(0, 0.05, (n_frames, n_neurons))
    return x.astype(np.float32)


def fit(model: BaselineForecaster, traces: np.ndarray, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.from_numpy(traces)
    W, H = model.config.context_frames, model.config.forecast_horizon_frames
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, z.shape[0] - W - H, (16,), generator=g)
        crops = torch.stack([z[s:s + W + H] for s in starts.tolist()]).transpose(1, 2)  # (B, N, W + H)
        windows, future = crops[..., :W], crops[..., W:]
        loss = copy_last_ratio_loss(model(windows), future, windows[..., -1], torch.ones_like(future, dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("kind", ["mlp", "poco"])
def test_learned_baseline_beats_copy_last_on_held_out_sinusoids(kind):
    torch.manual_seed(0)
    model = BaselineForecaster(BaselineConfig(kind=kind, **SMALL))
    fit(model, sinusoids(600, 24, seed=0), steps=300)
    test = sinusoids(300, 24, seed=1)  # other neurons: other periods, phases and scales
    times = np.arange(50, 290)
    forecast = baseline_forecaster(model)(test, times, 16)
    truth = np.stack([test[times + h] for h in range(1, 6)], axis=-1)
    model_mse = np.mean((forecast - truth) ** 2)
    copy_mse = np.mean((copy_last(test, times, 16, 5) - truth) ** 2)
    assert model_mse < 0.2 * copy_mse


def test_poco_starts_exactly_as_its_mlp():
    torch.manual_seed(0)
    poco = BaselineForecaster(BaselineConfig(kind="poco", **SMALL)).eval()
    mlp = BaselineForecaster(BaselineConfig(kind="mlp", **SMALL)).eval()
    mlp.load_state_dict({k: v for k, v in poco.state_dict().items() if not k.startswith("population.")})
    windows = torch.randn(3, 7, 16)
    with torch.no_grad():
        assert torch.allclose(poco(windows), mlp(windows))


def test_forecaster_reads_only_the_context_it_is_given():
    torch.manual_seed(0)
    model = BaselineForecaster(BaselineConfig(kind="mlp", **SMALL)).eval()
    z = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    times = np.array([40, 60, 99])
    reference = baseline_forecaster(model)(z, times, 8)
    changed = z.copy()
    changed[:33] = 100.0  # older than the 8-frame context of every test time
    changed[41:53] = -50.0  # the future of t = 40 and older than the context of t = 60
    assert np.array_equal(baseline_forecaster(model)(changed, times, 8), reference)
    changed[35] = 7.0  # inside the context of t = 40
    assert not np.allclose(baseline_forecaster(model)(changed, times, 8)[0], reference[0])
    windows = context_windows(z, np.array([2]), 5)
    assert np.isnan(windows[0, :, :2]).all() and np.allclose(windows[0, :, 2:], z[:3].T)


def test_round_trip_and_malformed_files(tmp_path):
    torch.manual_seed(0)
    model = BaselineForecaster(BaselineConfig(kind="poco", **SMALL)).eval()
    save_baseline(model, tmp_path / "ok", {"note": "test"})
    loaded = load_baseline(tmp_path / "ok")
    windows = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(loaded(windows), model(windows))

    def broken(name, edit):
        directory = tmp_path / name
        save_baseline(model, directory)
        edit(directory)
        with pytest.raises(CheckpointError) as info:
            load_baseline(directory)
        return str(info.value)

    assert "missing" in broken("no_config", lambda d: (d / "config.json").unlink())
    assert "not valid JSON" in broken("bad_json", lambda d: (d / "config.json").write_text("{"))
    assert "not an rtcalm baseline" in broken("wrong_format", lambda d: (d / "config.json").write_text(
        json.dumps({"format": "rtcalm-calm"})))

    def edit_config(d, **changes):
        document = json.loads((d / "config.json").read_text())
        document["config"].update(changes)
        (d / "config.json").write_text(json.dumps(document))

    assert "unknown baseline config keys" in broken("unknown_key", lambda d: edit_config(d, colour="red"))
    assert "kind must be one of" in broken("bad_kind", lambda d: edit_config(d, kind="lstm"))
    assert "shape" in broken("wrong_shape", lambda d: edit_config(d, hidden=64))
    assert "corrupt" in broken("truncated", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:100]))

    def poison(d):
        from safetensors.torch import load_file, save_file
        tensors = load_file(str(d / "model.safetensors"))
        tensors["head.bias"][0] = float("nan")
        save_file(tensors, str(d / "model.safetensors"))

    assert "NaN" in broken("nan", poison)


def test_shipped_baselines_load_and_state_their_training_mice():
    baselines = shipped_baselines()
    assert set(baselines) == {"mlp", "poco"}
    assert baselines["mlp"].n_parameters() == 28_702  # the anchor's size: 64 -> 128 -> 128 (residual) -> 30
    for kind in baselines:
        metadata = json.loads((SHIPPED_BASELINES_DIR / kind / "config.json").read_text())["metadata"]
        assert metadata["train_mice"] and not {"511510667", "511510989"} & set(metadata["train_mice"])
