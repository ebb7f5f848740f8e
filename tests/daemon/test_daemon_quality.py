"""Live forecast quality in a real daemon over real sockets: forecast intervals in the prediction message
(the same scales and multipliers, frame by frame, as the daemon's path driven offline), the skill and coverage
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
        half_width = np.empty((N, offline.session.quality.horizon), np.float32)
        for frame in frames:
            sender.send(frame)
            prediction = harness.prediction("q")
            offline.push(frame)
            offline_skills.append(offline.session.quality.skill.skill)
            assert prediction.interval_levels == (0.8, 0.95)
            quality = offline.session.quality
            quality.fill_message_intervals(offline.session.scale.std)
            np.testing.assert_array_equal(prediction.interval_scale, quality.interval_scale)
            np.testing.assert_array_equal(prediction.interval_multiplier, quality.interval_multiplier)
            np.testing.assert_array_equal(prediction.forecast, offline.session.forecast)
            lower, upper = prediction.interval(0.95)
            # the client's band is the daemon's half-width, bit for bit (rtcalm.stats.intervals: Rounding)
            quality.intervals.half_widths_into(0.95, half_width, offline.session.scale.std)
            np.testing.assert_array_equal(upper, prediction.forecast + half_width)
            np.testing.assert_array_equal(lower, prediction.forecast - half_width)
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
    assert prediction.interval_levels == ()
    assert prediction.interval_scale is None and prediction.interval_multiplier is None
    with pytest.raises(ValueError, match="interval_levels"):
        prediction.interval(0.8)


MISSING = object()  # the field is taken out of the message
F32 = np.float32


@pytest.mark.parametrize("fields, message", [
    ({"interval_scale": MISSING}, "field 'interval_scale' is missing"),
    ({"interval_multiplier": MISSING}, "field 'interval_multiplier' is missing"),
    ({"interval_scale": [0.5]}, "field 'interval_scale' must be msgpack bin .* got list"),
    ({"interval_multiplier": "1.6 2.4"}, "field 'interval_multiplier' must be msgpack bin .* got str"),
    ({"interval_scale": b"\x00" * 7}, r"'interval_scale' is 7 bytes, expected 8 \(1 neurons x 2 steps"),
    ({"interval_scale": np.zeros(2, np.float64).tobytes()}, "'interval_scale' is 16 bytes, expected 8"),  # float64
    ({"interval_multiplier": F32([1.6, 1.6]).tobytes()}, r"'interval_multiplier' is 8 bytes, expected 16 \(2 levels"),
    ({"interval_multiplier": F32([1.6, 1.6, 2.4, 2.4, 3.0, 3.0]).tobytes()}, "'interval_multiplier' is 24 bytes"),
    ({"interval_scale": F32([0.5, -0.1]).tobytes()}, "'interval_scale' has negative values"),
    ({"interval_scale": F32([0.5, -np.inf]).tobytes()}, "'interval_scale' has negative values"),
    ({"interval_multiplier": F32([1.6, np.nan, 2.4, 2.4]).tobytes()}, "'interval_multiplier' must hold finite"),
    ({"interval_multiplier": F32([1.6, np.inf, 2.4, 2.4]).tobytes()}, "'interval_multiplier' must hold finite"),
    ({"interval_multiplier": F32([1.6, -1.0, 2.4, 2.4]).tobytes()}, "'interval_multiplier' must hold finite"),
    ({"interval_levels": [1.5, 0.95]}, "'interval_levels' must be an array of 1-8 increasing floats"),
    ({"interval_levels": [0.95, 0.8]}, "'interval_levels' must be"),
    ({"interval_levels": [0.8, 0.8]}, "'interval_levels' must be"),
    ({"interval_levels": [0.8, 1]}, "'interval_levels' must be"),
    ({"interval_levels": "0.8"}, "'interval_levels' must be"),
    ({"interval_levels": []}, "'interval_levels' must be"),
    ({"interval_levels": [0.1 * i for i in range(1, 10)]}, "'interval_levels' must be"),
    ({"interval_levels": MISSING}, "field 'interval_scale' needs 'interval_levels'"),
    ({"interval_levels": MISSING, "interval_scale": MISSING}, "field 'interval_multiplier' needs 'interval_levels'"),
])
def test_bad_interval_fields_are_refused(fields, message):
    payload = protocol.unpack_map(protocol.build_prediction(
        session="s", seq=1, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3, forecast=np.zeros((1, 2), np.float32),
        predictable=np.zeros(1, np.uint8), decoded={}, model_version="m", rate_hz=30.0, stream_id=1,
        stream_frame=0, folded=0, stage_ns={}, interval_levels=[0.8, 0.95],
        interval_scale=F32([[0.5, np.nan]]), interval_multiplier=F32([[1.6, 1.6], [2.4, 2.4]])))
    good = protocol.parse_published([protocol.topic_for("s"), protocol.pack(payload)])
    np.testing.assert_array_equal(good.interval(0.95)[1], F32([[1.2, np.nan]]))  # the unchanged message parses
    for name, value in fields.items():
        if value is MISSING:
            del payload[name]
        else:
            payload[name] = value
    with pytest.raises(protocol.ProtocolError, match=message) as raised:
        protocol.parse_published([protocol.topic_for("s"), protocol.pack(payload)])
    assert raised.value.code == "bad_field" and "\n" not in raised.value.message
