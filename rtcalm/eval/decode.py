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

- ``served`` (``rtcalm decode-eval``; :mod:`rtcalm.eval.served`): exactly what ``rtcalm fit-head
  --features auto`` writes and the daemon serves, on features read off the daemon's own per-frame path
  (one continuous stream, running statistics, the model's incremental step), every choice made inside
  each outer fold;
- ``model``: a linear head (logistic / ridge) on features from the model (``feature_fn``), backbone frozen;
- ``model_finetuned`` (``--finetune-steps``): that head and a copy of the backbone trained together on
  the training folds (:func:`finetuned_decoder`);
- ``model_time_resolved``: the time-resolved head on the frozen backbone (:func:`time_resolved_decoders`):
  per-frame hidden states over the response window, projected per neuron onto their first principal
  components (fitted on the training trials), averaged in time bins, shrinkage LDA (classification) or
  ridge (regression), the number of components, bins and ridge alpha chosen by inner CV;
- ``raw_time_resolved``: the identical head on what the backbone reads (the z-scored ΔF/F at the model's
  rate), so the backbone's own contribution is the difference between the two rows;
- baselines (``baselines`` in the JSON), on the recording's ΔF/F at its own rate:
  ``lda_binned`` (Ledoit-Wolf shrinkage LDA) and ``logistic_binned`` for classification, ``ridge_binned``
  for regression, on the response window in time bins; bins (1, 2, 4, 8) and C / alpha chosen by inner
  CV (:mod:`rtcalm.eval.linear`); ``linear_mean_response``: logistic / ridge with a fixed penalty on
  each neuron's mean ΔF/F in the response window; ``chance``: the majority class of the training folds
  (classification) or their mean (regression).

Inner CV (4 folds, stratified for classification) runs on the outer training trials only; the outer
test fold is never seen by any choice. Every score comes with a standard error over trials
(``standard_errors``): binomial for accuracy, sqrt(p (1 - p) / trials); for R², a bootstrap over the
pooled held-out trials (1,000 resamples, seed 0) of the mean squared error divided by the targets'
variance over all trials. The mean over files has the standard error
sqrt(sum se²) / files. ``selected`` records the hyperparameters each inner CV chose, per outer fold; ``targets`` and
``predictions`` (per decoder) are the per-trial held-out values (class indices into the sorted distinct
label values for classification), e.g. for confusion matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rtcalm.data.recording import Recording
from rtcalm.errors import RtcalmError
from rtcalm.eval.linear import standard_error

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


def task_data(recording: Recording, task: str, response_end_s: float = 2.0,
              available_s: float | None = None) -> TaskData:
    """The targets over the response window ``0 <= t < response_end_s``; the decoders read the frames
    with ``0 <= t < available_s`` (default: the response window), the frames that have arrived
    ``available_s`` after the onset (``--timecourse``)."""
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
    return TaskData(targets=targets, metric=TASKS[task], response_frames=available_frames(recording, response_end_s,
                                                                                       available_s))


def available_frames(recording: Recording, response_end_s: float, available_s: float | None) -> np.ndarray:
    """bool (frames_per_trial,): the response window's frames acquired before ``available_s`` after onset."""
    end = response_end_s if available_s is None else min(available_s, response_end_s)
    frames = (recording.trial_time_s >= 0) & (recording.trial_time_s < end)
    if not frames.any():
        raise DecodingError(f"{recording.meta.source}: no frames in 0..{end:g} s after the onset")
    return frames


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
    from rtcalm.eval.linear import score

    return score(predictions, targets, metric)


class BinnedDecoder:
    """fit_predict(train, test) for a linear decoder on time-binned per-frame features (trials, frames, F):
    bins and penalty chosen by inner CV on the training trials (:mod:`rtcalm.eval.linear`). ``selected``
    lists each outer fold's choice."""

    def __init__(self, per_frame: np.ndarray, targets: np.ndarray, kind: str, metric: str,
                 bin_counts: Sequence[int] | None = None, seed: int = 0):
        from rtcalm.eval.linear import BIN_COUNTS, penalties
        from rtcalm.model.heads.linear import time_binned

        frames = per_frame.shape[1]
        counts = [b for b in (bin_counts or BIN_COUNTS) if b <= frames]
        self.binned = {b: time_binned(per_frame, b) for b in counts}
        self.candidates = [(b, penalty) for b in counts for penalty in penalties(kind)]
        self.targets, self.kind, self.metric, self.seed = targets, kind, metric, seed
        self.selected: list[dict] = []

    def __call__(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        from rtcalm.eval.linear import make_estimator, select_by_inner_cv

        targets = self.targets[train]

        def inner(candidate, inner_train, validation):
            features = self.binned[candidate[0]][train]
            estimator = make_estimator(self.kind, candidate[1]).fit(features[inner_train], targets[inner_train])
            return estimator.predict(features[validation])

        bins, penalty = select_by_inner_cv(self.candidates, inner, targets, self.metric, seed=self.seed)
        self.selected.append({"bins": bins} | ({} if penalty is None else {"penalty": penalty}))
        estimator = make_estimator(self.kind, penalty).fit(self.binned[bins][train], targets)
        return estimator.predict(self.binned[bins][test])


def binned_baselines(recording: Recording, data: TaskData) -> dict[str, BinnedDecoder]:
    """The strong baselines on the recording's own ΔF/F in the response window (trials, frames, neurons)."""
    per_frame = recording.dff[:, data.response_frames, :].astype(np.float64)
    if data.metric == "accuracy":
        return {"lda_binned": BinnedDecoder(per_frame, data.targets, "lda", data.metric),
                "logistic_binned": BinnedDecoder(per_frame, data.targets, "logistic", data.metric)}
    return {"ridge_binned": BinnedDecoder(per_frame, data.targets, "ridge", data.metric)}


BASELINES = {"accuracy": ("lda_binned", "logistic_binned", "linear_mean_response", "chance"),
             "r2": ("ridge_binned", "linear_mean_response", "chance")}


def evaluate_recording(recording: Recording, task: str, feature_fn: FeatureFn | None, folds: int = 5,
                       seed: int = 0, fold_decoders: dict[str, FoldDecoderFactory] | None = None,
                       data: TaskData | None = None, available_s: float | None = None) -> dict:
    """Scores of every decoder on one recording. ``fold_decoders``: further decoders by name that fit
    per fold themselves (e.g. :func:`finetuned_decoder`), scored on the same folds. ``data``: the
    targets, when not a :data:`TASKS` column of the recording (``rtcalm fit-head``'s label tables);
    ``available_s``: decode from the frames up to that long after the onset (:func:`task_data`)."""
    data = task_data(recording, task, available_s=available_s) if data is None else data
    splits = fold_indices(data.targets, data.metric, folds, seed)
    mean_responses = mean_response_features(recording, data.response_frames)
    decoders: dict[str, Callable] = {
        **binned_baselines(recording, data),
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
    scores, errors, selected, held_out = {}, {}, {}, {}
    for name, decoder in decoders.items():
        predictions = np.empty_like(data.targets, dtype=np.float64)
        for train, test in splits:
            predictions[test] = decoder(train, test)
        held_out[name] = predictions.tolist()
        scores[name] = _score(predictions, data.targets, data.metric)
        errors[name] = standard_error(predictions, data.targets, data.metric)
        if getattr(decoder, "selected", None):
            selected[name] = decoder.selected
    return {"file": recording.meta.source, "mouse": recording.meta.mouse, "trials": int(data.targets.shape[0]),
            "neurons": recording.n_neurons, **scores, "standard_errors": errors, "selected": selected,
            "targets": data.targets.tolist(), "predictions": held_out}


def evaluate(recordings: Sequence[Recording], task: str, feature_fn: FeatureFn | None, folds: int = 5,
             seed: int = 0, fold_decoders: dict[str, FoldDecoderFactory] | None = None,
             available_s: float | None = None) -> dict:
    """The ``--json`` document of ``rtcalm decode-eval``: means over files of the per-file scores, and
    their standard errors (``standard_errors``, by decoder name)."""
    if task not in TASKS:
        raise DecodingError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    per_file = [evaluate_recording(rec, task, feature_fn, folds, seed, fold_decoders, available_s=available_s)
                for rec in recordings]

    def mean(name):
        return float(np.mean([f[name] for f in per_file]))

    def mean_error(name):
        return float(np.sqrt(np.sum([f["standard_errors"][name] ** 2 for f in per_file])) / len(per_file))

    names = (["model"] if feature_fn is not None else []) + list(fold_decoders or {})
    result = {"task": task, "metric": TASKS[task], "folds": folds, "seed": seed}
    for name in names:
        result[name] = mean(name)
    baselines = BASELINES[TASKS[task]]
    result["baselines"] = {name: mean(name) for name in baselines}
    result["standard_errors"] = {name: mean_error(name) for name in (*names, *baselines)}
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


PROJECTION_COMPONENTS = (1, 2)  # principal components of the hidden state kept per neuron (chosen by inner CV)


def response_hidden(model, z: np.ndarray, response: np.ndarray, batch_trials: int = 32) -> np.ndarray:
    """The backbone's per-frame, per-neuron hidden states over the response window: (trials, frames, N, D)
    float32, the model run causally from each epoch's first frame, frozen."""
    import torch

    model.eval()
    mask = torch.from_numpy(response)
    pieces = []
    with torch.inference_mode():
        for start in range(0, z.shape[0], batch_trials):
            pieces.append(model(torch.from_numpy(z[start:start + batch_trials])).hidden[:, mask].numpy())
    return np.concatenate(pieces)


class TimeResolvedDecoder:
    """fit_predict(train, test) of the time-resolved head on per-frame features (trials, frames, N, D).

    Per outer fold: when D > 1, the principal axes of the training trials' features (label-free) project
    every neuron's D-vector onto its first k components; the projected frames are averaged in time bins
    and concatenated (bins x N x k); shrinkage LDA (classification) or ridge (regression) reads them.
    k (:data:`PROJECTION_COMPONENTS`), the bins and the ridge alpha are chosen by inner CV on the
    training trials. With D == 1 (raw ΔF/F) there is nothing to project: the same head on the frames."""

    def __init__(self, per_frame: np.ndarray, targets: np.ndarray, metric: str,
                 components: Sequence[int] = PROJECTION_COMPONENTS, bin_counts: Sequence[int] | None = None,
                 seed: int = 0):
        from rtcalm.eval.linear import BIN_COUNTS, penalties

        self.per_frame = per_frame
        self.components = [k for k in components if k <= per_frame.shape[-1]] if per_frame.shape[-1] > 1 else [1]
        self.bin_counts = [b for b in (bin_counts or BIN_COUNTS) if b <= per_frame.shape[1]]
        self.kind = "lda" if metric == "accuracy" else "ridge"
        self.candidates = [(k, b, penalty) for k in self.components for b in self.bin_counts
                           for penalty in penalties(self.kind)]
        self.targets, self.metric, self.seed = targets, metric, seed
        self.selected: list[dict] = []

    def _features(self, train: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        from rtcalm.model.heads.linear import principal_projection, time_binned

        trials, frames, neurons, width = self.per_frame.shape
        if width == 1:
            projected = self.per_frame
        else:
            mean, basis = principal_projection(self.per_frame[train], max(self.components))
            projected = (self.per_frame - mean.astype(np.float32)) @ basis.astype(np.float32)
        return {(k, b): time_binned(projected[..., :k].reshape(trials, frames, neurons * k), b)
                for k in self.components for b in self.bin_counts}

    def __call__(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        from rtcalm.eval.linear import make_estimator, select_by_inner_cv

        features = self._features(train)
        targets = self.targets[train]

        def inner(candidate, inner_train, validation):
            x = features[candidate[:2]][train]
            return make_estimator(self.kind, candidate[2]).fit(x[inner_train], targets[inner_train]).predict(x[validation])

        k, bins, penalty = select_by_inner_cv(self.candidates, inner, targets, self.metric, seed=self.seed)
        self.selected.append({"components": k, "bins": bins} | ({} if penalty is None else {"penalty": penalty}))
        return self.fit_head(train, k, bins, penalty).predict(self.per_frame[test])

    def fit_head(self, train: np.ndarray, components: int, bins: int, penalty: float | None) -> _HeadPredictor:
        """The head the daemon runs (:func:`rtcalm.model.heads.fit_time_resolved_head`), fitted on the
        training trials with the chosen hyperparameters: what this decoder scores on the test trials.
        Per-frame features of width 1 are the raw frames (a ``raw`` head), wider ones hidden states."""
        from rtcalm.model.heads import TimeResolvedConfig, fit_time_resolved_head

        trials, frames, neurons, width = self.per_frame.shape
        classification = self.metric == "accuracy"
        raw = width == 1
        config = TimeResolvedConfig(
            name="task", kind="classification" if classification else "regression", n_neurons=neurons,
            d_model=width, window_frames=frames, n_bins=bins, components=0 if raw else components,
            classes=[float(c) for c in range(int(self.targets.max()) + 1)] if classification else [],
            features="raw" if raw else "backbone")
        targets = self.targets[train].astype(np.float64)
        windows = self.per_frame[train]
        head = fit_time_resolved_head(config, targets, alpha=None if classification else penalty,
                                      **({"dff": windows[..., 0]} if raw else {"hidden": windows}))
        return _HeadPredictor(head, classification)


class _HeadPredictor:
    def __init__(self, head, classification: bool):
        self.head, self.classification = head, classification

    def predict(self, per_frame: np.ndarray) -> np.ndarray:
        import torch

        per_frame = torch.from_numpy(np.ascontiguousarray(per_frame, dtype=np.float32))
        with torch.inference_mode():
            if self.head.config.uses_raw:
                logits = self.head.window_logits(per_frame[..., 0], None).numpy()
            else:
                logits = self.head.window_logits(None, per_frame).numpy()
        return logits.argmax(axis=1) if self.classification else logits[:, 0]


class BackboneFrames:
    """What the time-resolved heads read, computed once per recording (cached by file, the latest
    ``max_cached``) and shared by every decoder and fold seed: (raw (trials, frames, N, 1): the z-scored
    ΔF/F the backbone reads, hidden (trials, frames, N, D): its per-frame hidden states), both over the
    response window at the model's rate (:func:`model_inputs`, :func:`response_hidden`)."""

    def __init__(self, model, response_end_s: float = 2.0, max_cached: int = 8, available_s: float | None = None):
        self.model, self.response_end_s, self.max_cached = model, response_end_s, max_cached
        self.available_s = available_s
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def until(self, available_s: float) -> BackboneFrames:
        """The same frames (one cache) cut to those up to ``available_s`` after the onset: the model runs
        causally, so a frame's hidden state does not depend on the frames after it."""
        view = BackboneFrames(self.model, self.response_end_s, self.max_cached, available_s)
        view._cache = self._cache
        return view

    def __call__(self, recording: Recording) -> tuple[np.ndarray, np.ndarray]:
        key = recording.meta.source
        if key not in self._cache:
            while len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            z, response = model_inputs(self.model, recording, self.response_end_s)
            self._cache[key] = (z[:, response, :, None], response_hidden(self.model, z, response))
        raw, hidden = self._cache[key]
        if self.available_s is None:
            return raw, hidden
        frames = min(raw.shape[1], max(1, int(np.ceil(self.available_s * self.model.config.rate_hz - 1e-9))))
        return raw[:, :frames], hidden[:, :frames]

    def pooled_features(self, recording: Recording) -> np.ndarray:
        """The ``model`` decoder's features (:func:`model_features`) from the cached hidden states."""
        hidden = self(recording)[1]
        return hidden.mean(axis=1).reshape(hidden.shape[0], -1)


def time_resolved_decoders(frames: BackboneFrames) -> dict[str, FoldDecoderFactory]:
    """``model_time_resolved`` (the head on the frozen backbone's per-frame hidden states) and
    ``raw_time_resolved`` (the identical head on the z-scored ΔF/F the backbone reads), as fold decoders
    for :func:`evaluate`."""

    def backbone(recording: Recording, data: TaskData) -> TimeResolvedDecoder:
        return TimeResolvedDecoder(frames(recording)[1], data.targets, data.metric)

    def raw(recording: Recording, data: TaskData) -> TimeResolvedDecoder:
        return TimeResolvedDecoder(frames(recording)[0], data.targets, data.metric)

    return {"model_time_resolved": backbone, "raw_time_resolved": raw}
