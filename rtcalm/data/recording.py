"""The one in-memory type for a calcium-imaging recording.

Axis order (time-major, because the daemon receives one frame at a time and the model consumes
``(frames, neurons)``):

- contiguous recording:       ``dff.shape == (frames, neurons)``
- trial-structured recording: ``dff.shape == (trials, frames_per_trial, neurons)``

Trial-structured data (separate epochs cut around stimulus onsets, as in the Park et al. grating
files) keep their epoch axis: the end of trial k is not the start of trial k+1, so the epochs are never
glued into a fake continuous trace. ``trial_time_s`` gives each epoch frame's time relative to its
stimulus onset.

Labels:

- ``continuous_labels[name]``: a behavioural signal sampled on the imaging frames, with shape
  ``(frames,)`` for a contiguous recording and ``(trials, frames_per_trial)`` for a trial-structured one
  (e.g. ``running_speed``, ``pupil``).
- ``trials``: a :class:`TrialTable`, one row per trial (``onset_s`` plus stimulus columns such as
  ``direction_deg``). For a trial-structured recording it has exactly one row per epoch.
- ``neuron_info[name]``: per-neuron annotations with shape ``(neurons, ...)`` (e.g. the synthetic
  generator's ground-truth cell class, or ROI centroids).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtcalm.errors import RecordingError


@dataclass
class RecordingMeta:
    """Where a recording comes from. Unknown fields stay ``None``; nothing is guessed."""

    source: str = ""  # path or generator description
    format: str = ""  # reader name, e.g. "allen-nwb", "neurodio-npz"
    mouse: str | None = None  # mouse / Allen experiment container (same mouse, same field of view)
    session: str | None = None  # session / Allen ophys experiment id
    cre_line: str | None = None
    area: str | None = None
    depth_um: float | None = None
    indicator: str | None = None
    stimulus: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "mouse": self.mouse,
            "session": self.session,
            "cre_line": self.cre_line,
            "area": self.area,
            "depth_um": self.depth_um,
            "indicator": self.indicator,
            "stimulus": self.stimulus,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RecordingMeta:
        known = {k: d.get(k) for k in ("source", "format", "mouse", "session", "cre_line", "area",
                                        "depth_um", "indicator", "stimulus")}
        known["source"] = known["source"] or ""
        known["format"] = known["format"] or ""
        if known["depth_um"] is not None:
            known["depth_um"] = float(known["depth_um"])
        return cls(**known, extra={str(k): str(v) for k, v in (d.get("extra") or {}).items()})


@dataclass
class TrialTable:
    """Per-trial columns of equal length. ``onset_s`` is required: the stimulus onset in seconds
    (recording time for contiguous recordings; 0.0 for epochs cut around their onset)."""

    columns: dict[str, np.ndarray]

    def __post_init__(self):
        if "onset_s" not in self.columns:
            raise ValueError("a trial table needs an 'onset_s' column")
        lengths = {name: np.asarray(col).shape[0] for name, col in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"trial table columns differ in length: {lengths}")
        self.columns = {name: np.asarray(col) for name, col in self.columns.items()}

    def __len__(self) -> int:
        return int(self.columns["onset_s"].shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def names(self) -> list[str]:
        return list(self.columns)


@dataclass
class Recording:
    """ΔF/F of one field of view, with metadata and optional labels. See the module docstring for the
    axis order. Construction validates shapes, dtypes and finiteness, so a ``Recording`` that exists is
    a good one; readers turn the ``ValueError`` into a :class:`RecordingError` naming the file."""

    dff: np.ndarray  # float32, (frames, neurons) or (trials, frames_per_trial, neurons)
    rate_hz: float
    neuron_ids: np.ndarray  # int64, (neurons,)
    meta: RecordingMeta = field(default_factory=RecordingMeta)
    continuous_labels: dict[str, np.ndarray] = field(default_factory=dict)
    trials: TrialTable | None = None
    trial_time_s: np.ndarray | None = None  # (frames_per_trial,) for trial-structured recordings
    neuron_info: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.dff = np.ascontiguousarray(self.dff, dtype=np.float32)
        if self.dff.ndim not in (2, 3):
            raise ValueError(f"dff must be 2-D (frames, neurons) or 3-D (trials, frames, neurons), got shape {self.dff.shape}")
        if self.dff.size == 0:
            raise ValueError(f"dff is empty (shape {self.dff.shape})")
        if not np.isfinite(self.dff).all():
            bad = int((~np.isfinite(self.dff)).sum())
            raise ValueError(f"dff has {bad} NaN/Inf values")
        self.rate_hz = float(self.rate_hz)
        if not np.isfinite(self.rate_hz) or self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be a positive number, got {self.rate_hz}")
        self.neuron_ids = np.asarray(self.neuron_ids).astype(np.int64, copy=False).reshape(-1)
        if self.neuron_ids.shape[0] != self.n_neurons:
            raise ValueError(f"{self.neuron_ids.shape[0]} neuron ids for {self.n_neurons} neurons")
        if np.unique(self.neuron_ids).size != self.neuron_ids.size:
            raise ValueError("neuron ids are not unique")
        time_shape = self.dff.shape[:-1]
        for name, values in list(self.continuous_labels.items()):
            values = np.asarray(values, dtype=np.float32)
            if values.shape != time_shape:
                raise ValueError(f"label {name!r} has shape {values.shape}, expected {time_shape}")
            self.continuous_labels[name] = values
        if self.is_trial_structured:
            if self.trials is None or len(self.trials) != self.n_trials:
                raise ValueError("a trial-structured recording needs a trial table with one row per epoch")
            if self.trial_time_s is None:
                raise ValueError("a trial-structured recording needs trial_time_s")
        if self.trial_time_s is not None:
            self.trial_time_s = np.asarray(self.trial_time_s, dtype=np.float64).reshape(-1)
            if not self.is_trial_structured or self.trial_time_s.shape[0] != self.frames_per_trial:
                raise ValueError("trial_time_s must have one entry per epoch frame of a trial-structured recording")
        for name, values in self.neuron_info.items():
            if np.asarray(values).shape[:1] != (self.n_neurons,):
                raise ValueError(f"neuron_info {name!r} must have one row per neuron")

    # --- shape helpers -------------------------------------------------------------------------
    @property
    def is_trial_structured(self) -> bool:
        return self.dff.ndim == 3

    @property
    def n_neurons(self) -> int:
        return int(self.dff.shape[-1])

    @property
    def n_frames(self) -> int:
        """Total imaging frames (summed over epochs for trial-structured recordings)."""
        return int(np.prod(self.dff.shape[:-1]))

    @property
    def n_trials(self) -> int | None:
        return int(self.dff.shape[0]) if self.is_trial_structured else None

    @property
    def frames_per_trial(self) -> int | None:
        return int(self.dff.shape[1]) if self.is_trial_structured else None

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.rate_hz

    @property
    def label_names(self) -> list[str]:
        names = list(self.continuous_labels)
        if self.trials is not None:
            names += [n for n in self.trials.names if n != "onset_s"]
        return names

    def epochs(self) -> list[np.ndarray]:
        """The contiguous pieces of the recording, each ``(frames, neurons)``: one for a contiguous
        recording, one per trial otherwise. Use this wherever time continuity matters."""
        if self.is_trial_structured:
            return [self.dff[k] for k in range(self.dff.shape[0])]
        return [self.dff]

    def summary(self) -> dict:
        """A JSON-serialisable summary (what ``rtcalm info --json`` prints)."""
        out = {
            "source": self.meta.source,
            "format": self.meta.format,
            "neurons": self.n_neurons,
            "rate_hz": self.rate_hz,
            "trial_structured": self.is_trial_structured,
        }
        if self.is_trial_structured:
            out.update(trials=self.n_trials, frames_per_trial=self.frames_per_trial, frames=self.n_frames,
                       trial_time_s=[float(self.trial_time_s[0]), float(self.trial_time_s[-1])])
        else:
            out.update(frames=self.n_frames)
        out["duration_s"] = round(self.duration_s, 6)
        out["labels"] = self.label_names
        out["continuous_labels"] = list(self.continuous_labels)
        out["trial_columns"] = self.trials.names if self.trials is not None else []
        out["neuron_info"] = list(self.neuron_info)
        out["dff_range"] = [float(self.dff.min()), float(self.dff.max())]
        out["meta"] = self.meta.to_dict()
        return out


def checked_recording(path, **kwargs) -> Recording:
    """Build a :class:`Recording`, turning validation failures into a :class:`RecordingError` that names
    the file."""
    try:
        return Recording(**kwargs)
    except ValueError as exc:
        raise RecordingError(path, str(exc)) from None
