"""Checkpoints: safetensors + JSON round trip, no unpickling ever, clear errors for every kind of damage."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from rtcalm.errors import RtcalmError
from rtcalm.model import (
    Calm,
    CalmConfig,
    CheckpointError,
    load_checkpoint,
    load_model,
    read_checkpoint_config,
    save_checkpoint,
)

SMALL = CalmConfig(token_window_frames=4, codebook_size=32, code_dim=4, tokenizer_hidden=16, d_model=16,
                   n_layers=1, n_heads=2, mlp_hidden=32, attention_window_frames=8, n_latents=4,
                   forecast_horizon_frames=3)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Calm(SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    directory = save_checkpoint(model, tmp_path / "ckpt", metadata={"note": "test", "step": 3})
    return model, directory


def test_round_trip_gives_identical_outputs(saved):
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(directory)
    assert not loaded.training
    assert loaded.config == SMALL
    frames = torch.randn(30, 7)
    with torch.no_grad():
        assert torch.equal(model(frames).forecast, loaded(frames).forecast)
    for name, tensor in model.state_dict().items():  # buffers too (codebook and its EMA statistics)
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    config, metadata = read_checkpoint_config(directory)
    assert config == SMALL and metadata == {"note": "test", "step": 3}
    assert torch.equal(load_model(str(directory)).forecast_head.weight, model.forecast_head.weight)


def test_loading_never_unpickles(saved, monkeypatch):
    _, directory = saved

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_checkpoint(directory)
    raw = (directory / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])  # the safetensors header is plain JSON
    assert header["__metadata__"]["format"] == "rtcalm-calm"


def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(saved, tmp_path):
    _, directory = saved
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (directory / "model.safetensors").write_bytes(pickle.dumps({"weights": Payload()}))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or not a safetensors file"):
        load_checkpoint(directory)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip_header"])
def test_corrupt_weights_give_a_clear_error(saved, damage):
    _, directory = saved
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff" * 1000)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(raw[:8] + b"#" + raw[9:])  # break the JSON header
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    assert isinstance(info.value, RtcalmError) and isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_missing_files(saved, tmp_path):
    _, directory = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_checkpoint(directory)
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no shipped model"):
        load_model("no-such-model-name")


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {**d, "format": "something-else"}, "format is 'something-else'"),
    (lambda d: {**d, "format_version": 99}, "format_version 99"),
    (lambda d: {**d, "model_config": {**d["model_config"], "d_model": 15}}, "bad model_config"),
    (lambda d: {**d, "model_config": {**d["model_config"], "rotary": True}}, "unknown model config keys"),
])
def test_bad_config_json(saved, edit, message):
    _, directory = saved
    path = directory / "config.json"
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(directory)
    assert str(path) in str(info.value)


def test_weights_that_do_not_match_the_config(saved):
    _, directory = saved
    path = directory / "config.json"
    document = json.loads(path.read_text())
    document["model_config"]["d_model"] = 32  # valid config, but not the one the weights were saved with
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(directory)
    document["model_config"]["d_model"] = 16
    document["model_config"]["n_layers"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_checkpoint(directory)


def test_nan_weights_are_refused(tmp_path):
    model = Calm(SMALL)
    with torch.no_grad():
        model.forecast_head.weight[0, 0] = float("nan")
    directory = save_checkpoint(model, tmp_path / "nan")
    with pytest.raises(CheckpointError, match="forecast_head.weight.*NaN"):
        load_checkpoint(directory)


def test_default_model_checkpoint_is_small(tmp_path):
    directory = save_checkpoint(Calm(CalmConfig()), tmp_path / "default")
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size <= 20 * 1024 * 1024, size  # the limit for a model shipped inside the package


@pytest.mark.parametrize("name, input_mode", [("default", "encoder"), ("tokens", "tokens"), ("continuous", "continuous")])
def test_shipped_models_load_by_name_and_carry_their_held_out_metrics(name, input_mode):
    from rtcalm.model import load_model, read_checkpoint_config, resolve_model

    directory = resolve_model(name)
    model = load_model(name)
    assert model.config.input_mode == input_mode
    assert sum(p.stat().st_size for p in directory.iterdir()) <= 20 * 1024 * 1024
    _, metadata = read_checkpoint_config(directory)
    test = metadata["metrics"]["forecast_protocol"]["test"]
    assert set(test["horizons"]) == {1, 5, 15, 30} and "pooled_ar" in test["baselines"]
    assert "Results on held-out mice" in (directory / "README.md").read_text()  # the model card
