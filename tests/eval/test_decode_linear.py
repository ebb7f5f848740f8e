"""Strong linear decoders: shrinkage LDA against scikit-learn, time bins, inner CV that never sees the
outer test fold, standard errors, and the time-resolved head."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import Recording, TrialTable
from rtcalm.eval.decode import BinnedDecoder, TimeResolvedDecoder, evaluate, standard_error
from rtcalm.model.heads.linear import ShrinkageLDA, time_binned


@pytest.mark.parametrize("trials, features", [(96, 12), (80, 300)])  # fewer and more features than trials
def test_shrinkage_lda_is_sklearns_lsqr_auto(trials, features):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(0)
    targets = np.arange(trials) % 8
    x = rng.standard_normal((trials, features)) * rng.uniform(0.2, 3.0, features)
    x[:, :4] += targets[:, None] * 0.4
    x[:, 5] = 2.0  # a constant feature
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, targets)
    ours = ShrinkageLDA().fit(x, targets)
    assert np.allclose(ours.coef_, reference.coef_, rtol=1e-6, atol=1e-8 * np.abs(reference.coef_).max())
    assert np.allclose(ours.intercept_, reference.intercept_, rtol=1e-6, atol=1e-6)
    held_out = rng.standard_normal((200, features)) * 2
    assert np.array_equal(ours.predict(held_out), reference.predict(held_out))


@pytest.mark.parametrize("per_class", [1, 2])
def test_shrinkage_lda_decodes_from_two_trials_per_class(per_class):
    """Two trials per class (or one, in some classes): the per-class Ledoit-Wolf estimate is 0 or undefined
    and scikit-learn's weights are NaN; ours pool the residuals and still decode a clear signal."""
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((8, 40)) * 2.0
    counts = np.full(8, 2)
    counts[:4] = per_class  # per_class 1: half the classes have a single trial
    targets = np.repeat(np.arange(8), counts)
    x = signal[targets] + rng.standard_normal((targets.size, 40))
    lda = ShrinkageLDA().fit(x, targets)
    assert np.isfinite(lda.coef_).all() and np.isfinite(lda.intercept_).all()
    test_targets = np.repeat(np.arange(8), 20)
    accuracy = np.mean(lda.predict(signal[test_targets] + rng.standard_normal((160, 40))) == test_targets)
    assert accuracy > 0.8


def test_shrinkage_lda_without_any_spread_within_classes_is_nearest_mean():
    means = np.random.default_rng(2).standard_normal((8, 5))
    lda = ShrinkageLDA().fit(means, np.arange(8))  # one trial per class
    assert np.isfinite(lda.coef_).all()
    probes = means + 0.01
    assert np.array_equal(lda.predict(probes), np.argmin(((probes[:, None] - means[None]) ** 2).sum(-1), axis=1))


def test_inner_cv_leaves_one_out_when_a_class_has_two_trials():
    from rtcalm.eval.linear import inner_splits

    targets = np.repeat(np.arange(8), 2)
    splits = inner_splits(targets, "accuracy")
    assert len(splits) == 16 and all(validation.tolist() == [i] for i, (_, validation) in enumerate(splits))
    assert all(np.bincount(targets[train], minlength=8).min() >= 1 for train, _ in splits)
    assert len(inner_splits(np.repeat(np.arange(8), 6), "accuracy")) == 4  # enough trials: stratified folds

def test_time_bins_are_contiguous_means():
    per_frame = np.arange(8, dtype=float)[None, :, None] * np.array([1.0, 10.0])  # (1 trial, 8 frames, 2)
    assert np.allclose(time_binned(per_frame, 4), [[0.5, 5, 2.5, 25, 4.5, 45, 6.5, 65]])  # bin-major
    assert np.allclose(time_binned(per_frame, 1), [[3.5, 35]])
    assert time_binned(np.zeros((3, 7, 5)), 2).shape == (3, 10)  # uneven bins: 4 + 3 frames
    with pytest.raises(ValueError, match="n_bins"):
        time_binned(per_frame, 9)


