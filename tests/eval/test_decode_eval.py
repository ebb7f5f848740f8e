"""The decoding evaluation protocol: folds, baselines, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rtcalm.data import Recording, TrialTable
from rtcalm.eval.decode import DecodingError, evaluate, fold_indices, task_data


def _trial_recording(n_trials=64, n_neurons=12, n_frames=20, informative=True, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    directions = np.tile(np.arange(8) * 45.0, n_trials // 8)
    dff = rng.standard_normal((n_trials, n_frames, n_neurons)).astype(np.float32) * 0.5
    time = np.linspace(-1, 2, n_frames, endpoint=False)
    if informative:
        preferred = rng.integers(0, 8, n_neurons)
        for k in range(n_trials):
            dff[k][np.ix_(time >= 0, preferred == int(directions[k] // 45))] += 2.0
    speed = np.repeat(rng.random((n_trials, 1)), n_frames, axis=1)
    dff[:, time >= 0, 0] += 3 * speed[:, time >= 0]  # neuron 0 encodes running speed
    return Recording(dff=dff, rate_hz=16.0, neuron_ids=np.arange(n_neurons), trial_time_s=time,
                     trials=TrialTable({"onset_s": np.full(n_trials, np.nan), "direction_deg": directions,
                                        "orientation_deg": directions % 180}),
                     continuous_labels={"running_speed": speed} if labels else {})


def test_folds_partition_trials_and_are_stratified():
    targets = np.repeat(np.arange(8), 16)
    splits = fold_indices(targets, "accuracy", folds=4, seed=0)
    seen = np.concatenate([test for _, test in splits])
    assert np.array_equal(np.sort(seen), np.arange(128))  # every trial tested exactly once
    for train, test in splits:
        assert not set(train) & set(test)  # no trial in both train and test
        assert set(np.bincount(targets[test])) == {4}  # stratified: 4 of each class per fold


def test_informative_trials_beat_chance_and_uninformative_do_not():
    result = evaluate([_trial_recording()], "direction", None, folds=4)
    assert result["metric"] == "accuracy" and "model" not in result
    assert result["baselines"]["linear_mean_response"] > 0.8
    assert result["baselines"]["chance"] <= 0.2
    noise = evaluate([_trial_recording(informative=False, seed=1)], "direction", None, folds=4)
    assert noise["baselines"]["linear_mean_response"] < 0.4


def test_regression_task_and_model_features():
    rec = _trial_recording(informative=False)
    def features(r):
        return r.dff[:, 10:, :1].mean(axis=1)  # neuron 0's response: the speed carrier

    result = evaluate([rec], "speed", features, folds=4)
    assert result["metric"] == "r2" and result["model"] > 0.8
    assert result["baselines"]["chance"] < 0.05
    assert result["per_file"][0]["trials"] == 64


def test_bad_task_and_missing_labels():
    rec = _trial_recording(labels=False)
    with pytest.raises(DecodingError, match="unknown task"):
        evaluate([rec], "colour", None)
    with pytest.raises(DecodingError, match="running_speed"):
        task_data(rec, "speed")
    contiguous = Recording(dff=np.zeros((100, 3)), rate_hz=30, neuron_ids=[0, 1, 2])
    with pytest.raises(DecodingError, match="trial-structured"):
        task_data(contiguous, "direction")
    with pytest.raises(DecodingError, match="folds"):
        evaluate([_trial_recording()], "direction", None, folds=1)
    with pytest.raises(DecodingError, match="rarest class"):
        evaluate([_trial_recording(n_trials=16)], "direction", None, folds=5)


@pytest.mark.real_data
def test_real_grating_baselines(grating_files):
    from rtcalm.data import load_recording

    result = evaluate([load_recording(grating_files[3])], "direction", None)  # mrcuts28: strongly tuned
    assert result["baselines"]["linear_mean_response"] > 0.5 > result["baselines"]["chance"]


def test_finetuned_decoder_trains_a_copy_per_fold_and_leaves_the_model_alone():
    import torch

    from rtcalm.eval.decode import finetuned_decoder, model_features
    from rtcalm.model import Calm, CalmConfig

    torch.manual_seed(0)
    model = Calm(CalmConfig(token_window_frames=4, codebook_size=32, code_dim=4, tokenizer_hidden=16, d_model=16,
                            n_layers=1, n_heads=2, mlp_hidden=32, attention_window_frames=8, n_latents=4,
                            forecast_horizon_frames=5, input_mode="continuous", rate_hz=16.0)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate([_trial_recording()], "direction", model_features(model), folds=4,
                      fold_decoders={"model_finetuned": finetuned_decoder(model, steps=5, batch_trials=8)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # tuned copies only
    row = result["per_file"][0]
    assert row["model_finetuned"] == result["model_finetuned"] > 0.5  # 8 classes: chance 0.125
    regression = evaluate([_trial_recording(informative=False)], "speed", None, folds=4,
                          fold_decoders={"model_finetuned": finetuned_decoder(model, steps=3, batch_trials=8)})
    assert np.isfinite(regression["model_finetuned"])


def test_finetune_steps_must_be_positive(capsys):
    from rtcalm.cli import main

    with pytest.raises(SystemExit):
        main(["decode-eval", "x.mat", "--task", "direction", "--finetune-steps", "0"])
    assert "--finetune-steps" in capsys.readouterr().err
