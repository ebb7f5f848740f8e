"""RuleSet: rule values against numpy references, and the gate's semantics frame by frame."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from rtcalm.triggers import kernels
from rtcalm.triggers.rules import RuleSpec
from rtcalm.triggers.ruleset import RuleSet

N, H, RATE = 12, 6, 30.0


def make(*specs: RuleSpec, receptive_field: int = 0, heads=None) -> RuleSet:
    return RuleSet(list(specs), n_neurons=N, horizon=H, rate_hz=RATE, receptive_field=receptive_field,
                   heads=heads or {})


def rule(name="r", kind="activity", **fields) -> RuleSpec:
    return RuleSpec(name=name, kind=kind, **{"threshold": 0.5, "armed": True, **fields})


class Frames:
    """Feeds a RuleSet one frame at a time; z and ΔF/F differ (dff = 2 z + 1) so units are told apart."""

    def __init__(self, rules: RuleSet, predictable=None):
        self.rules = rules
        self.frames = 0
        self.predictable = np.ones(N, np.uint8) if predictable is None else predictable.astype(np.uint8)

    def push(self, z, forecast_z=None, decoded=None, advance=1) -> list[tuple[str, int]]:
        self.frames += advance
        z = np.broadcast_to(np.asarray(z, np.float32), (N,)).copy()
        forecast_z = np.zeros((N, H), np.float32) if forecast_z is None else np.asarray(forecast_z, np.float32)
        count = self.rules.evaluate(stream_frames=self.frames, dff=2 * z + 1, z=z, forecast_dff=2 * forecast_z + 1,
                                    forecast_z=forecast_z, predictable=self.predictable, decoded=decoded or {})
        return [(self.rules.names[r], int(self.rules.outcome[r])) for r in self.rules.events[:count]]


@pytest.mark.parametrize("reduce, level", [("mean", None), ("max", None), ("count_above", 0.2)])
@pytest.mark.parametrize("neurons", ["all", "predictable", (0, 3, 7, 11)])
@pytest.mark.parametrize("units", ["z", "dff"])
def test_values_match_numpy(reduce, level, neurons, units):
    rng = np.random.default_rng(0)
    predictable = rng.random(N) < 0.5
    rules = make(rule("now", reduce=reduce, level=level, neurons=neurons, units=units),
                 rule("soon", "forecast", reduce=reduce, level=level, neurons=neurons, units=units, frames=(2, 4)),
                 rule("low", "forecast", reduce=reduce, level=level, neurons=neurons, units=units, frames=(2, 4),
                      direction="below"))
    feed = Frames(rules, predictable)
    for _ in range(5):
        z = rng.normal(size=N).astype(np.float32)
        z[rng.random(N) < 0.2] = np.nan
        forecast = rng.normal(size=(N, H)).astype(np.float32)
        feed.push(z, forecast)
        chosen = {"all": np.arange(N), "predictable": np.flatnonzero(predictable)}.get(neurons, np.array(neurons)) \
            if isinstance(neurons, str) else np.array(neurons)
        scale = (lambda x: x) if units == "z" else (lambda x: 2 * x + 1)

        def reduced(x, chosen=chosen, scale=scale):
            x = scale(x[chosen].astype(np.float64))
            if np.all(np.isnan(x)):
                return np.nan
            return {"mean": np.nanmean, "max": np.nanmax}.get(reduce, lambda v: float(np.sum(v > level)))(x)

        per_frame = [reduced(forecast[:, k]) for k in (1, 2, 3)]
        np.testing.assert_allclose(rules.values, [reduced(z), np.nanmax(per_frame), np.nanmin(per_frame)],
                                   rtol=1e-5, equal_nan=True)


def test_fires_once_per_crossing_after_min_frames():
    feed = Frames(make(rule(min_frames=3)))
    pattern = [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    fired = [t for t, v in enumerate(pattern) if feed.push(float(v))]
    assert fired == [2, 11]  # the third frame of each run of at least three


def test_below_direction_and_nan_never_holds():
    feed = Frames(make(rule(direction="below", threshold=-1.0)))
    assert feed.push(np.nan) == []  # an all-missing frame is not "below"
    assert feed.push(-2.0) == [("r", kernels.FIRED)]


def test_refractory_counts_frames_of_the_acquisition_clock():
    feed = Frames(make(rule(refractory_ms=200.0)))  # 6 frames at 30 Hz
    events = []
    for t in range(16):
        out = feed.push(1.0 if t % 2 == 0 else 0.0)  # a crossing every other frame
        events += [(t, outcome) for _name, outcome in out]
    fired = [t for t, outcome in events if outcome == kernels.FIRED]
    suppressed = [t for t, outcome in events if outcome == kernels.REFRACTORY]
    assert fired == [0, 6, 12] and suppressed == [2, 4, 8, 10, 14]
    # frames filled in for a gap count too: 6 frames later the refractory period is over
    feed2 = Frames(make(rule(refractory_ms=200.0)))
    assert feed2.push(1.0) and not feed2.push(0.0)
    assert feed2.push(1.0, advance=5) == [("r", kernels.FIRED)]


def test_rate_limit_is_a_token_bucket():
    feed = Frames(make(rule(max_rate_hz=3.0)))  # 3 tokens, one back every 10 frames
    outcomes = []
    for t in range(40):
        outcomes += [(t, o) for _n, o in feed.push(1.0 if t % 2 == 0 else 0.0)]
    fired = [t for t, o in outcomes if o == kernels.FIRED]
    # the burst of three, then one token back every 10 frames (a crossing every other frame wants more)
    assert fired == [0, 2, 4, 10, 20, 30]
    assert any(o == kernels.RATE_LIMIT for _t, o in outcomes)


def test_disarmed_rules_do_not_fire_and_arming_waits_for_the_next_crossing():
    rules = make(rule(armed=False), rule("other"))
    feed = Frames(rules)
    assert feed.push(1.0) == [("other", kernels.FIRED)]
    assert rules.set_armed(["r"], True) == ["r"]
    assert feed.push(1.0) == []  # still the same crossing: arming does not fire on a stale condition
    feed.push(0.0)
    assert ("r", kernels.FIRED) in feed.push(1.0)
    with pytest.raises(KeyError):
        rules.set_armed(["r", "nope"], False)
    assert rules.armed.tolist() == [True, True]  # nothing changed
    rules.set_armed(None, False)
    assert not rules.armed.any()


def test_forecast_and_decoded_rules_are_held_for_the_receptive_field():
    rules = make(rule("now"), rule("soon", "forecast", frames=(1, 2)),
                 rule("dir", "decoded", head="d", class_value=90.0, threshold=0.5), receptive_field=4,
                 heads={"d": [0.0, 90.0]})
    feed = Frames(rules)
    high = np.ones((N, H), np.float32)
    decoded = {"d": 90.0, "d_probabilities": [0.1, 0.9]}
    first = feed.push(1.0, high, decoded)
    assert first == [("now", kernels.FIRED)]
    for _ in range(2):
        assert feed.push(0.0, high, decoded) == []
    assert sorted(feed.push(0.0, high, decoded)) == [("dir", kernels.FIRED), ("soon", kernels.FIRED)]  # frame 4
    # a gap of 3 frames: held until 4 frames after it have arrived
    rules.gap(3)
    feed.push(1.0, high, decoded, advance=4)  # the 3 missing frames and the first after them
    for _ in range(2):
        assert [name for name, _o in feed.push(0.0, high, decoded)] == []
    assert {name for name, _o in feed.push(0.0, high, decoded)} == {"soon", "dir"}
    # a restarted stream: the same; refractory state survives it
    rules.restart(stream_frames=0)
    feed.frames = 0
    assert feed.push(0.0, high, decoded) == []


def test_decoded_rules_read_their_head_or_nothing():
    rules = make(rule("dir", "decoded", head="d", class_value=90.0), rule("speed", "decoded", head="s"),
                 heads={"d": [0.0, 90.0], "s": []})
    feed = Frames(rules)
    got = feed.push(0.0, decoded={"d": 0.0, "d_probabilities": [0.2, 0.8], "s": 3.0})
    assert sorted(got) == [("dir", kernels.FIRED), ("speed", kernels.FIRED)]
    np.testing.assert_allclose(rules.values, [0.8, 3.0])
    rules.bind_heads({"d": [0.0, 45.0]})  # the head was replaced by one without class 90; s unloaded
    feed.push(0.0, decoded={"d": 0.0, "d_probabilities": [0.1, 0.9], "s": 3.0})
    assert np.isnan(rules.values).all()


def test_evaluate_allocates_nothing_per_frame():
    rules = make(rule("a", neurons=(1, 2)), rule("b", "forecast", frames=(1, 6), reduce="count_above", level=0.0),
                 rule("c", "decoded", head="s"), heads={"s": []})
    feed = Frames(rules)
    z, forecast, decoded = np.zeros(N, np.float32), np.zeros((N, H), np.float32), {"s": 0.0}
    dff, predictable = np.zeros(N, np.float32), np.ones(N, np.uint8)
    for _ in range(50):  # compile and warm
        rules.evaluate(stream_frames=feed.frames, dff=dff, z=z, forecast_dff=forecast, forecast_z=forecast,
                       predictable=predictable, decoded=decoded)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(2000):
        rules.evaluate(stream_frames=100 + i, dff=dff, z=z, forecast_dff=forecast, forecast_z=forecast,
                       predictable=predictable, decoded=decoded)
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert grown < 4096  # nothing kept per frame (a few interpreter caches at most)


def test_fits_and_describe():
    rules = make(rule("soon", "forecast", frames=(1, 6), serial_byte=7))
    assert rules.fits(n_neurons=N, horizon=6) and not rules.fits(n_neurons=N, horizon=5)
    assert not rules.fits(n_neurons=N + 1, horizon=6)
    described = rules.describe()[0]
    assert described["frames"] == [1, 6] and described["serial_byte"] == 7 and described["armed"]
    assert described["value"] is None and described["frames_since_fire"] is None
