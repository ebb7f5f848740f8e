"""A calibration block as the daemon would see it: the frames a rig streams, the trials in them, their labels.

``rtcalm fit-head`` fits a head on it, ``rtcalm decode-eval``'s ``served`` row scores that fit, and both
read the head's features off the daemon's own per-frame path (:func:`stream_windows`, driving
:class:`rtcalm.daemon.offline.OfflineStream`): running statistics, normalisation, the model's incremental
step, one continuous stream, never a restart per trial.

Inputs:

- a **trial-structured** recording (epochs cut around stimulus onsets, e.g. the Park et al. grating
  files): each epoch is resampled to the model's rate (polyphase, :func:`rtcalm.data.resample.resample_recording`,
  as decode-eval's model rows are) and the epochs are streamed one after another as one continuous
  stream, by default in a fixed random order (``trial_order="shuffled"``, seed 0). In the recorded order
  a stimulus sequence that repeats (the grating files cycle 0, 45, ..., 315 degrees) lets whatever
  remembers the previous trial, the backbone's hidden state above all, "decode" the current stimulus
  from the previous one's response; shuffled, only the current trial's response tells it
  (docs/results.md measures the difference). ``trial_order="recorded"`` streams them as recorded;
- a **contiguous** recording with a trial table (its own, or a label table, :func:`rtcalm.data.read_label_table`):
  the recording is streamed as it is (resampled to the model's rate if it was made at another), each
  trial starting at its onset.

Each trial's response window is ``0 <= t < response_end_s`` after its onset: at the model's rate, the
``window_frames`` stream frames from the first at or after the onset; at the recording's own rate, the
epoch the baselines read (:attr:`Calibration.recording`, a trial-structured recording: the file itself,
or for a contiguous one the response windows cut out of it).

Targets (``task``): ``direction`` / ``orientation``: the trial column ``<task>_deg`` (or ``<task>``), one
class per value; ``speed`` / ``pupil``: the mean of ``running_speed`` / ``pupil`` over the response
window; any other name: the trial column of that name, classes by value (``regression=True``: its
values), or by name for a text column (class *i* is the *i*-th name in sorted order, published as the
number *i*).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rtcalm.data.recording import Recording, TrialTable
from rtcalm.errors import RtcalmError
from rtcalm.eval.decode import TASKS, TaskData

CONTINUOUS_TASKS = {"speed": "running_speed", "pupil": "pupil"}


class CalibrationError(RtcalmError, ValueError):
    pass


@dataclass
class Calibration:
    """Trials of one session's calibration recordings (streamed one after another as one session)."""

    recording: Recording  # trial-structured, at the recording's own rate: what the baselines read
    data: TaskData  # targets: class indices (accuracy) or values (r2); response frames of ``recording``
    classes: list[float]  # class values published by a head (accuracy); [] for regression
    stream: np.ndarray  # (frames, N) float32 ΔF/F at the model's rate, in the order a rig sends them
    onsets: np.ndarray  # (trials,) the stream frame of each trial's first response-window frame
    window_frames: int  # response-window frames at the model's rate
    rate_hz: float  # the model's rate
    trial_order: str = "recorded"  # how trial epochs were streamed ("shuffled": a fixed random order)
    sources: list[str] = field(default_factory=list)
    class_names: list[str] | None = None  # a text label column's names, by class

    @property
    def n_neurons(self) -> int:
        return int(self.stream.shape[1])

    @property
    def classification(self) -> bool:
        return self.data.metric == "accuracy"

    def target_values(self) -> np.ndarray:
        """What a head publishes per trial: class values (classification) or the targets."""
        if self.classification:
            return np.asarray(self.classes, dtype=np.float64)[self.data.targets]
        return self.data.targets.astype(np.float64)

    def window_frames_until(self, available_s: float) -> int:
        """Response-window frames at the model's rate that have arrived ``available_s`` after onset."""
        return min(self.window_frames, max(1, math.ceil(available_s * self.rate_hz - 1e-9)))


def frames_before(seconds: float, rate_hz: float) -> int:
    """Frames k >= 0 with k / rate_hz < seconds."""
    return max(1, math.ceil(seconds * rate_hz - 1e-9))


TRIAL_ORDERS = ("shuffled", "recorded")


