"""Per-session state: running statistics, the model's stream state, sequence tracking, and the
preallocated buffers the per-frame pipeline writes into.

A *session* is one rig's stream, named by the session id in its frames. A session's *stream* is one
continuous run of its state: it starts fresh (new statistics, new model state, new ``stream_id``) when
the session starts, is reset, changes neuron count, or skips more frames than the daemon fills in.

Normalisation (what the model sees) is defined here, once, for the daemon and for anyone who wants to
reproduce its outputs offline (the end-to-end tests do)::

    stats.update(frame)                       # the frame is in the statistics it is normalised with
    scale.update(stats)                       # mean, std per neuron; NaN std while warming up
    z = (frame - scale.mean) / scale.std      # NaN where the frame or the scale is missing
    forecast_dff = forecast_z * scale.std[:, None] + scale.mean[:, None]
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from rtcalm.daemon import kernels
from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.heads import SessionHeads
from rtcalm.daemon.quality import SessionQuality
from rtcalm.engine import StepEngine
from rtcalm.protocol import Frame, topic_for
from rtcalm.stats.dff import OnlineDff
from rtcalm.stats.moments import StreamingStats
from rtcalm.stats.selection import POYO_CAP, Thresholds, choose_thresholds
from rtcalm.triggers.ruleset import RuleSet


class Scale:
    """Per-neuron float32 mean and std from running statistics, refreshed in place every frame.
    ``std`` (and ``inv_std``) is NaN where a neuron has fewer than ``warmup_frames`` valid values or no
    variance: its values then reach the model as missing, and its forecast is NaN."""

    def __init__(self, n_neurons: int, warmup_frames: int):
        self.warmup_frames = float(warmup_frames)
        self.mean = np.full(n_neurons, np.nan, dtype=np.float32)
        self.std = np.full(n_neurons, np.nan, dtype=np.float32)
        self.inv_std = np.full(n_neurons, np.nan, dtype=np.float32)

    def update(self, stats: StreamingStats) -> None:
        # not snapshot(), which would compute all seven statistics into new arrays every frame
        stats.scale_into(self.mean, self.std, self.inv_std, min_count=self.warmup_frames)

    def normalise_into(self, frame: np.ndarray, out: np.ndarray) -> None:
        kernels.normalise(frame, self.mean, self.inv_std, out)

    def denormalise_into(self, forecast: np.ndarray, out: np.ndarray) -> None:
        kernels.denormalise(forecast, self.mean, self.std, out)


def new_stats(n_neurons: int, config: DaemonConfig) -> StreamingStats:
    tau = config.stats.time_constant_frames
    return StreamingStats(n_neurons, time_constant_frames=tau if tau > 0 else None)


def new_quality(n_neurons: int, horizon: int, config: DaemonConfig) -> SessionQuality:
    quality = config.quality
    return SessionQuality(n_neurons, horizon, skill_horizons=quality.skill_horizons,
                          interval_levels=quality.interval_levels, window_frames=quality.window_frames)


PENDING_ROWS = 64

# Sequence classes of an arriving frame relative to the last one processed.
IN_ORDER, GAP, DUPLICATE, OUT_OF_ORDER = "in_order", "gap", "duplicate", "out_of_order"


class Session:
    """One stream of one session. Created by :meth:`Sessions.start`; never resized (a new neuron count is a
    new Session)."""

    def __init__(self, session_id: str, n_neurons: int, stream_id: int, engine: StepEngine, config: DaemonConfig,
                 *, pinned: bool):
        limits = config.limits
        self.id = session_id
        self.topic = topic_for(session_id)  # its predictions' PUB topic, encoded once
        self.n_neurons = n_neurons
        self.stream_id = stream_id
        self.pinned = pinned  # started with an explicit neuron count: frames of another count are rejected
        self._dff_config = config.dff
        self.input_kind: str | None = None  # "dff" or "fluorescence": fixed by the stream's first frame
        self.converter: OnlineDff | None = None
        self.stats = new_stats(n_neurons, config)
        self.scale = Scale(n_neurons, config.stats.warmup_frames)
        self.model_state = engine.new_stream(n_neurons)
        # Decoding heads (load_head): a fresh stream of the same neuron count takes over the previous
        # stream's, with zeroed pools (Pipeline.restart_session).
        self.heads = SessionHeads()
        # Trigger rules (load_rules); a fresh stream of the same neuron count takes them over, held
        # until the model's receptive field is full again (rtcalm.triggers.ruleset).
        self.rules: RuleSet | None = None
        self.quality = new_quality(n_neurons, engine.horizon, config)
        self.frames_at_quality = 0  # stream frames when the quality gauges were last set
        self.last_seq: int | None = None
        self.stream_frames = 0  # frames consumed by stats and model, including filled-in missing ones
        # time.monotonic() of the stream's start or its latest accepted frame (sessions.idle_timeout_s)
        self.last_frame_at = time.monotonic()

        # Frames of one batch, normalised, waiting for the model: drained backlog plus filled gaps.
        # When a batch outgrows this buffer the rows so far are folded into the model and it starts over
        # (folding in pieces gives the same state: step_many equals single steps).
        self.pending = np.empty((PENDING_ROWS, n_neurons), np.float32)
        # The same frames' ΔF/F as received (NaN = missing), row for row: what raw decoding heads read.
        self.pending_dff = np.empty((PENDING_ROWS, n_neurons), np.float32)
        self.n_pending = 0
        self.missing_frame = np.full(n_neurons, np.nan, dtype=np.float32)
        self.forecast = np.empty((n_neurons, engine.horizon), dtype=np.float32)
        self.predictable = np.zeros(n_neurons, dtype=np.uint8)
        self.history = np.empty((limits.history_frames, n_neurons), dtype=np.float32)  # ring of normalised frames

        self.thresholds: Thresholds | None = None
        self.frames_at_thresholds = -1
        self.frames_at_mask = 0
        self.counts = dict.fromkeys(("accepted", "published", "gaps", "gap_frames", "duplicates", "reordered",
                                     "batched", "rejected"), 0)

    # --- sequence ---
    def classify(self, seq: int) -> tuple[str, int]:
        """(class, number of missing frames before this one)."""
        if self.last_seq is None or seq == self.last_seq + 1:
            return IN_ORDER, 0
        if seq > self.last_seq:
            return GAP, seq - self.last_seq - 1
        return (DUPLICATE, 0) if seq == self.last_seq else (OUT_OF_ORDER, 0)

    # --- the per-frame work (called by the pipeline, in this order) ---
    def accepts_kind(self, frame: Frame) -> bool:
        """A stream is either ΔF/F or raw fluorescence throughout (a converter's baseline would be
        meaningless across a switch); the first frame decides."""
        kind = "dff" if frame.dff is not None else "fluorescence"
        if self.input_kind is None:
            self.input_kind = kind
            if kind == "fluorescence":
                self.converter = OnlineDff(self.n_neurons, **dataclasses.asdict(self._dff_config))
        return kind == self.input_kind

    def dff_of(self, frame: Frame) -> np.ndarray:
        """The frame's ΔF/F: as sent, or converted from raw fluorescence and neuropil (a buffer the
        converter overwrites on its next call, which comes after this frame is added)."""
        if self.converter is None:
            return frame.dff
        return self.converter.update(frame.raw, frame.neuropil)

    def missing_dff(self) -> np.ndarray:
        """An all-missing frame for a gap; the converter, if any, also sees it, so its block clock
        stays on acquisition time."""
        if self.converter is not None:
            self.converter.update(self.missing_frame, self.missing_frame)
        return self.missing_frame

    def add_frame(self, frame: np.ndarray) -> None:
        """Statistics, scale and normalisation of one frame (NaN = missing); the normalised row joins the
        pending batch and the history."""
        self.stats.update(frame)
        self.scale.update(self.stats)
        row = self.pending[self.n_pending]
        self.scale.normalise_into(frame, row)
        self.pending_dff[self.n_pending] = frame
        self.history[self.stream_frames % self.history.shape[0]] = row
        self.n_pending += 1
        self.stream_frames += 1

    def pending_full(self) -> bool:
        return self.n_pending == self.pending.shape[0]

    def take_pending(self) -> np.ndarray:
        """The pending normalised rows (from row 0); their ΔF/F rows are ``pending_dff[:len(rows)]`` until
        the next frame is added."""
        rows = self.pending[:self.n_pending]
        self.n_pending = 0
        return rows

    def newest_normalised(self) -> np.ndarray:
        """The newest consumed frame as the model saw it (a row of the history ring, not a copy)."""
        return self.history[(self.stream_frames - 1) % self.history.shape[0]]

    def history_tail(self, k: int) -> np.ndarray:
        """The last min(k, available) normalised frames, oldest first (a copy)."""
        capacity = self.history.shape[0]
        k = min(k, self.stream_frames, capacity)
        idx = np.arange(self.stream_frames - k, self.stream_frames) % capacity
        return self.history[idx]

    # --- predictable mask (housekeeping, not per frame) ---
    def thresholds_due(self, method: str, thresholds_every: int) -> bool:
        """Whether :meth:`refresh_predictable` would re-choose the thresholds (knee: none yet, or
        ``thresholds_every`` frames since the last choice; POYO-CAP's are fixed)."""
        return method != "poyo-cap" and (self.thresholds is None
                                         or self.stream_frames - self.frames_at_thresholds >= thresholds_every)

    def refresh_predictable(self, method: str, thresholds_every: int) -> float:
        """Recompute the predictable mask from the current skewness and kurtosis; re-choose the
        thresholds (knee) every ``thresholds_every`` frames. Returns the predictable fraction."""
        if method == "poyo-cap":
            self.thresholds = POYO_CAP
        elif self.thresholds_due(method, thresholds_every):  # housekeeping's part: it allocates
            snapshot = self.stats.snapshot()
            self.thresholds = choose_thresholds(snapshot.skewness, snapshot.kurtosis, method=method)
            self.frames_at_thresholds = self.stream_frames
        # the part that runs right after a prediction is sent: in place, allocating nothing
        inside = self.stats.shape_mask_into(self.thresholds.skewness.value, self.thresholds.kurtosis.value,
                                            self.predictable)
        self.frames_at_mask = self.stream_frames
        return inside / self.n_neurons

    def describe(self) -> dict:
        return {"session": self.id, "stream_id": self.stream_id, "neurons": self.n_neurons, "pinned": self.pinned,
                "last_seq": self.last_seq, "stream_frames": self.stream_frames,
                "predictable": int(self.predictable.sum()),
                "thresholds": None if self.thresholds is None else self.thresholds.to_dict(),
                "heads": self.heads.describe(), "rules": 0 if self.rules is None else len(self.rules),
                **self.counts}

    def statistics(self) -> dict:
        """Per-neuron statistics for the ``get_stats`` command: float32 little-endian bytes per field."""
        snapshot = self.stats.snapshot()
        vectors = {name: np.asarray(getattr(snapshot, name), dtype="<f4").tobytes() for name in snapshot.FIELDS}
        vectors["predictable"] = self.predictable.tobytes()
        return {"session": self.id, "stream_id": self.stream_id, "n": self.n_neurons,
                "frames": self.stats.frames_seen, "vectors": vectors,
                "thresholds": None if self.thresholds is None else self.thresholds.to_dict()}

