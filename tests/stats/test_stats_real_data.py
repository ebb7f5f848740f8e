"""The streaming statistics on the real recordings in ../shared/data/real equal scipy's (relative error
<= 1e-9 in float64), also when the frames arrive one at a time or in merged chunks."""

from __future__ import annotations

import numpy as np
import pytest
from stats_reference import reference_stats, scipy_moments

from rtcalm.data import load_recording
from rtcalm.stats import StreamingStats, stats_of_recording

pytestmark = pytest.mark.real_data

RTOL = 1e-9


def _check(got, want, fields):
    for name in fields:
        g, w = getattr(got, name), want[name]
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        ok = ~np.isnan(w)
        if name == "mean":
            assert np.all(np.abs(g[ok] - w[ok]) <= RTOL * np.maximum(want["std"][ok], np.abs(w[ok]))), name
        elif name == "snr":  # sqrt(max(signal_var, 0) / noise_var): at 0 the clamp makes it non-smooth
            np.testing.assert_allclose(g[ok], w[ok], rtol=RTOL, atol=1e-6, err_msg=name)
        else:
            rel = np.abs(g[ok] - w[ok]) / np.abs(w[ok])
            assert rel.max(initial=0.0) <= RTOL, f"{name}: max relative error {rel.max():.3g}"


def test_every_real_recording_matches_scipy(all_real_files):
    assert len(all_real_files) == 21
    for path in all_real_files:
        rec = load_recording(path)
        got = stats_of_recording(rec)
        all_frames = rec.dff.reshape(-1, rec.n_neurons)  # all frames of all epochs
        _check(got, scipy_moments(all_frames), ("mean", "std", "skewness", "kurtosis"))
        _check(got, reference_stats(rec.epochs()), ("mean", "std", "skewness", "kurtosis", "lag1_autocorr", "snr"))
        assert np.isfinite(got.skewness).all(), path  # no constant traces in these files


def test_frame_by_frame_and_merged_chunks_on_the_longest_recording(cascade_mat):
    rec = load_recording(cascade_mat)
    want = scipy_moments(rec.dff)
    one_by_one = StreamingStats(rec.n_neurons)
    for frame in rec.dff:
        one_by_one.update(frame)
    _check(one_by_one.snapshot(), want, ("mean", "std", "skewness", "kurtosis"))

    merged = StreamingStats(rec.n_neurons)
    for chunk in np.array_split(rec.dff, 7):
        part = StreamingStats(rec.n_neurons)
        part.update_many(chunk)
        merged.merge(part, contiguous=True)
    _check(merged.snapshot(), reference_stats([rec.dff]), ("mean", "std", "skewness", "kurtosis", "lag1_autocorr"))


def test_trial_structured_lag1_does_not_pair_across_trials(grating_files):
    rec = load_recording(grating_files[0])
    assert rec.is_trial_structured
    got = stats_of_recording(rec)
    _check(got, reference_stats(rec.epochs()), ("lag1_autocorr",))
    glued = reference_stats([rec.dff.reshape(-1, rec.n_neurons)])
    assert not np.allclose(got.lag1_autocorr, glued["lag1_autocorr"], rtol=1e-6)