def calibration(recordings: Sequence[Recording], task: str, rate_hz: float, *, response_end_s: float = 2.0,
                labels: Sequence[TrialTable | None] | None = None, regression: bool = False,
                trial_order: str = "shuffled") -> Calibration:
    """The calibration of ``recordings`` (one session: same neurons, in the same order) for ``task`` at the
    model's rate ``rate_hz``; ``labels``: a trial table per recording to use instead of its own (a label
    table, for contiguous recordings). CalibrationError for anything that does not fit."""
    if not recordings:
        raise CalibrationError("no recordings")
    if not response_end_s > 0:
        raise CalibrationError(f"the response window must be positive, got {response_end_s} s")
    if trial_order not in TRIAL_ORDERS:
        raise CalibrationError(f"trial order must be one of {', '.join(TRIAL_ORDERS)}, got {trial_order!r}")
    labels = list(labels) if labels is not None else [None] * len(recordings)
    pieces = [_piece(rec, table, task, rate_hz, response_end_s, regression, trial_order)
              for rec, table in zip(recordings, labels, strict=True)]
    first = pieces[0]
    for piece in pieces[1:]:
        if piece.view.n_neurons != first.view.n_neurons:
            raise CalibrationError(f"{piece.source}: {piece.view.n_neurons} neurons, {first.source} has "
                                   f"{first.view.n_neurons}; a head reads one session's neurons")
        if piece.view.dff.shape[1] != first.view.dff.shape[1] or abs(piece.view.rate_hz - first.view.rate_hz) > 1e-9:
            raise CalibrationError(f"{piece.source}: its trials ({piece.view.dff.shape[1]} frames at "
                                   f"{piece.view.rate_hz:g} Hz) differ from {first.source}'s; calibrate on "
                                   "recordings made alike")
    values = np.concatenate([p.values for p in pieces])
    classification = first.classification
    view = _concatenated_views([p.view for p in pieces])
    response = (view.trial_time_s >= 0) & (view.trial_time_s < response_end_s)
    class_names = None
    if classification:
        distinct, targets = np.unique(values, return_inverse=True)
        if distinct.shape[0] < 2:
            raise CalibrationError(f"task {task!r}: every trial has the same label {distinct[0]!r}; nothing to decode")
        if values.dtype.kind in "US":
            class_names = [str(v) for v in distinct]
            classes = [float(i) for i in range(distinct.shape[0])]
        else:
            classes = [float(v) for v in distinct]
        data = TaskData(targets=targets, metric="accuracy", response_frames=response)
    else:
        classes = []
        data = TaskData(targets=values.astype(np.float64), metric="r2", response_frames=response)
    offsets = np.cumsum([0] + [p.stream.shape[0] for p in pieces[:-1]])
    return Calibration(recording=view, data=data, classes=classes,
                       stream=np.concatenate([p.stream for p in pieces]),
                       onsets=np.concatenate([p.onsets + o for p, o in zip(pieces, offsets, strict=True)]),
                       window_frames=first.window, rate_hz=float(rate_hz),
                       trial_order=trial_order if recordings[0].is_trial_structured else "recorded", sources=[p.source for p in pieces], class_names=class_names)


@dataclass
class _Piece:
    source: str
    view: Recording
    values: np.ndarray
    classification: bool
    stream: np.ndarray
    onsets: np.ndarray
    window: int


