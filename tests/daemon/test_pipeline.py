"""The per-frame pipeline through a real daemon and real sockets: forecasts equal the offline reference,
sequence gaps / duplicates / reordering, session restarts, catch-up batching, raw fluorescence input."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import OfflineReference, make_config

from rtcalm.client import Prediction
from rtcalm.sim import make_synthetic
from rtcalm.stats import POYO_CAP, StreamingStats, is_predictable

N = 24
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=400, seed=3).dff


def assert_forecast(prediction: Prediction, expected: np.ndarray) -> None:
    np.testing.assert_allclose(prediction.forecast, expected, equal_nan=True, **TOL)


def test_lockstep_forecasts_equal_offline_reference(harness, model, frames):
    sender = harness.sender("rig1")
    predictions = harness.send_lockstep(sender, frames[:60])
    expected = OfflineReference(model, N, make_config()).run(frames[:60])
    assert [p.seq for p in predictions] == list(range(60))
    for p, e in zip(predictions, expected, strict=True):
        assert_forecast(p, e)
    last = predictions[-1]
    assert last.forecast.shape == (N, 5) and last.horizon == 5
    assert np.isfinite(last.forecast).all()  # past the 10-frame warm-up every neuron has a scale
    assert np.isnan(predictions[0].forecast).all()  # no neuron has a scale after one frame
    assert last.decoded == {} and last.folded == 0 and last.stream_frame == 59
    assert last.model_version.startswith("small-a@") and last.rate_hz == 30.0
    assert last.t_acq_ns <= last.t_recv_ns <= last.t_pub_ns
    assert set(last.stage_ns) == {"validate", "stats", "model"}
    status = harness.session_status("rig1")
    assert status["accepted"] == 60 and status["published"] == 60 and status["neurons"] == N


def test_gap_is_filled_with_missing_frames(harness, model, frames):
    sender = harness.sender("gappy")
    harness.send_lockstep(sender, frames[:20])
    sender.send(frames[23], seq=23)  # 20, 21, 22 never arrive
    p = harness.prediction("gappy")
    reference = OfflineReference(model, N, make_config())
    reference.run(frames[:20])
    for _ in range(3):
        reference.step(np.full(N, np.nan, np.float32))
    assert p.seq == 23 and p.stream_frame == 23
    assert_forecast(p, reference.step(frames[23]))
    status = harness.session_status("gappy")
    assert status["gaps"] == 1 and status["gap_frames"] == 3 and status["accepted"] == 21


def test_duplicate_and_out_of_order_frames_are_dropped_and_reported(harness, model, frames):
    sender = harness.sender("dup")
    harness.send_lockstep(sender, frames[:15])
    sender.send(frames[14], seq=14)
    error = harness.error("dup")
    assert (error.code, error.seq) == ("duplicate", 14)
    sender.send(frames[3], seq=3)
    error = harness.error("dup")
    assert (error.code, error.seq) == ("out_of_order", 3)
    # Frame 3 was processed normally when it first came: the message must not claim it was filled as missing.
    assert "filled as missing" not in error.message and "dropped" in error.message
    p = harness.send_lockstep(sender, frames[15:16], seqs=[15])[0]
    assert_forecast(p, OfflineReference(model, N, make_config()).run(frames[:16])[-1])
    status = harness.session_status("dup")
    assert status["duplicates"] == 1 and status["reordered"] == 1 and status["accepted"] == 16


def test_gap_beyond_the_limit_restarts_the_stream(make_harness, model, frames):
    h = make_harness(limits={"max_gap_frames": 5})
    sender = h.sender("far")
    first = h.send_lockstep(sender, frames[:12])[-1]
    sender.send(frames[30], seq=30)  # 17 missing > 5
    error = h.error("far")
    assert error.code == "gap_too_large" and error.seq == 30
    p = h.prediction("far")
    assert p.stream_id != first.stream_id and p.stream_frame == 0
    following = h.send_lockstep(sender, frames[31:40])
    assert_forecast(following[-1], OfflineReference(model, N, make_config()).run(frames[30:40])[-1])


def test_new_neuron_count_or_reset_flag_starts_a_new_stream(harness, model, frames):
    sender = harness.sender("resize")
    before = harness.send_lockstep(sender, frames[:12])[-1]
    small = frames[:, :10]
    after = harness.send_lockstep(sender, small[12:30])
    assert after[0].stream_id != before.stream_id and after[0].n_neurons == 10
    assert_forecast(after[-1], OfflineReference(model, 10, make_config()).run(small[12:30])[-1])
    # A rig that restarts its numbering flags its first frame.
    sender.send(small[0], seq=0, reset=True)
    restarted = harness.prediction("resize")
    assert restarted.seq == 0 and restarted.stream_id != after[0].stream_id and restarted.stream_frame == 0


def test_backlog_is_folded_in_one_batch_without_losing_frames(harness, model, frames):
    sender = harness.sender("burst")
    harness.send_lockstep(sender, frames[:1])
    for frame in frames[1:300]:  # far faster than the daemon steps
        sender.send(frame)
    predictions = []
    while not predictions or predictions[-1].seq != 299:
        predictions.append(harness.prediction("burst"))
    expected = OfflineReference(model, N, make_config()).run(frames[:300])
    for p in predictions:
        assert_forecast(p, expected[p.seq])
    folded = sum(p.folded for p in predictions)
    assert folded > 0, "a burst of 299 frames should have been batched at least once"
    assert folded + len(predictions) == 299
    status = harness.session_status("burst")
    assert status["accepted"] == 300 and status["batched"] == folded and status["stream_frames"] == 300


def test_sessions_are_independent_and_topics_exact(harness, model, frames):
    from rtcalm.client import PredictionSubscriber

    only_rig1 = PredictionSubscriber(harness.endpoints["publish"], sessions="rig1", context=harness.context)
    harness.wait_subscribed(only_rig1)
    rig1, rig10 = harness.sender("rig1"), harness.sender("rig10")
    other = make_synthetic(n_neurons=7, n_frames=20, seed=9).dff
    for t in range(20):
        rig1.send(frames[t])
        rig10.send(other[t])
    got = []
    while len(got) == 0 or got[-1].seq != 19:
        message = only_rig1.receive(timeout_ms=20000)
        assert message is not None and message.session == "rig1"
        got.append(message)
    assert_forecast(got[-1], OfflineReference(model, N, make_config()).run(frames[:20])[-1])
    while (p := harness.prediction("rig10")).seq != 19:
        pass
    assert_forecast(p, OfflineReference(model, 7, make_config()).run(other)[-1])
    only_rig1.close()


def test_raw_fluorescence_is_converted_to_dff(harness, model):
    rng = np.random.default_rng(4)
    n, t = 12, 100
    raw = (100 + 10 * rng.standard_normal((t, n))).astype(np.float32)
    neuropil = (40 + rng.standard_normal((t, n))).astype(np.float32)
    sender = harness.sender("raw")
    predictions = []
    for i in range(t):
        sender.send_fluorescence(raw[i], neuropil[i])
        predictions.append(harness.prediction("raw"))
    reference = OfflineReference(model, n, make_config(), fluorescence=True)
    expected = [reference.step(raw[i], neuropil[i]) for i in range(t)]
    assert_forecast(predictions[-1], expected[-1])
    assert np.isfinite(predictions[-1].forecast).all()  # the baseline exists after 2 blocks of 30 frames
    # The stream is raw fluorescence now: a dF/F frame is refused and changes nothing.
    sender.send(raw[0] / 100)
    assert harness.error("raw").code == "bad_field"
    sender.send_fluorescence(raw[0], neuropil[0], seq=t + 1)
    reference.step(np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32))  # seq t was refused: a gap
    assert_forecast(harness.prediction("raw"), reference.step(raw[0], neuropil[0]))


def test_nan_values_are_missing_not_errors(harness, model, frames):
    holey = frames[:30].copy()
    holey[5:, :3] = np.nan
    holey[12] = np.nan
    predictions = harness.send_lockstep(harness.sender("holes"), holey)
    expected = OfflineReference(model, N, make_config()).run(holey)
    assert_forecast(predictions[-1], expected[-1])
    assert np.isnan(predictions[-1].forecast[:3]).all()  # never seen: no scale, no forecast


def test_predictable_mask_is_published(make_harness, frames):
    h = make_harness(stats={"predictable_refresh_frames": 5})
    sender = h.sender("mask")
    first = h.send_lockstep(sender, frames[:1])[0]
    h.send_lockstep(sender, frames[1:40])
    # the refresh due at frame 40 ran right after its prediction was sent
    snapshot = h.control.get_stats("mask")
    last = h.send_lockstep(sender, frames[40:41])[0]  # 1 frame later: no refresh due before it is published
    stats = StreamingStats(N)
    stats.update_many(frames[:40])
    expected = is_predictable(stats.snapshot().skewness, stats.snapshot().kurtosis, POYO_CAP)
    assert not first.predictable.any() and expected.any()
    np.testing.assert_array_equal(snapshot["vectors"]["predictable"], expected)
    np.testing.assert_array_equal(last.predictable, expected)


def test_reference_model_depends_on_its_input(model, frames):
    """Guards every equality test here: with a model that ignored its input they would prove nothing."""
    changed = frames[:40].copy()
    changed[25:30] = frames[200:205]
    a = OfflineReference(model, N, make_config()).run(frames[:40])[-1]
    b = OfflineReference(model, N, make_config()).run(changed)[-1]
    assert np.nanmax(np.abs(a - b)) > 100 * TOL["atol"]
