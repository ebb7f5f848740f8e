"""Live forecast quality in a real daemon over real sockets: forecast intervals in the prediction message
(the same half-widths, frame by frame, as the daemon's path driven offline), the skill and coverage
gauges, their removal with the session, and predictions without intervals as before."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import Harness, make_config
from test_metrics import scrape

from rtcalm import protocol
from rtcalm.daemon.offline import OfflineStream
from rtcalm.sim import make_synthetic

N = 10


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=150, seed=8).dff


def test_predictions_carry_the_intervals_the_offline_path_computes(checkpoint, frames):
    config = make_config(quality={"interval_levels": [0.8, 0.95], "skill_horizons": [1, 3]})
    harness = Harness(config, str(checkpoint))
    try:
        offline = OfflineStream(harness.daemon.pipeline.engine, N, config=config)
        sender = harness.sender("q")
        harness.control.start_session("q", N)
        banded, offline_skills = 0, []
        for frame in frames:
            sender.send(frame)
            prediction = harness.prediction("q")
            offline.push(frame)
            offline_skills.append(offline.session.quality.skill.skill)
            assert prediction.interval_levels == (0.8, 0.95)
            expected = offline.session.quality.half_widths_into_message(offline.session.scale.std)
            np.testing.assert_allclose(prediction.interval_half_width, expected, rtol=1e-6, equal_nan=True)
            np.testing.assert_array_equal(prediction.forecast, offline.session.forecast)
            lower, upper = prediction.interval(0.95)
            inner_lower, inner_upper = prediction.interval(0.8)
            has_band = np.isfinite(lower)
            assert np.all(lower[has_band] <= inner_lower[has_band]) and np.all(inner_upper[has_band] <= upper[has_band])
            banded += int(has_band.any())
        assert banded > 100  # bands exist for most of the stream, so the comparison above is not of NaNs
        with pytest.raises(ValueError, match="no 0.5 interval"):
            prediction.interval(0.5)
        samples = scrape(harness)
        gauges = [samples[("rtcalm_forecast_skill", (("horizon", str(h)), ("session", "q")))] for h in (1, 3)]
        # housekeeping sets the gauges between frames, every 30 frames: they hold the skill of one of the
        # last 30 frames, exactly as the offline path computed it then
        assert any(np.allclose(gauges, skill, rtol=1e-9) for skill in offline_skills[-31:]), gauges
        coverage = samples[("rtcalm_forecast_interval_coverage", (("horizon", "1"), ("level", "0.8"), ("session", "q")))]
        assert 0.5 < coverage <= 1.0
        harness.control.stop_session("q")
        assert not [key for key in scrape(harness) if ("session", "q") in key[1] and "forecast" in key[0]]
    finally:
        harness.close()


def test_without_intervals_the_message_has_no_interval_fields(harness, frames):
    sender = harness.sender("plain")
    prediction = harness.send_lockstep(sender, frames[:3])[-1]
    assert prediction.interval_levels == () and prediction.interval_half_width is None
    with pytest.raises(ValueError, match="interval_levels"):
        prediction.interval(0.8)


@pytest.mark.parametrize("fields, message", [
    ({"interval_levels": [0.8]}, "field 'interval_half_width' must be msgpack bin"),
    ({"interval_levels": [1.5], "interval_half_width": b""}, "interval_levels"),
    ({"interval_levels": "0.8"}, "interval_levels"),
    ({"interval_levels": [0.8], "interval_half_width": b"\x00" * 7}, "payload_size|truncated"),
    ({"interval_half_width": b"\x00" * 4}, "needs 'interval_levels'"),
])
def test_bad_interval_fields_are_refused(fields, message):
    payload = protocol.unpack_map(protocol.build_prediction(
        session="s", seq=1, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3, forecast=np.zeros((1, 1), np.float32),
        predictable=np.zeros(1, np.uint8), decoded={}, model_version="m", rate_hz=30.0, stream_id=1,
        stream_frame=0, folded=0, stage_ns={}))
    payload.update(fields)
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.parse_published([protocol.topic_for("s"), protocol.pack(payload)])