def _time_coded_recording(n_trials=128, n_neurons=10, seed=0):
    """Direction is in the *time course* only: each neuron rises early and falls late (or the reverse)
    with a sign pattern set by the direction, so every neuron's mean over the window is the same."""
    rng = np.random.default_rng(seed)
    directions = np.tile(np.arange(8) * 45.0, n_trials // 8)
    time = -1 + np.arange(48) / 16
    signs = rng.choice([-1.0, 1.0], size=(8, n_neurons))
    dff = rng.standard_normal((n_trials, 48, n_neurons)).astype(np.float32)
    early, late = (time >= 0) & (time < 1), (time >= 1) & (time < 2)
    for k, d in enumerate(directions):
        s = signs[int(d // 45)]
        dff[k][early] += 1.0 * s
        dff[k][late] -= 1.0 * s
    return Recording(dff=dff, rate_hz=16.0, neuron_ids=np.arange(n_neurons), trial_time_s=time,
                     trials=TrialTable({"onset_s": np.full(n_trials, np.nan), "direction_deg": directions}))


def test_binned_decoders_read_the_time_course_that_the_mean_response_loses():
    result = evaluate([_time_coded_recording()], "direction", None, folds=4)
    baselines = result["baselines"]
    assert baselines["lda_binned"] > 0.8 and baselines["logistic_binned"] > 0.8  # chance 0.125
    assert baselines["linear_mean_response"] < 0.3
    row = result["per_file"][0]
    assert all(choice["bins"] >= 2 for choice in row["selected"]["lda_binned"])  # one bin cannot see it
    assert set(result["standard_errors"]) == set(baselines)
    assert row["standard_errors"]["lda_binned"] == pytest.approx(
        np.sqrt(row["lda_binned"] * (1 - row["lda_binned"]) / 128))


def _selection_and_training_predictions(decoder_class, per_frame, targets, train, test, **kwargs):
    decoder = decoder_class(per_frame, targets, metric="accuracy", **kwargs)
    decoder(train, test)
    return decoder.selected


@pytest.mark.parametrize("decoder_class, width", [(BinnedDecoder, None), (TimeResolvedDecoder, 3)])
def test_inner_cv_choices_never_depend_on_the_test_fold(decoder_class, width):
    rec = _time_coded_recording()
    per_frame = rec.dff[:, (rec.trial_time_s >= 0) & (rec.trial_time_s < 2)].astype(np.float64)
    if width:  # a per-neuron feature vector per frame, like the backbone's hidden state
        rng = np.random.default_rng(1)
        per_frame = per_frame[..., None] * rng.standard_normal(width) + 0.3 * rng.standard_normal(
            per_frame.shape + (width,))
    targets = np.unique(rec.trials["direction_deg"], return_inverse=True)[1]
    kwargs = {"kind": "lda"} if decoder_class is BinnedDecoder else {}
    rng = np.random.default_rng(2)
    test = np.sort(rng.choice(128, 32, replace=False))
    train = np.setdiff1d(np.arange(128), test)
    original = _selection_and_training_predictions(decoder_class, per_frame, targets, train, test, **kwargs)
    scrambled_frames = per_frame.copy()
    scrambled_frames[test] = rng.standard_normal(scrambled_frames[test].shape) * 50
    scrambled_targets = targets.copy()
    scrambled_targets[test] = rng.permutation(scrambled_targets[test])
    assert _selection_and_training_predictions(decoder_class, scrambled_frames, scrambled_targets, train, test,
                                               **kwargs) == original
    # and the choice does depend on the training trials (the test can fail)
    flat = per_frame.copy()
    flat[train] = flat[train].mean(axis=1, keepdims=True)  # the time course removed from the training trials
    assert _selection_and_training_predictions(decoder_class, flat, targets, train, test, **kwargs) != original


def test_time_resolved_head_on_per_neuron_vectors():
    rec = _time_coded_recording()
    response = (rec.trial_time_s >= 0) & (rec.trial_time_s < 2)
    rng = np.random.default_rng(3)
    axis = rng.standard_normal(4)
    per_frame = rec.dff[:, response, :, None] * axis + 0.1 * rng.standard_normal((128, response.sum(), 10, 4))
    targets = np.unique(rec.trials["direction_deg"], return_inverse=True)[1]
    decoder = TimeResolvedDecoder(per_frame.astype(np.float32), targets, "accuracy")
    predictions = np.empty(128)
    for k in range(4):  # folds of whole repeats: every direction in every training set
        test = np.flatnonzero((np.arange(128) // 8) % 4 == k)
        predictions[test] = decoder(np.setdiff1d(np.arange(128), test), test)
    assert np.mean(predictions == targets) > 0.8
    assert all(choice["bins"] >= 2 and choice["components"] in (1, 2) for choice in decoder.selected)


def test_standard_errors():
    targets = np.arange(100) % 2
    assert standard_error(np.where(np.arange(100) < 50, targets, 1 - targets), targets, "accuracy") == \
        pytest.approx(0.05)
    rng = np.random.default_rng(0)
    values = rng.standard_normal(400)
    close, far = values + 0.1 * rng.standard_normal(400), values + 1.0 * rng.standard_normal(400)
    assert 0 < standard_error(close, values, "r2") < standard_error(far, values, "r2") < 0.2
    rare = np.zeros(128)
    rare[:4] = 1.0  # a behaviour in 4 of 128 trials: many resamples hold none of them
    assert 0 < standard_error(np.full(128, rare.mean()), rare, "r2") < 1.0


@pytest.mark.parametrize("metric", ["accuracy", "r2"])
def test_time_resolved_decoder_scores_the_daemons_head(metric):
    """The decoder's test predictions come from the head file format's own fit (fit_time_resolved_head),
    and equal the plain numpy estimator on PCA-projected time bins."""
    from rtcalm.eval.linear import make_estimator
    from rtcalm.model.heads.linear import principal_projection

    rng = np.random.default_rng(4)
    per_frame = rng.standard_normal((64, 12, 5, 3)).astype(np.float32)
    targets = np.arange(64) % 4 if metric == "accuracy" else per_frame[:, 6:, 0, 0].mean(1).astype(np.float64)
    per_frame[:, :6, 1, :] += (np.arange(64) % 4)[:, None, None] * 0.5
    decoder = TimeResolvedDecoder(per_frame, targets, metric)
    train, test = np.arange(64) % 4 != 0, np.arange(64) % 4 == 0
    train, test = np.flatnonzero(train), np.flatnonzero(test)
    penalty = None if metric == "accuracy" else 10.0
    ours = decoder.fit_head(train, 2, 3, penalty).predict(per_frame[test])
    mean, basis = principal_projection(per_frame[train], 2)
    features = time_binned((per_frame - mean) @ basis, 3)
    reference = make_estimator("lda" if metric == "accuracy" else "ridge", penalty).fit(features[train], targets[train])
    if metric == "accuracy":
        assert np.array_equal(ours, reference.predict(features[test]))
    else:
        assert np.allclose(ours, reference.predict(features[test]), atol=1e-4)


def test_time_resolved_head_on_raw_frames():
    """One value per neuron and frame (the raw ΔF/F the backbone reads): nothing to project, same head."""
    rec = _time_coded_recording()
    per_frame = rec.dff[:, (rec.trial_time_s >= 0) & (rec.trial_time_s < 2), :, None]
    targets = np.unique(rec.trials["direction_deg"], return_inverse=True)[1]
    result = evaluate([rec], "direction", None, folds=4,
                      fold_decoders={"raw": lambda r, data: TimeResolvedDecoder(per_frame, data.targets, data.metric)})
    assert result["raw"] > 0.8 and all(c["components"] == 1 for c in result["per_file"][0]["selected"]["raw"])
    assert targets.shape == (128,)