def _piece(recording: Recording, table: TrialTable | None, task: str, rate_hz: float, response_end_s: float,
           regression: bool, trial_order: str = "recorded") -> _Piece:
    from rtcalm.data.resample import resample_recording

    source = recording.meta.source or "the recording"
    window = frames_before(response_end_s, rate_hz)
    if recording.is_trial_structured:
        if table is not None:
            raise CalibrationError(f"{source} is trial-structured (one epoch per trial); a label table is for a "
                                   "contiguous recording")
        if not (recording.trial_time_s >= 0).any():
            raise CalibrationError(f"{source}: no epoch frame at or after the onset")
        view = recording
        resampled = resample_recording(recording, rate_hz)
        first = int(np.argmax(resampled.trial_time_s >= 0))
        available = int(((resampled.trial_time_s >= 0) & (resampled.trial_time_s < response_end_s)).sum())
        if available < window:
            raise CalibrationError(f"{source}: the epochs hold {resampled.trial_time_s[-1]:.2f} s after the onset, "
                                   f"less than the {response_end_s:g} s response window")
        per_epoch = resampled.dff.shape[1]
        order = epoch_order(recording.n_trials, trial_order)  # the epochs in streaming order
        stream = resampled.dff[order].reshape(-1, recording.n_neurons)
        position = np.empty_like(order)
        position[order] = np.arange(order.shape[0])  # where each trial is in the stream
        onsets = position * per_epoch + first
    else:
        trials = table if table is not None else recording.trials
        if trials is None or len(trials) == 0:
            raise CalibrationError(f"{source} is a contiguous recording without trials: give a label table "
                                   "(--labels TABLE) with the onsets and labels")
        view, onset_s = _trial_view(recording, trials, response_end_s, source)
        resampled = resample_recording(recording, rate_hz)
        stream = resampled.dff
        onsets = np.ceil(onset_s * rate_hz - 1e-9).astype(np.int64)
        keep = onsets + window <= stream.shape[0]
        if not keep.all():
            raise CalibrationError(f"{source}: the response window of {int((~keep).sum())} trial(s) (the last from "
                                   f"{onset_s[~keep][0]:.2f} s) runs past the end of the recording")
    values, classification = _task_values(view, task, response_end_s, regression, source)
    return _Piece(source, view, values, classification, np.ascontiguousarray(stream, np.float32), onsets, window)


def epoch_order(n_trials: int, trial_order: str) -> np.ndarray:
    """The order a trial-structured recording's epochs are streamed in: as recorded, or a fixed random
    permutation (seed 0, the same for fit-head, decode and decode-eval)."""
    if trial_order == "recorded":
        return np.arange(n_trials)
    return np.random.default_rng(0).permutation(n_trials)


def _trial_view(recording: Recording, trials: TrialTable, response_end_s: float, source: str):
    """The response windows of a contiguous recording as a trial-structured recording at its own rate,
    and each trial's onset in seconds."""
    rate = recording.rate_hz
    if "start_frame" in trials:
        starts = np.asarray(trials["start_frame"], dtype=np.int64)
    else:
        onset = np.asarray(trials["onset_s"], dtype=np.float64)
        if not np.isfinite(onset).all():
            raise CalibrationError(f"{source}: trials without onset times")
        starts = np.floor(onset * rate + 0.5).astype(np.int64)
    frames = frames_before(response_end_s, rate)
    late = starts + frames > recording.n_frames
    if late.any():
        raise CalibrationError(f"{source}: the response window of {int(late.sum())} trial(s) (the first from "
                               f"{starts[late][0] / rate:.2f} s) runs past the end of the recording")
    index = starts[:, None] + np.arange(frames)[None, :]
    labels = {name: values[index] for name, values in recording.continuous_labels.items()}
    columns = {name: np.asarray(trials[name]) for name in trials.names}
    columns["onset_s"] = np.zeros(len(starts))  # the epochs start at their onsets
    view = Recording(dff=recording.dff[index], rate_hz=rate, neuron_ids=recording.neuron_ids, meta=recording.meta,
                     continuous_labels=labels, trials=TrialTable(columns), trial_time_s=np.arange(frames) / rate)
    return view, starts / rate


def order_predictability(values: np.ndarray) -> float:
    """The fraction of trials whose label the previous trial's label predicts (its most frequent
    successor): 1.0 for a stimulus sequence that cycles in a fixed order, about 1 / classes for a random
    one."""
    values = np.asarray(values)
    if values.shape[0] < 3:
        return 0.0
    hits = 0
    for previous in np.unique(values[:-1]):
        following = values[1:][values[:-1] == previous]
        hits += int(np.unique(following, return_counts=True)[1].max())
    return hits / (values.shape[0] - 1)


