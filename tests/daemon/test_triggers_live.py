"""The live daemon and ``rtcalm trigger-eval``'s offline replay fire the same rules on the same frames.

A real Allen recording of a held-out mouse streams through a real daemon (the shipped default model on
ONNX Runtime, real sockets, one frame at a time so no frame is folded), and the same frames through
:class:`rtcalm.daemon.offline.OfflineStream`; the fired (rule, frame) pairs and the values that fired
must be identical, and every rule must fire, so the comparison is not between two empty lists.

Each frame is sent after the previous prediction arrived, so none is folded; the predictable mask (which
`predictable` rules read) is refreshed right after the prediction of the frame that makes it due, live
and offline alike, so the result does not depend on how idle the daemon is (docs/triggers.md)."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import Harness, make_config

from rtcalm.client import Prediction, Trigger
from rtcalm.data import load_recording
from rtcalm.eval.triggers import replay
from rtcalm.triggers.rules import parse_rules

RECORDING = "yueqiw_neurod-io/data/501788003/natural_movie_two_64122-65026/rec_data.npz"  # a test mouse
FRAMES = 360
RULES = """
format = "rtcalm-rules"
version = 1
armed = true

[[rule]]
name = "population-up"
kind = "activity"
neurons = "all"
reduce = "mean"
threshold = 0.25
refractory_ms = 200
max_rate_hz = 0

[[rule]]
name = "predicted-burst"
kind = "forecast"
neurons = "predictable"
reduce = "count_above"
level = 1.5
frames = [1, 5]
threshold = 4
min_frames = 2
refractory_ms = 100
max_rate_hz = 3

[[rule]]
name = "one-neuron"
kind = "activity"
neurons = [0, 5, 9]
reduce = "max"
units = "dff"
threshold = 0.2
refractory_ms = 300
max_rate_hz = 0

[[rule]]
name = "quiet-forecast"
kind = "forecast"
neurons = [3, 4]
reduce = "max"
frames = [4, 10]
direction = "below"
threshold = -0.5
refractory_ms = 500
max_rate_hz = 1
"""


@pytest.fixture(scope="module")
def recording(real_data_dir):
    return load_recording(real_data_dir / RECORDING)


def test_live_triggers_equal_the_offline_replay(recording, tmp_path):
    config = make_config(model={"name": "default", "backend": "onnx"}, stats={"warmup_frames": 30})
    dff = recording.dff[:FRAMES]
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    specs = parse_rules(RULES)

    harness = Harness(config, "default")
    try:
        engine = harness.daemon.pipeline.engine
        offline_fired, offline_values = replay(engine, dff, specs, config)
        sender = harness.sender("live")
        harness.control.start_session("live", dff.shape[1])
        harness.control.load_rules("live", str(rules_path))
        live = []
        for t in range(FRAMES):
            sender.send(dff[t])
            while True:
                message = harness.receive("live")
                if isinstance(message, Trigger):
                    live.append((message.rule, message.stream_frame, message.value))
                elif isinstance(message, Prediction):
                    assert message.folded == 0 and message.stream_frame == t
                    break
    finally:
        harness.close()

    names = [spec.name for spec in specs]
    offline = sorted((names[r], int(t), float(offline_values[t, r])) for r in range(len(specs))
                     for t in offline_fired[r])
    assert {name for name, _t, _v in offline} == set(names), "every rule fires somewhere in the excerpt"
    assert sorted((name, t) for name, t, _v in live) == [(name, t) for name, t, _v in offline]
    np.testing.assert_allclose([v for _n, _t, v in sorted(live)], [v for _n, _t, v in offline], rtol=1e-6)
