"""Property-based tests (hypothesis): random shapes, values, missing values, split points and epochs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from stats_reference import reference_stats

from rtcalm.stats import NeuronStats, StreamingStats

FIELDS = NeuronStats.FIELDS
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def recordings(draw, max_frames=60, max_neurons=6):
    """(frames, neurons) float32 with values on very different scales and some NaNs."""
    frames = draw(st.integers(1, max_frames))
    neurons = draw(st.integers(1, max_neurons))
    values = draw(arrays(np.float32, (frames, neurons),
                         elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)))
    missing = draw(arrays(np.bool_, (frames, neurons), elements=st.booleans() if draw(st.booleans()) else st.just(False)))
    offset = draw(st.sampled_from([0.0, 1.0, 1e4]))  # raw-fluorescence-like offsets too
    x = values.astype(np.float64) + offset
    x[missing] = np.nan
    return x.astype(np.float32)


# Absolute slack added to |value| before scaling by rtol: the mean is judged against the spread, the
# spread against the level (a constant trace's spread is 0 up to rounding of the mean), statistics
# that can be ~0 get a floor of 1, counts are purely relative.
FLOORS = {"count": lambda want: 0.0,
          "mean": lambda want: want["std"],
          "std": lambda want: 1e-6 * np.abs(want["mean"]),
          "skewness": lambda want: 1.0, "kurtosis": lambda want: 1.0,
          "lag1_autocorr": lambda want: 1.0, "snr": lambda want: 1.0}


def _close(got: NeuronStats, want: dict, rtol: float):
    """Agreement with the offline values. Shape statistics are compared only where the neuron's spread
    is more than rounding noise on its level (there they are ill-conditioned in any implementation),
    and the SNR only away from its clamp at 0."""
    seen = want["count"] > 0
    real_spread = want["std"] > 1e-6 * np.maximum(1.0, np.abs(want["mean"]))
    for name in FIELDS:
        g, w = getattr(got, name), want[name]
        if name != "count":
            assert np.isnan(g[~seen]).all(), f"{name}: not NaN for a neuron never seen"
        compare = seen & np.isfinite(w)
        if name in ("skewness", "kurtosis", "lag1_autocorr", "snr"):
            compare &= real_spread
        if name == "snr":
            compare &= w > 1e-3
        tolerance = rtol * (np.abs(w) + FLOORS[name](want))
        assert np.all(np.abs(g - w)[compare] <= tolerance[compare]), (
            f"{name}: got {g[compare]}, want {w[compare]}")


@SETTINGS
@given(x=recordings())
def test_streaming_equals_offline_definitions(x):
    stats = StreamingStats(x.shape[1])
    for frame in x:
        stats.update(frame)
    _close(stats.snapshot(), reference_stats([x]), rtol=1e-6)


@SETTINGS
@given(x=recordings(), data=st.data())
def test_merge_of_any_split_equals_one_pass(x, data):
    cut = data.draw(st.integers(0, x.shape[0]))
    contiguous = data.draw(st.booleans())
    one_pass = StreamingStats(x.shape[1])
    one_pass.update_many(x[:cut])
    if not contiguous:
        one_pass.mark_epoch_boundary()
    one_pass.update_many(x[cut:])
    left, right = StreamingStats(x.shape[1]), StreamingStats(x.shape[1])
    left.update_many(x[:cut])
    right.update_many(x[cut:])
    left.merge(right, contiguous=contiguous)
    assert left.frames_seen == one_pass.frames_seen
    a, b = left.snapshot(), one_pass.snapshot()
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-7, atol=1e-9, err_msg=name)


@SETTINGS
@given(x=recordings(max_frames=80), data=st.data())
def test_epochs_equal_offline_definitions(x, data):
    n_cuts = data.draw(st.integers(0, 4))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, x.shape[0] - 1)), min_size=n_cuts, max_size=n_cuts)))
    epochs = [e for e in np.split(x, cuts) if e.shape[0] > 0]
    stats = StreamingStats(x.shape[1])
    stats.update_epochs(epochs)
    _close(stats.snapshot(), reference_stats(epochs), rtol=1e-6)


@SETTINGS
@given(x=recordings(), tau=st.floats(1.0, 500.0))
def test_forgetting_equals_weighted_definitions(x, tau):
    stats = StreamingStats(x.shape[1], time_constant_frames=tau)
    for frame in x:
        stats.update(frame)
    _close(stats.snapshot(), reference_stats([x], time_constant_frames=tau), rtol=1e-6)


@SETTINGS
@given(x=recordings())
def test_update_and_update_many_leave_identical_state(x):
    a, b = StreamingStats(x.shape[1]), StreamingStats(x.shape[1])
    for frame in x:
        a.update(frame)
    b.update_many(x)
    np.testing.assert_array_equal(a._state, b._state)
