"""The normalisation the model sees, checked against plain numpy (the offline reference of the other
tests reuses this code, so it is pinned down independently here), and sequence classification."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import make_config

from rtcalm.daemon.session import DUPLICATE, GAP, IN_ORDER, OUT_OF_ORDER, Scale, Session, new_stats
from rtcalm.engine import load_engine


def test_scale_is_the_running_mean_and_std_of_the_frames_so_far():
    rng = np.random.default_rng(0)
    frames = (rng.gamma(2.0, 1.0, (60, 7)) - 1).astype(np.float32)
    frames[10:20, 2] = np.nan  # missing values do not count
    frames[:, 5] = 3.0  # constant: no scale
    config = make_config(stats={"warmup_frames": 12})
    stats, scale = new_stats(7, config), Scale(7, 12)
    z = np.empty(7, np.float32)
    forecast = np.empty((7, 3), np.float32)
    for t, frame in enumerate(frames):
        stats.update(frame)
        scale.update(stats)
        scale.normalise_into(frame, z)
        seen = frames[:t + 1]
        count = np.isfinite(seen).sum(axis=0)
        mean = np.nanmean(seen, axis=0)
        std = np.nanstd(seen, axis=0)
        usable = (count >= 12) & (std > 1e-6)
        np.testing.assert_allclose(scale.mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scale.std[usable], std[usable], rtol=1e-5)
        assert np.isnan(scale.std[~usable]).all()
        expected = np.where(usable, (frame - mean) / np.where(usable, std, 1.0), np.nan)
        np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
        scale.denormalise_into(np.tile(z[:, None], (1, 3)), forecast)
        np.testing.assert_allclose(forecast[usable & np.isfinite(frame), 0], frame[usable & np.isfinite(frame)],
                                   rtol=1e-4, atol=1e-4)
    assert np.isnan(z[5])


def test_sequence_classification(checkpoint):
    session = Session("s", 3, 1, load_engine(str(checkpoint), backend="torch"), make_config(), pinned=False)
    assert session.classify(17) == (IN_ORDER, 0)  # the first frame may have any number
    session.last_seq = 17
    assert session.classify(18) == (IN_ORDER, 0)
    assert session.classify(21) == (GAP, 3)
    assert session.classify(17) == (DUPLICATE, 0)
    assert session.classify(2) == (OUT_OF_ORDER, 0)


@pytest.mark.parametrize("k", [1, 5, 300])
def test_history_tail_is_the_latest_normalised_frames_in_order(checkpoint, k):
    config = make_config(limits={"history_frames": 8, "max_backlog_frames": 4, "max_gap_frames": 2},
                         stats={"warmup_frames": 2})
    session = Session("s", 2, 1, load_engine(str(checkpoint), backend="torch"), config, pinned=False)
    rows = []
    for t in range(20):
        if session.pending_full():
            session.take_pending()
        session.add_frame(np.array([t, (-1) ** t * t], np.float32))
        rows.append(session.pending[session.n_pending - 1].copy())
    expected = np.array(rows[-min(k, 8):])
    np.testing.assert_array_equal(session.history_tail(k), expected)
    assert np.isfinite(expected).all() and session.stream_frames == 20


@pytest.mark.parametrize("method", ["poyo-cap", "knee"])
def test_the_mask_is_refreshed_at_the_frame_it_is_due(checkpoint, method):
    """refresh_due_mask (called after each prediction is sent, and by the offline replay) refreshes the
    predictable mask at the frame that makes it due, from the statistics at that frame; a mask whose knee
    thresholds must be re-chosen first is left to housekeeping (None), never done on the per-frame path."""
    from rtcalm.daemon.pipeline import refresh_due_mask
    from rtcalm.stats import StreamingStats, is_predictable

    config = make_config(stats={"predictable_method": method, "predictable_refresh_frames": 5,
                                "thresholds_refresh_frames": 20})
    rng = np.random.default_rng(1)
    frames = (rng.gamma(0.5, 1.0, (30, 40)) * rng.uniform(0.2, 3.0, 40)).astype(np.float32)
    session = Session("s", 40, 1, load_engine(str(checkpoint), backend="torch"), config, pinned=False)
    refreshed = []
    for t, frame in enumerate(frames):
        if session.pending_full():
            session.take_pending()
        session.add_frame(frame)
        due_thresholds = session.thresholds_due(method, 20)
        if refresh_due_mask(session, config.stats) is not None:
            refreshed.append(t + 1)
            reference = StreamingStats(40)
            reference.update_many(frames[:t + 1])
            snapshot = reference.snapshot()
            np.testing.assert_array_equal(session.predictable,
                                          is_predictable(snapshot.skewness, snapshot.kurtosis, session.thresholds))
        elif due_thresholds and session.stream_frames - session.frames_at_mask >= 5:
            session.refresh_predictable(method, 20)  # what housekeeping does when the daemon is idle
    if method == "poyo-cap":
        assert refreshed == [5, 10, 15, 20, 25, 30]
    else:  # housekeeping chooses the knee at 5 and 25 (20 frames later); every other due mask is per frame
        assert refreshed == [10, 15, 20, 30]
