"""Fit and serve see the same features: heads fitted on a real grating recording streamed through the
daemon's own per-frame path (rtcalm.eval.calibration.stream_windows, driving OfflineStream), loaded into a
real daemon (the shipped default model on ONNX Runtime, real sockets), decode every frame of the same
recording exactly as the offline decode (``rtcalm decode``'s path) does: within 1e-5.

One head of each kind (raw frames, the backbone's hidden state, both), each chosen and fitted by inner
CV as ``rtcalm fit-head --features KIND`` does (an average of heads of several bin counts when more than
one is within the band), all three loaded into one session. Frames are sent one at
a time, each after the previous prediction, so every frame is answered (none folded)."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import Harness, make_config

from rtcalm.data import load_recording
from rtcalm.engine import load_engine
from rtcalm.eval.calibration import calibration, stream_windows
from rtcalm.eval.served import decode_frames, fit_served_head
from rtcalm.model.heads import save_head

RECORDING = "surlab_Park_et_al/sample-data/glm/230809_mrcuts28_fov4_grat-000_data.mat"  # 56 tuned-ish neurons
FRAMES = 92 * 5  # the first five trials at 30 Hz (the statistics' warm-up included)


@pytest.fixture(scope="module")
def recording(real_data_dir):
    return load_recording(real_data_dir / RECORDING)


def test_every_frame_the_daemon_decodes_equals_the_offline_decode(recording, tmp_path):
    config = make_config(model={"name": "default", "backend": "onnx"}, stats={"warmup_frames": 30})
    engine = load_engine("default", backend="onnx")
    cal = calibration([recording], "direction", engine.rate_hz)
    windows = stream_windows(engine, cal, config)
    paths, kinds = [], {}
    for features in ("raw", "backbone", "both"):
        head, choice = fit_served_head(cal, windows, name=f"direction_{features}", features=features)
        kinds[features] = head.config
        paths.append(save_head(head, tmp_path / features))
    assert [c.features for c in kinds.values()] == ["raw", "backbone", "both"]
    frames = cal.stream[:FRAMES]
    offline = decode_frames(engine, frames, paths, config)

    harness = Harness(config, "default")
    try:
        harness.control.start_session("rig", recording.n_neurons)
        for path in paths:
            harness.control.load_head("rig", str(path))
        live = harness.send_lockstep(harness.sender("rig"), frames)
    finally:
        harness.close()

    assert len(live) == len(offline) == FRAMES
    for t, (prediction, expected) in enumerate(zip(live, offline, strict=True)):
        assert prediction.folded == 0 and prediction.stream_frame == t
        assert list(prediction.decoded) == list(expected), t
        for name, value in expected.items():
            np.testing.assert_allclose(np.asarray(prediction.decoded[name], np.float64), np.asarray(value, np.float64),
                                       rtol=0, atol=1e-5, err_msg=f"frame {t}, {name}")
    # the decoded values are not constant: the heads react to the stimulus
    for features in ("raw", "backbone", "both"):
        probabilities = np.array([e[f"direction_{features}_probabilities"] for e in offline])
        assert np.ptp(probabilities, axis=0).max() > 0.5
        assert len({e[f"direction_{features}"] for e in offline}) >= 3
