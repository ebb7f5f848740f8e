"""Frame-rate conversion offline (polyphase) and live (streaming linear interpolation)."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import Recording, TrialTable
from rtcalm.data.resample import StreamingResampler, resample_recording
from rtcalm.sim import make_synthetic


def test_contiguous_16_to_30_preserves_slow_signals():
    t16 = np.arange(320) / 16.0
    slow = np.sin(2 * np.pi * 0.5 * t16)[:, None].astype(np.float32)  # 0.5 Hz, far below Nyquist
    rec = Recording(dff=np.repeat(slow, 3, axis=1), rate_hz=16.0, neuron_ids=[0, 1, 2],
                    continuous_labels={"running_speed": slow[:, 0]})
    out = resample_recording(rec, 30.0)
    assert out.rate_hz == 30.0 and out.dff.shape == (600, 3)
    t30 = np.arange(600) / 30.0
    expected = np.sin(2 * np.pi * 0.5 * t30)
    assert np.abs(out.dff[20:-20, 0] - expected[20:-20]).max() < 0.02
    assert out.continuous_labels["running_speed"].shape == (600,)
    assert out.meta.extra["resampled_from_hz"] == "16"


def test_trial_structured_resampled_per_epoch():
    rng = np.random.default_rng(0)
    dff = np.zeros((4, 48, 2), np.float32)
    dff[1] = 5.0  # a constant epoch must stay constant: no leakage from its neighbours
    dff[2] = rng.standard_normal((48, 2))
    rec = Recording(dff=dff, rate_hz=16.0, neuron_ids=[0, 1], trial_time_s=-1 + np.arange(48) / 16,
                    trials=TrialTable({"onset_s": np.zeros(4)}))
    out = resample_recording(rec, 30.0)
    assert out.dff.shape == (4, 90, 2)
    assert np.allclose(out.dff[1], 5.0, atol=1e-2) and np.allclose(out.dff[0], 0.0, atol=1e-6)
    assert out.trial_time_s[0] == -1.0 and out.trial_time_s[1] == pytest.approx(-1 + 1 / 30)


def test_same_rate_is_identity_and_bad_rate_rejected():
    rec = make_synthetic(n_neurons=3, n_frames=50)
    assert resample_recording(rec, 30.0) is rec
    with pytest.raises(ValueError):
        resample_recording(rec, 0.0)


def test_streaming_resampler_matches_offline_interpolation():
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((160, 5)).astype(np.float32)
    resampler = StreamingResampler(5, 16.0, 30.0)
    emitted = np.concatenate([resampler.push(f).copy() for f in frames])
    t_out = np.arange(emitted.shape[0]) / 30.0
    assert t_out[-1] <= 159 / 16.0 + 1e-9 and emitted.shape[0] == int(159 / 16 * 30) + 1
    expected = np.stack([np.interp(t_out, np.arange(160) / 16.0, frames[:, n]) for n in range(5)], axis=1)
    assert np.allclose(emitted, expected, atol=1e-5)
    with pytest.raises(ValueError):
        resampler.push(np.zeros(4, np.float32))
