"""tools/decoder_pretraining.py on small synthetic grating mice: the pretrained trunk learns, adaptation
touches only the new mouse's embeddings and the readout, calibration sets are balanced and never hold a
test trial, and the experiment's result has every decoder at every size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
REAL = Path(os.environ.get("RTCALM_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="module")
def dp(tool):
    return tool("decoder_pretraining")


def synthetic_mouse(dp, name: str, neurons: int, trials_per_class: int, seed: int, tuned: bool = True):
    """Direction-tuned neurons (random preferred direction, von Mises tuning, a rise over the window)."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(8), trials_per_class)
    preferred = rng.uniform(0, 2 * np.pi, neurons)
    angle = targets[:, None] * np.pi / 4 - preferred[None, :]  # (trials, neurons)
    tuning = np.exp(2.0 * (np.cos(angle) - 1.0)) if tuned else np.zeros_like(angle)
    rise = np.linspace(0.3, 1.0, 16)
    responses = 1.5 * tuning[:, None, :] * rise[None, :, None] + 0.3 * rng.standard_normal((targets.size, 16, neurons))
    order = rng.permutation(targets.size)
    return dp.Mouse(name, responses[order].astype(np.float32), targets[order])


SMALL = dict(pretrain_steps=600, pretrain_batch=32, adapt_steps=150, scratch_steps=100)


def test_the_pretrained_trunk_learns_and_transfers(dp):
    torch.set_num_threads(1)
    config = dp.DecoderConfig(bins=4, d_model=16)
    recipe = dp.Recipe(**SMALL)
    mice = [synthetic_mouse(dp, f"m{k}", 12, 8, seed=k) for k in range(3)]
    model, fit = dp.pretrain(mice, config, recipe, seed=0)
    assert fit["train_accuracy"] > 0.9
    new = synthetic_mouse(dp, "new", 15, 12, seed=10)
    calibration, test = np.arange(48), np.arange(48, 96)
    x = dp.features(new.responses, new.responses[calibration], config.bins)
    adapted = dp.adapt(model, "new", x[calibration], torch.from_numpy(new.targets[calibration]), recipe, seed=0)
    accuracy = np.mean(dp.predict(adapted, x[test], "new") == new.targets[test])
    assert accuracy > 0.5  # chance 0.125


def test_untuned_mice_teach_nothing(dp):
    config = dp.DecoderConfig(bins=4, d_model=16)
    mice = [synthetic_mouse(dp, f"m{k}", 12, 8, seed=k, tuned=False) for k in range(3)]
    model, _ = dp.pretrain(mice, config, dp.Recipe(**SMALL), seed=0)
    new = synthetic_mouse(dp, "new", 15, 12, seed=10, tuned=False)
    x = dp.features(new.responses, new.responses[:48], config.bins)
    adapted = dp.adapt(model, "new", x[:48], torch.from_numpy(new.targets[:48]), dp.Recipe(**SMALL), seed=0)
    assert np.mean(dp.predict(adapted, x[48:], "new") == new.targets[48:]) < 0.35


def test_adaptation_changes_only_the_new_embeddings_and_the_readout(dp):
    config = dp.DecoderConfig(bins=4, d_model=16)
    recipe = dp.Recipe(pretrain_steps=20, adapt_steps=10)
    mice = [synthetic_mouse(dp, f"m{k}", 6, 4, seed=k) for k in range(2)]
    model, _ = dp.pretrain(mice, config, recipe, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trunk = set(model.trunk_parameters())
    assert trunk and not any(n.startswith(("units.", "readout.")) for n in trunk)
    new = synthetic_mouse(dp, "new", 9, 4, seed=5)
    x = dp.features(new.responses, new.responses, config.bins)
    adapted = dp.adapt(model, "new", x, torch.from_numpy(new.targets), recipe, seed=0)
    after = dict(adapted.named_parameters())
    for name in trunk | {"units.m0", "units.m1"}:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["readout.weight"], before["readout.weight"])
    assert after["units.new"].shape == (9, 16)
    for name, parameter in model.named_parameters():  # the pretrained model itself is untouched
        assert torch.equal(parameter, before[name]) and parameter.requires_grad


