"""Calibration blocks: trials located in the stream a rig would send, several files as one session, and the
windows read off the daemon's own per-frame path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.offline import OfflineStream
from rtcalm.data import Recording, TrialTable
from rtcalm.engine.torch_backend import TorchEngine
from rtcalm.eval.calibration import CalibrationError, calibration, stream_of, stream_windows
from rtcalm.model import Calm

from .test_fit_head_cli import trial_recording
from .test_forecast_eval_cli import SMALL


def test_trial_epochs_are_streamed_one_after_another_at_the_model_rate():
    first, second = trial_recording(trials=8, seed=0), trial_recording(trials=12, seed=1)
    cal = calibration([first, second], "direction", 30.0, trial_order="recorded")
    assert cal.stream.shape == (20 * 90, 6) and cal.window_frames == 60 and cal.trial_order == "recorded"
    assert np.array_equal(cal.onsets, np.arange(20) * 90 + 30)  # 1 s before each onset at 30 Hz
    assert np.array_equal(cal.stream, np.concatenate([stream_of(first, 30.0, "recorded"),
                                                      stream_of(second, 30.0, "recorded")]))
    assert cal.classes == [0.0, 90.0, 180.0, 270.0] and cal.recording.n_trials == 20
    values = np.concatenate([first.trials["direction_deg"], second.trials["direction_deg"]])
    assert np.array_equal(cal.target_values(), values)
    assert cal.window_frames_until(0.25) == 8 and cal.window_frames_until(5.0) == 60
    # by default each file's epochs are streamed in a fixed random order: every trial's window is still its own
    shuffled = calibration([first, second], "direction", 30.0)
    assert shuffled.trial_order == "shuffled" and sorted(shuffled.onsets.tolist()) == cal.onsets.tolist()
    assert not np.array_equal(shuffled.onsets, cal.onsets)
    for trial in range(20):
        assert np.array_equal(shuffled.stream[shuffled.onsets[trial]:shuffled.onsets[trial] + 60],
                              cal.stream[cal.onsets[trial]:cal.onsets[trial] + 60])
    assert np.array_equal(shuffled.stream, np.concatenate([stream_of(first, 30.0), stream_of(second, 30.0)]))


def test_order_predictability_tells_a_repeating_stimulus_sequence_from_a_random_one():
    from rtcalm.eval.calibration import order_predictability

    assert order_predictability(np.tile(np.arange(8) * 45.0, 16)) == 1.0
    assert order_predictability(np.random.default_rng(0).integers(0, 8, 128)) < 0.35


def test_a_contiguous_recording_with_onsets_between_frames():
    rng = np.random.default_rng(0)
    recording = Recording(dff=rng.standard_normal((400, 3)).astype(np.float32), rate_hz=20.0, neuron_ids=np.arange(3),
                          continuous_labels={"pupil": np.arange(400, dtype=np.float32)})
    table = TrialTable({"onset_s": np.array([1.0, 5.03, 12.0]), "start_frame": np.array([20, 101, 240]),
                        "kind": np.array(["a", "b", "a"])})
    cal = calibration([recording], "kind", 30.0, labels=[table], response_end_s=1.0)
    assert cal.class_names == ["a", "b"] and cal.classes == [0.0, 1.0]
    assert cal.window_frames == 30 and cal.stream.shape == (600, 3)
    assert np.array_equal(cal.onsets, [30, 152, 360])  # the first 30 Hz frame at or after each onset frame (101 at 20 Hz: 5.05 s)
    assert cal.recording.dff.shape == (3, 20, 3)  # 1 s at the recording's own 20 Hz, from each start frame
    pupil = calibration([recording], "pupil", 30.0, labels=[table], response_end_s=1.0)
    assert not pupil.classification and np.allclose(pupil.data.targets, [29.5, 110.5, 249.5])
    with pytest.raises(CalibrationError, match="runs past the end"):
        calibration([recording], "kind", 30.0, labels=[table], response_end_s=10.0)


def test_the_windows_are_what_the_daemon_hands_its_heads():
    torch.manual_seed(0)
    engine = TorchEngine(Calm(SMALL).eval(), "small@0")
    cal = calibration([trial_recording(trials=8)], "direction", 30.0, trial_order="recorded")
    config = DaemonConfig()
    windows = stream_windows(engine, cal, config)
    assert windows.dff.shape == (8, 60, 6) and windows.hidden.shape == (8, 60, 6, SMALL.d_model)
    stream = OfflineStream(engine, 6, config=config)
    for t, frame in enumerate(cal.stream[:cal.onsets[2] + 60]):
        stream.push(frame)
        trial, k = divmod(t - 30, 90)
        if 0 <= k < 60 and trial <= 2:
            hidden, dff = stream.frame_inputs()
            assert np.array_equal(windows.dff[trial, k], dff) and np.array_equal(dff, frame)  # the ΔF/F as sent
            assert np.array_equal(windows.hidden[trial, k], hidden)
    assert windows.until(8).dff.shape == (8, 8, 6)
