"""The forecast evaluation protocol and its baselines."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import Recording, TrialTable
from rtcalm.eval.forecast import (
    EvaluationError,
    baseline_forecasters,
    context_mean,
    evaluate,
    first_test_frame,
    fit_pooled_ar,
)
from rtcalm.sim import make_synthetic


def _ar1_recording(n_frames=3000, n_neurons=20, phi=0.9, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n_frames, n_neurons))
    for t in range(1, n_frames):
        x[t] = phi * x[t - 1] + rng.standard_normal(n_neurons)
    return Recording(dff=x.astype(np.float32), rate_hz=30.0, neuron_ids=np.arange(n_neurons))


def test_pooled_ar_recovers_ar1_coefficients():
    rec = _ar1_recording()
    ar = fit_pooled_ar([rec.dff], order=4, horizon=3, ridge=1e-3)
    # For AR(1) the direct h-step predictor is phi^h * x(t) with no weight on older lags.
    for h in range(1, 4):
        assert ar.coef[h - 1, 0] == pytest.approx(0.9 ** h, abs=0.03)
        assert np.abs(ar.coef[h - 1, 1:4]).max() < 0.05


def test_copy_last_is_one_and_ar_beats_it_on_ar1():
    rec = _ar1_recording(seed=1)
    ar = fit_pooled_ar([_ar1_recording(seed=2).dff], order=4, horizon=5)
    result = evaluate([rec], baseline_forecasters(ar, 5), horizons=[1, 5], context_frames=32)
    assert result["horizons"] == [1, 5] and "model" not in result
    copy = result["baselines"]["copy_last"]
    assert copy["1"]["mse_ratio"] == pytest.approx(1.0) and copy["5"]["mse_ratio"] == pytest.approx(1.0)
    # theory for AR(1), h=5: MSE(AR)/MSE(copy) = (1 - phi^10) / (2 (1 - phi^5)) = (1 + phi^5) / 2 ≈ 0.795
    assert result["baselines"]["pooled_ar"]["5"]["mse_ratio"] == pytest.approx(0.795, abs=0.05)
    assert result["baselines"]["pooled_ar"]["1"]["pearson"] > 0.85


def test_context_mean_uses_only_the_context():
    z = np.arange(20, dtype=np.float32)[:, None].repeat(2, axis=1)
    out = context_mean(z, np.array([10, 2]), context_frames=4, horizon=3)
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == pytest.approx(np.mean([7, 8, 9, 10]))
    assert out[1, 0, 0] == pytest.approx(np.mean([0, 1, 2]))  # clipped at the recording start


def test_forecasters_cannot_see_the_future():
    rec = _ar1_recording(n_frames=400, seed=3)
    ar = fit_pooled_ar([rec.dff], order=8, horizon=5)
    forecasters = baseline_forecasters(ar, 5)
    t0 = first_test_frame(400)
    times = np.arange(t0, 395)
    z = rec.dff.copy()
    reference = {name: f(z, times, 16) for name, f in forecasters.items()}
    z_future_changed = z.copy()
    z_future_changed[times[0] + 1:] += 100.0  # everything after the first test time
    for name, f in forecasters.items():
        assert np.allclose(f(z_future_changed, times[:1], 16), reference[name][:1]), name


def test_trial_structured_and_too_short_are_clear_errors():
    trials = Recording(dff=np.zeros((4, 10, 3)), rate_hz=16, neuron_ids=[0, 1, 2],
                       trials=TrialTable({"onset_s": np.zeros(4)}), trial_time_s=np.arange(10))
    with pytest.raises(EvaluationError, match="trial-structured"):
        evaluate([trials], baseline_forecasters(None, 5), [1], 8)
    short = Recording(dff=np.random.default_rng(0).standard_normal((40, 3)), rate_hz=30, neuron_ids=[0, 1, 2])
    with pytest.raises(EvaluationError, match="no test targets"):
        evaluate([short], baseline_forecasters(None, 30), [30], 8)
    with pytest.raises(EvaluationError, match="horizons"):
        evaluate([short], baseline_forecasters(None, 30), [0], 8)


def test_synthetic_population_structure_is_forecastable():
    rec = make_synthetic(n_neurons=64, n_frames=3000, seed=5)
    ar = fit_pooled_ar([make_synthetic(n_neurons=64, n_frames=3000, seed=6).dff], horizon=15)
    result = evaluate([rec], baseline_forecasters(ar, 15), [1, 15], 64)
    assert result["baselines"]["pooled_ar"]["15"]["mse_ratio"] < 0.9
    assert len(result["per_file"]) == 1 and result["files"] == ["synthetic"]
