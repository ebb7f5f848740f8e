"""Decoding heads: sklearn-equivalent fitting, streaming EMA pooling, persistence, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.model import Calm, CalmConfig
from rtcalm.model.heads import (
    DecodingHead,
    HeadConfig,
    HeadError,
    finetune_head,
    fit_head,
    load_head,
    open_stream,
    save_head,
)


def _features(n=96, neurons=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    classes = np.repeat([0.0, 90.0, 180.0, 270.0], n // 4)
    x = rng.standard_normal((n, neurons, d))
    x[:, 0, 0] += classes / 90.0  # one feature carries the class
    return x, classes


def test_fitted_head_predicts_what_sklearn_predicts():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _features()
    config = HeadConfig("direction", "classification", n_neurons=5, d_model=4, pool_frames=30,
                        classes=[0.0, 90.0, 180.0, 270.0])
    head = fit_head(x, y, config)
    flat = x.reshape(len(x), -1)
    scaler = StandardScaler().fit(flat)
    reference = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(flat), np.searchsorted(config.classes, y))
    ours = head(torch.from_numpy(x).float()).argmax(-1).numpy()
    assert np.array_equal(ours, reference.predict(scaler.transform(flat)))
    assert (ours == np.searchsorted(config.classes, y)).mean() > 0.6


def test_regression_head_and_streaming_pool(tmp_path):
    x, y = _features(seed=1)
    config = HeadConfig("speed", "regression", n_neurons=5, d_model=4, pool_frames=4)
    head = fit_head(x, y / 90.0, config)
    stream = open_stream(head)
    hidden = x[0].astype(np.float32)
    for _ in range(200):  # a constant input: the EMA converges to it
        out = stream.step(hidden)
    assert np.allclose(stream.pool, hidden, atol=1e-5) and stream.frames == 200
    assert out["speed"] == pytest.approx(float(head(torch.from_numpy(hidden)).detach()[0]), abs=1e-5)
    loaded = load_head(save_head(head, tmp_path), expected=DecodingHead)
    assert torch.equal(loaded.readout.weight, head.readout.weight) and loaded.config == head.config


def test_bad_heads(tmp_path):
    with pytest.raises(HeadError, match="kind"):
        HeadConfig("x", "clustering", 3, 4, 10)
    with pytest.raises(HeadError, match="two classes"):
        HeadConfig("x", "classification", 3, 4, 10, classes=[1.0])
    x, y = _features()
    config = HeadConfig("direction", "classification", n_neurons=5, d_model=4, pool_frames=30, classes=[0.0, 90.0])
    with pytest.raises(HeadError, match="among the head's classes"):
        fit_head(x, y, config)
    (tmp_path / "h.json").write_text("{broken")
    with pytest.raises(HeadError, match="cannot load"):
        load_head(tmp_path / "h.json")


def test_finetuning_changes_backbone_and_lowers_loss():
    torch.manual_seed(0)
    config = CalmConfig(d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, attention_window_frames=8, n_latents=4,
                        token_window_frames=4, codebook_size=32, code_dim=4, tokenizer_hidden=16,
                        forecast_horizon_frames=5)
    model = Calm(config)
    rng = np.random.default_rng(0)
    targets = np.repeat([0.0, 1.0], 16)
    epochs = rng.standard_normal((32, 12, 6)).astype(np.float32)
    epochs[targets == 1, 6:, 0] += 2.0
    response = np.arange(12) >= 6
    with torch.no_grad():
        hidden = model(torch.from_numpy(epochs)).hidden[:, response].mean(1).numpy()
    head = fit_head(hidden, targets, HeadConfig("x", "classification", 6, 16, 6, classes=[0.0, 1.0]))
    before = [p.detach().clone() for p in model.parameters()]
    loss_fn = torch.nn.CrossEntropyLoss()
    labels = torch.from_numpy(targets).long()
    with torch.no_grad():
        loss_before = loss_fn(head(model(torch.from_numpy(epochs)).hidden[:, response].mean(1)), labels)
    finetune_head(model, head, torch.from_numpy(epochs), targets, response, steps=30, lr=3e-3)
    with torch.no_grad():
        loss_after = loss_fn(head(model(torch.from_numpy(epochs)).hidden[:, response].mean(1)), labels)
    assert loss_after < loss_before
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
