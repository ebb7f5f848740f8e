"""Decoding evaluation: the protocol behind ``rtcalm decode-eval`` (keep it stable).

For a trial-structured recording, every trial is one sample. k-fold cross-validation over trials
(stratified by class for classification; shuffled with a fixed seed) fits each decoder on the training
folds of that same recording and scores it on the held-out fold; scores are pooled over the held-out
predictions of all folds (accuracy, or R² = 1 - SSE/SST over all trials).

Tasks:

=========== ============== =================================================================
task        metric         target per trial
=========== ============== =================================================================
direction   accuracy       ``trials["direction_deg"]`` (8 classes on the grating files)
orientation accuracy       ``trials["orientation_deg"]`` (direction mod 180)
speed       r2             mean ``running_speed`` over the response window
pupil       r2             mean ``pupil`` over the response window
=========== ============== =================================================================

The response window is ``0 <= trial_time_s < response_end_s`` (stimulus on; 2 s on the grating files).

Decoders compared on the same folds:

- ``model``: a linear head (logistic / ridge) on features from the model (``feature_fn``), backbone frozen;
- ``model_finetuned`` (``--finetune-steps``): that head and a copy of the backbone trained together on
  the training folds (:func:`finetuned_decoder`);
- ``linear_mean_response``: the same kind of head on each neuron's mean ΔF/F in the response window;
- ``chance``: the majority class of the training folds (classification) or their mean (regression).

Heads standardise their features on the training folds and use a fixed L2 penalty (no tuning on the
test fold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rtcalm.data.recording import Recording
from rtcalm.errors import RtcalmError

TASKS = {"direction": "accuracy", "orientation": "accuracy", "speed": "r2", "pupil": "r2"}
FeatureFn = Callable[[Recording], np.ndarray]  # recording -> (trials, features)
# (recording, its task data) -> fit_predict(train trials, test trials) -> predictions for the test trials
FoldDecoderFactory = Callable[[Recording, "TaskData"], Callable[[np.ndarray, np.ndarray], np.ndarray]]


class DecodingError(RtcalmError, ValueError):
    pass


@dataclass
class TaskData:
    targets: np.ndarray  # (trials,) class labels (int) or values (float)
    metric: str
    response_frames: np.ndarray  # bool (frames_per_trial,)


def task_data(recording: Recording, task: str, response_end_s: float = 2.0) -> TaskData:
    if task not in TASKS:
        raise DecodingError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    source = recording.meta.source
    if not recording.is_trial_structured:
        raise DecodingError(f"{source}: decode-eval needs a trial-structured recording (epochs around stimulus onsets)")
    response = (recording.trial_time_s >= 0) & (recording.trial_time_s < response_end_s)
    if not response.any():
        raise DecodingError(f"{source}: no frames in the response window 0..{response_end_s} s")
    if TASKS[task] == "accuracy":
        column = f"{task}_deg"
        if recording.trials is None or column not in recording.trials:
            raise DecodingError(f"{source}: task {task!r} needs a trial column {column!r}; this file has "
                                f"{recording.label_names or 'no labels'}")
        values = np.asarray(recording.trials[column], dtype=np.float64)
        if not np.isfinite(values).all():
            raise DecodingError(f"{source}: trial column {column!r} has missing values")
        _, targets = np.unique(values, return_inverse=True)
    else:
        label = {"speed": "running_speed", "pupil": "pupil"}[task]
        if label not in recording.continuous_labels:
            raise DecodingError(f"{source}: task {task!r} needs a {label!r} label; this file has "
                                f"{recording.label_names or 'no labels'}")
        targets = recording.continuous_labels[label][:, response].mean(axis=1).astype(np.float64)
    return TaskData(targets=targets, metric=TASKS[task], response_frames=response)


def mean_response_features(recording: Recording, response_frames: np.ndarray) -> np.ndarray:
    return recording.dff[:, response_frames, :].mean(axis=1)  # (trials, neurons)


def fold_indices(targets: np.ndarray, metric: str, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) trial indices; every trial is in exactly one test fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = targets.shape[0]
    if folds < 2 or folds > n:
        raise DecodingError(f"--folds must be between 2 and the number of trials ({n}), got {folds}")
    if metric == "accuracy":
        smallest = np.bincount(targets).min()
        if smallest < folds:
            raise DecodingError(f"the rarest class has {smallest} trials, fewer than --folds {folds}")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(n), targets))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n)))


def _fit_predict(features: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray, metric: str):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if metric == "accuracy":
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    else:
        head = make_pipeline(StandardScaler(), Ridge(alpha=10.0))
    head.fit(features[train], targets[train])
    return head.predict(features[test])


def _chance_predict(targets, train, test, metric):
    if metric == "accuracy":
        return np.full(test.shape[0], np.bincount(targets[train]).argmax())
    return np.full(test.shape[0], targets[train].mean())


def _score(predictions: np.ndarray, targets: np.ndarray, metric: str) -> float:
    if metric == "accuracy":
        return float(np.mean(predictions == targets))
    total = float(np.sum((targets - targets.mean()) ** 2))
    return 1.0 - float(np.sum((targets - predictions) ** 2)) / total if total > 0 else float("nan")


def evaluate_recording(recording: Recording, task: str, feature_fn: FeatureFn | None, folds: int = 5,
                       seed: int = 0, fold_decoders: dict[str, FoldDecoderFactory] | None = None) -> dict:
    """Scores of every decoder on one recording. ``fold_decoders``: further decoders by name that fit
    per fold themselves (e.g. :func:`finetuned_decoder`), scored on the same folds."""
    data = task_data(recording, task)
    splits = fold_indices(data.targets, data.metric, folds, seed)
    mean_responses = mean_response_features(recording, data.response_frames)
    decoders: dict[str, Callable] = {
        "linear_mean_response": lambda tr, te: _fit_predict(mean_responses, data.targets, tr, te, data.metric),
        "chance": lambda tr, te: _chance_predict(data.targets, tr, te, data.metric),
    }
    if feature_fn is not None:
        model_features = feature_fn(recording)
        if model_features.shape[0] != data.targets.shape[0]:
            raise AssertionError("feature_fn must return one row per trial")
        decoders = {"model": lambda tr, te: _fit_predict(model_features, data.targets, tr, te, data.metric), **decoders}
    for name, factory in (fold_decoders or {}).items():
        decoders[name] = factory(recording, data)
    scores = {}
    for name, decoder in decoders.items():
        predictions = np.empty_like(data.targets, dtype=np.float64)
        for train, test in splits:
            predictions[test] = decoder(train, test)
        scores[name] = _score(predictions, data.targets, data.metric)
    return {"file": recording.meta.source, "mouse": recording.meta.mouse, "trials": int(data.targets.shape[0]),
            "neurons": recording.n_neurons, **scores}


def evaluate(recordings: Sequence[Recording], task: str, feature_fn: FeatureFn | None, folds: int = 5,
             seed: int = 0, fold_decoders: dict[str, FoldDecoderFactory] | None = None) -> dict:
    """The ``--json`` document of ``rtcalm decode-eval``: means over files of the per-file scores."""
    if task not in TASKS:
        raise DecodingError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    per_file = [evaluate_recording(rec, task, feature_fn, folds, seed, fold_decoders) for rec in recordings]
    result = {"task": task, "metric": TASKS[task], "folds": folds}
    if feature_fn is not None:
        result["model"] = float(np.mean([f["model"] for f in per_file]))
    for name in fold_decoders or {}:
        result[name] = float(np.mean([f[name] for f in per_file]))
    result["baselines"] = {name: float(np.mean([f[name] for f in per_file]))
                           for name in ("linear_mean_response", "chance")}
    result["per_file"] = per_file
    return result


def model_inputs(model, recording: Recording, response_end_s: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """What the model reads of a trial recording: (z (trials, frames, N) float32, response (frames,) bool).

    Each epoch is resampled to the model's rate (:mod:`rtcalm.data.resample`) and z-scored per neuron with
    the statistics of all the recording's frames (label-free, so nothing about the held-out fold's labels
    leaks); the model runs from the epoch's first frame (1 s before onset on the grating files)."""
    from rtcalm.data.resample import resample_recording
    from rtcalm.stats import stats_of_recording

    resampled = resample_recording(recording, model.config.rate_hz)
    stats = stats_of_recording(resampled)
    std = np.where(stats.std > 1e-8, stats.std, 1.0)
    z = ((resampled.dff - stats.mean) / std).astype(np.float32)
    return z, (resampled.trial_time_s >= 0) & (resampled.trial_time_s < response_end_s)