def test_calibration_sets_are_balanced_nested_and_disjoint_from_test(dp):
    targets = np.random.default_rng(0).permutation(np.repeat(np.arange(8), 16))
    for fold, (train, test) in enumerate(dp.outer_folds(targets)):
        sets = dp.calibration_sets(targets, train, seed=fold)
        assert np.array_equal(sets["all"], np.sort(train))
        previous = np.array([], dtype=int)
        for size in ("16", "32", "64"):
            chosen = sets[size]
            assert chosen.size == int(size) and np.unique(chosen).size == chosen.size
            assert np.all(np.bincount(targets[chosen], minlength=8) == int(size) // 8)
            assert np.isin(chosen, train).all() and not np.isin(chosen, test).any()
            assert np.isin(previous, chosen).all()
            previous = chosen
    assert not np.array_equal(dp.calibration_sets(targets, train, 0)["16"], dp.calibration_sets(targets, train, 1)["16"])


def test_features_use_the_reference_statistics_only(dp):
    responses = np.random.default_rng(0).standard_normal((10, 8, 3)).astype(np.float32) * 3 + 5
    x = dp.features(responses, responses[:4], bins=2)
    assert x.shape == (10, 3, 2)
    reference = (responses[:4] - responses[:4].mean(axis=(0, 1))) / responses[:4].std(axis=(0, 1))
    np.testing.assert_allclose(x[:4].numpy().mean(axis=2), reference.mean(axis=1), atol=1e-5)
    responses[4:] += 100.0  # the other trials do not change how the reference trials are scaled
    np.testing.assert_allclose(dp.features(responses, responses[:4], bins=2)[:4].numpy(), x[:4].numpy(), atol=1e-5)


def test_the_result_has_every_decoder_at_every_size(dp):
    config = dp.DecoderConfig(bins=4, d_model=8)
    recipe = dp.Recipe(pretrain_steps=10, adapt_steps=3, scratch_steps=3)
    mice = [synthetic_mouse(dp, f"m{k}", 5 + k, 10, seed=k) for k in range(3)]
    result = dp.run(mice, [0, 1], config, recipe, log=lambda _: None)
    assert set(result["per_mouse"]) == {"m0", "m1", "m2"}
    for decoder in dp.DECODERS:
        for size in dp.SIZES:
            for row in result["per_mouse"].values():
                assert len(row[decoder][size]["folds"]) == dp.FOLDS
                assert 0.0 <= row[decoder][size]["mean"] <= 1.0
            means = [row[decoder][size]["mean"] for row in result["per_mouse"].values()]
            assert result["mean"][decoder][size]["mean"] == pytest.approx(np.mean(means))
    row = result["per_mouse"]["m0"]
    assert row["calibration_trials"]["16"] == [16] * 5 and row["calibration_trials"]["all"] == [80 - 16] * 5
    seeds = [row["pretrained_per_seed"][s]["all"]["mean"] for s in ("0", "1")]
    assert row["pretrained"]["all"]["mean"] == pytest.approx(np.mean(seeds))
    assert set(result["mean_per_seed"]["scratch"]) == {"0", "1"}
    assert all(b in (1, 2, 4, 8) for b in row["lda_bins"]["16"])
    within = result["within_pretraining_mice"]["m0"]
    assert set(within["held_out_accuracy"]) == set(within["lda_held_out_accuracy"]) == {"m1", "m2"}


def test_the_within_mouse_check_sees_learning(dp):
    config = dp.DecoderConfig(bins=4, d_model=16)
    mice = [synthetic_mouse(dp, f"m{k}", 12, 16, seed=k) for k in range(2)]
    check = dp.within_mouse_check(mice, config, dp.Recipe(**SMALL), seed=0)
    assert min(check["held_out_accuracy"].values()) > 0.6 and min(check["lda_held_out_accuracy"].values()) > 0.6
    untuned = [synthetic_mouse(dp, f"m{k}", 12, 16, seed=k, tuned=False) for k in range(2)]
    assert max(dp.within_mouse_check(untuned, config, dp.Recipe(**SMALL), seed=0)["held_out_accuracy"].values()) < 0.4


def test_lda_binned_decodes_two_trials_per_direction(dp):
    """The LDA row at 16 calibration trials is decode-eval's own lda_binned (inner CV leaving one trial
    out, the shrinkage from the pooled residuals): it must decode, and pick the late bins that alone carry
    the direction."""
    from rtcalm.eval.decode import BinnedDecoder

    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(8), 6)
    per_frame = rng.standard_normal((48, 8, 8))  # (trials, frames, neurons)
    per_frame[:, :4] *= 3.0  # loud, untuned early frames
    per_frame[np.arange(48), 4:, targets] += 2.0  # the direction only in the second half
    calibration = np.concatenate([np.flatnonzero(targets == c)[:2] for c in range(8)])
    test = np.setdiff1d(np.arange(48), calibration)
    decoder = BinnedDecoder(per_frame, targets, "lda", "accuracy")
    predictions = decoder(calibration, test)
    assert decoder.selected[-1]["bins"] >= 2
    assert np.mean(predictions == targets[test]) > 0.6  # chance 0.125


@pytest.mark.skipif(not (REAL / "surlab_Park_et_al").is_dir(), reason=f"real data not found at {REAL}")
def test_the_six_grating_mice_load(dp):
    mice = dp.load_mice(REAL)
    assert [m.name for m in mice] == [f"mrcuts{k}" for k in (24, 26, 27, 28, 29, 30)]
    for mouse in mice:
        assert mouse.responses.shape[:2] == (128, 32) and np.all(np.bincount(mouse.targets) == 16)
