"""The time-resolved head: equal to the offline estimator, its ring buffer, its file format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtcalm.model.heads import (
    DecodingHead,
    HeadConfig,
    HeadError,
    TimeResolvedConfig,
    TimeResolvedHead,
    fit_head,
    fit_time_resolved_head,
    load_head,
)

CLASSES = [0.0, 90.0, 180.0, 270.0]


def _frames(trials=96, window=12, neurons=6, d=5, seed=0):
    """Per-frame hidden states whose *time course* carries the class: along one shared axis each neuron
    rises in the first half of the window and falls in the second with a class-specific sign."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(CLASSES, trials // 4)
    signs = rng.choice([-1.0, 1.0], size=(4, neurons))
    course = np.where(np.arange(window) < window // 2, 1.0, -1.0)
    axis = rng.standard_normal(d)
    x = rng.standard_normal((trials, window, neurons, d)) * 0.7
    x += (signs[np.searchsorted(CLASSES, targets)][:, None, :, None] * course[None, :, None, None]) * axis
    return x.astype(np.float32), targets


def _config(kind="classification", **overrides):
    values = dict(name="direction", kind=kind, n_neurons=6, d_model=5, window_frames=12, n_bins=4, components=2,
                  classes=CLASSES if kind == "classification" else [])
    return TimeResolvedConfig(**{**values, **overrides})


def test_head_computes_the_offline_estimator_and_decodes_held_out_trials():
    from rtcalm.eval.linear import ShrinkageLDA, principal_projection, time_binned

    x, y = _frames()
    train, test = np.arange(96) % 4 != 0, np.arange(96) % 4 == 0
    head = fit_time_resolved_head(x[train], y[train], _config())
    mean, basis = principal_projection(x[train], 2)
    def features(frames):
        return time_binned(((frames - mean) @ basis).reshape(len(frames), 12, 12), 4)
    lda = ShrinkageLDA().fit(features(x[train]), np.searchsorted(CLASSES, y[train]))
    logits = head(torch.from_numpy(x[test])).detach().numpy()
    assert np.allclose(logits, lda.decision_function(features(x[test])), rtol=1e-4, atol=1e-3)
    assert np.mean(np.asarray(CLASSES)[logits.argmax(1)] == y[test]) > 0.8  # chance 0.25
    # the mean over the window is the same for every class: a one-bin head cannot decode it
    flat = fit_time_resolved_head(x[train], y[train], _config(n_bins=1))
    assert np.mean(np.asarray(CLASSES)[flat(torch.from_numpy(x[test])).argmax(1).numpy()] == y[test]) < 0.5


def test_streaming_ring_buffer_equals_the_window_forward():
    x, y = _frames(seed=1)
    head = fit_time_resolved_head(x, y, _config(n_bins=5))  # uneven bins: 3, 3, 2, 2, 2 frames
    stream = np.concatenate([x[0], x[1], x[2][:7]])  # 31 frames: the buffer wraps twice
    state = head.new_state()
    for t, frame in enumerate(stream):
        decoded = head.step(torch.from_numpy(frame), state)
        if t >= 11:
            expected = head(torch.from_numpy(stream[t - 11:t + 1]))
            probabilities = torch.softmax(expected, -1)
            assert np.allclose(decoded["direction_probabilities"], probabilities.detach().numpy(), atol=1e-5)
            assert decoded["direction"] == CLASSES[int(expected.argmax())]
    assert state.frames == 31
    absorbed = head.new_state()
    for frame in stream[:-1]:
        head.absorb(torch.from_numpy(frame), absorbed)
    assert head.step(torch.from_numpy(stream[-1]), absorbed) == decoded  # absorb = step without the readout
    state.reset()
    assert state.frames == 0 and not state.contributions.any()


def test_regression_head_round_trip(tmp_path):
    x, _ = _frames(seed=2)
    speed = x[:, 6:, 0, :].mean(axis=(1, 2)).astype(np.float64)  # a value carried by the late frames of neuron 0
    head = fit_time_resolved_head(x, speed, _config("regression", n_bins=2, components=5), alpha=1.0)
    predicted = head(torch.from_numpy(x))[:, 0].detach().numpy()
    assert np.corrcoef(predicted, speed)[0, 1] > 0.9
    loaded = load_head(head.save(tmp_path))
    assert isinstance(loaded, TimeResolvedHead) and loaded.config == head.config
    assert torch.allclose(loaded(torch.from_numpy(x)), head(torch.from_numpy(x)))
    state = loaded.new_state()
    for frame in x[3]:
        out = loaded.step(torch.from_numpy(frame), state)
    assert out["direction"] == pytest.approx(float(predicted[3]), abs=1e-4)


def test_ema_heads_still_load_and_each_loader_knows_its_kind(tmp_path):
    x, y = _frames()
    ema = fit_head(x.mean(axis=1), y, HeadConfig("ema", "classification", 6, 5, pool_frames=12, classes=CLASSES))
    ema_json = ema.save(tmp_path)
    assert json.loads(ema_json.read_text())["version"] == 1  # unchanged for older readers
    assert isinstance(load_head(ema_json), DecodingHead) and isinstance(DecodingHead.load(ema_json), DecodingHead)
    resolved_json = fit_time_resolved_head(x, y, _config()).save(tmp_path)
    assert json.loads(resolved_json.read_text())["version"] == 2
    with pytest.raises(HeadError, match="TimeResolvedHead, not a DecodingHead"):
        DecodingHead.load(resolved_json)


def _saved(tmp_path):
    x, y = _frames()
    path = fit_time_resolved_head(x, y, _config()).save(tmp_path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=3), "version 1 or 2"),
    (lambda d: d.update(format="other"), "not an rtcalm head"),
    (lambda d: d["config"].update(pooling="ema"), "pooling 'time_bins'"),
    (lambda d: d["config"].update(n_bins=13), "cannot exceed window_frames"),
    (lambda d: d["config"].update(components=6), "cannot exceed d_model"),
    (lambda d: d["config"].update(window_frames=0), "window_frames must be a positive integer"),
    (lambda d: d["config"].update(n_bins=2.5), "n_bins must be a positive integer"),
    (lambda d: d["config"].update(colour="red"), "bad head config"),
    (lambda d: d["config"].update(n_neurons=7), "readout.weight has shape"),
    (lambda d: d.pop("config"), "no 'config' map"),
])
def test_malformed_config(tmp_path, change, message):
    path, document = _saved(tmp_path)
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(HeadError, match=message):
        load_head(path)


def test_malformed_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = _saved(tmp_path)
    weights = path.with_suffix(".safetensors")
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if k != "projection"}, str(weights))
    with pytest.raises(HeadError, match="expected"):
        load_head(path)
    bad = dict(tensors)
    bad["projection"] = bad["projection"].clone()
    bad["projection"][0, 0] = float("nan")
    save_file(bad, str(weights))
    with pytest.raises(HeadError, match="NaN or Inf"):
        load_head(path)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(HeadError, match="cannot load head weights"):
        load_head(path)
    weights.unlink()
    with pytest.raises(HeadError, match="cannot load head weights"):
        load_head(path)
    path.write_text("{broken")
    with pytest.raises(HeadError, match="cannot load head"):
        load_head(path)


def test_fit_checks_shapes_and_classes():
    x, y = _frames()
    with pytest.raises(HeadError, match="do not match"):
        fit_time_resolved_head(x[:, :10], y, _config())
    with pytest.raises(HeadError, match="among the head's classes"):
        fit_time_resolved_head(x, y + 1.0, _config())