def pooled_hidden(model, z: np.ndarray, response: np.ndarray):
    """CalM's per-neuron hidden states (``CalmOutput.hidden``) averaged over the response window:
    (trials, N, D) torch tensor, without gradients."""
    import torch

    model.eval()
    with torch.inference_mode():
        hidden = model(torch.from_numpy(z)).hidden  # (trials, frames, N, D)
        return hidden[:, torch.from_numpy(response)].mean(dim=1)


def model_features(model, response_end_s: float = 2.0) -> FeatureFn:
    """Features for the ``model`` decoder (backbone frozen): :func:`pooled_hidden` of
    :func:`model_inputs`, flattened to (trials, N * D)."""

    def features(recording: Recording) -> np.ndarray:
        pooled = pooled_hidden(model, *model_inputs(model, recording, response_end_s))
        return pooled.reshape(pooled.shape[0], -1).numpy()

    return features


def finetuned_decoder(model, steps: int, lr: float = 1e-3, batch_trials: int = 16,
                      response_end_s: float = 2.0) -> FoldDecoderFactory:
    """The ``model_finetuned`` decoder: per fold, a copy of the backbone and a head fitted on the frozen
    features of the training trials (:func:`rtcalm.model.heads.fit_head`), then both trained together for
    ``steps`` steps of ``batch_trials`` training trials (:func:`rtcalm.model.heads.finetune_head`); the
    test trials are read by the tuned copy only. The model given is never changed."""
    import copy

    import torch

    from rtcalm.model.heads import HeadConfig, finetune_head, fit_head

    def for_recording(recording: Recording, data: TaskData):
        z, response = model_inputs(model, recording, response_end_s)
        classification = data.metric == "accuracy"
        config = HeadConfig(name="task", kind="classification" if classification else "regression",
                            n_neurons=recording.n_neurons, d_model=model.config.d_model,
                            pool_frames=float(max(1, response.sum())),
                            classes=[float(c) for c in range(int(data.targets.max()) + 1)] if classification else [])

        def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            tuned = copy.deepcopy(model)
            features = pooled_hidden(tuned, z[train], response).numpy()
            head = fit_head(features, data.targets[train].astype(np.float64), config)
            finetune_head(tuned, head, torch.from_numpy(z[train]), data.targets[train].astype(np.float64), response,
                          steps=steps, lr=lr, batch_trials=batch_trials)
            with torch.inference_mode():
                output = head(pooled_hidden(tuned, z[test], response))
            return output.argmax(dim=-1).numpy() if classification else output[:, 0].numpy()

        return fit_predict

    return for_recording