def _task_values(view: Recording, task: str, response_end_s: float, regression: bool, source: str):
    """(per-trial label values, classification?) of ``task`` on a trial-structured recording."""
    response = (view.trial_time_s >= 0) & (view.trial_time_s < response_end_s)
    if task in CONTINUOUS_TASKS:
        label = CONTINUOUS_TASKS[task]
        if label not in view.continuous_labels:
            raise CalibrationError(f"{source}: task {task!r} needs a {label!r} label; this file has "
                                   f"{view.label_names or 'no labels'}")
        return view.continuous_labels[label][:, response].mean(axis=1).astype(np.float64), False
    names = view.trials.names if view.trials is not None else []
    column = next((c for c in ((f"{task}_deg", task) if task in TASKS else (task,)) if c in names), None)
    if column is None or column in ("onset_s", "start_frame"):
        available = [n for n in names if n not in ("onset_s", "start_frame")] + list(view.continuous_labels)
        raise CalibrationError(f"{source}: no label {task!r} (labels: {', '.join(available) or 'none'}; "
                               f"tasks: {', '.join(sorted(TASKS))} or a trial column's name)")
    values = np.asarray(view.trials[column])
    if values.dtype.kind in "US":
        if regression:
            raise CalibrationError(f"{source}: column {column!r} holds text; it cannot be a regression target")
        return values.astype(str), True
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise CalibrationError(f"{source}: column {column!r} has missing values")
    return values, not (regression or TASKS.get(task) == "r2")


def _concatenated_views(views: list[Recording]) -> Recording:
    if len(views) == 1:
        return views[0]
    first = views[0]
    names = [n for n in first.trials.names if all(n in v.trials for v in views)]
    labels = [n for n in first.continuous_labels if all(n in v.continuous_labels for v in views)]
    return Recording(dff=np.concatenate([v.dff for v in views]), rate_hz=first.rate_hz, neuron_ids=first.neuron_ids,
                     meta=first.meta, trials=TrialTable({n: np.concatenate([v.trials[n] for v in views]) for n in names}),
                     continuous_labels={n: np.concatenate([v.continuous_labels[n] for v in views]) for n in labels},
                     trial_time_s=first.trial_time_s)


def stream_of(recording: Recording, rate_hz: float, trial_order: str = "shuffled") -> np.ndarray:
    """The frames a rig would stream of ``recording`` at the model's rate (as :func:`calibration` streams
    them, trial epochs in ``trial_order``): (frames, N) float32."""
    from rtcalm.data.resample import resample_recording

    resampled = resample_recording(recording, rate_hz)
    dff = resampled.dff[epoch_order(recording.n_trials, trial_order)] if recording.is_trial_structured else resampled.dff
    return np.ascontiguousarray(dff.reshape(-1, recording.n_neurons), np.float32)


# --- the daemon's per-frame path over the calibration stream -------------------------------------------------

@dataclass
class Windows:
    """Per trial, the response window's frames as the daemon's heads receive them: ``dff`` (trials, window,
    N) the ΔF/F as received (NaN = missing, as in the daemon), ``hidden`` (trials, window, N, D) the
    model's hidden state after each of them (running statistics, normalisation, the incremental step)."""

    dff: np.ndarray
    hidden: np.ndarray
    model_version: str

    def until(self, frames: int) -> Windows:
        """The first ``frames`` frames of every window (what has arrived that long after the onset)."""
        return Windows(self.dff[:, :frames], self.hidden[:, :frames], self.model_version)


def stream_windows(engine, cal: Calibration, config=None) -> Windows:
    """Stream ``cal.stream`` through the daemon's per-frame path (:class:`OfflineStream`: running
    statistics, normalisation, the model's incremental step, one continuous stream, the daemon's
    configuration ``config``) and keep, for the frames in the trials' response windows, what a head is
    handed per frame (:meth:`OfflineStream.frame_inputs`)."""
    from rtcalm.daemon.offline import OfflineStream

    n, window = cal.n_neurons, cal.window_frames
    dff = np.empty((len(cal.onsets), window, n), np.float32)
    hidden = np.empty((len(cal.onsets), window, n, engine.config.d_model), np.float32)
    slots: dict[int, list[tuple[int, int]]] = {}
    for trial, onset in enumerate(cal.onsets.tolist()):
        for k in range(window):
            slots.setdefault(onset + k, []).append((trial, k))
    stream = OfflineStream(engine, n, config=config)
    for t, frame in enumerate(cal.stream):
        stream.push(frame)
        for trial, k in slots.get(t, ()):
            frame_hidden, frame_dff = stream.frame_inputs()
            hidden[trial, k] = frame_hidden
            dff[trial, k] = frame_dff
    return Windows(dff, hidden, engine.version)
