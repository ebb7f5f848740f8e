"""Scoring trigger rules against events in real recordings: ``rtcalm trigger-eval``.

Rules are replayed through :class:`rtcalm.daemon.offline.OfflineStream`, the daemon's own per-frame
path. *Events* are the ground truth, defined with hindsight over the whole file (an event file,
docs/triggers.md)::

    format = "rtcalm-event"
    version = 1
    [event]
    name = "transients"
    neurons = "each"          # "each" (every neuron is its own channel), "all", or a list of indices
    top_active = 0.1          # optional: only this fraction of neurons, the largest ΔF/F std over the file
    reduce = "mean"           # with a neuron set: mean | max | count_above (level = ...)
    units = "z"               # z: z-scored with the whole file's mean and std; dff: as recorded
    threshold = 3.0
    threshold_units = "value" # value, or sd: the signal's mean + threshold × its std over the file
    separation_ms = 500       # an onset this soon after the previous one is the same event
    window_ms = 500           # a fire counts when an onset follows within this (at the same frame too)

An event is an *onset*: a frame where a channel's signal is above the threshold and the frame before
was not. Scores, pooled over channels and files, after a burn-in of ``max(receptive field, stats
warm-up)`` frames of each file (no rule can act before then): **precision**, the fraction of fires
followed within ``window_ms`` by an onset of the fire's channel; **recall**, the fraction of onsets
preceded within ``window_ms`` by a fire; **lead**, per detected onset the onset's time minus its
earliest such fire's, in ms (median reported).

:func:`compare` is the comparison that matters for a closed loop: on the event's own channels and
reduction, the reactive rule (``activity``: the current frame) against the predictive one
(``forecast``: the model's forecast of the next frames), each swept over thresholds, and for each
precision level the best recall each reaches there, with its lead. The values are recorded in one
pass through the daemon's path; every threshold is then gated by the daemon's gate
(:meth:`RuleSet.gate_values`), so refractory and hold behave as live.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.offline import OfflineStream
from rtcalm.data.recording import Recording
from rtcalm.engine import StepEngine
from rtcalm.errors import RtcalmError
from rtcalm.triggers import kernels
from rtcalm.triggers.rules import (
    RULE_NAME_PATTERN,
    RulesError,
    RuleSpec,
    choice_field,
    neurons_field,
    number_field,
)
from rtcalm.triggers.ruleset import RuleSet

EVENT_FORMAT = "rtcalm-event"
EVENT_KEYS = {"name", "neurons", "top_active", "reduce", "level", "units", "threshold", "threshold_units",
              "separation_ms", "window_ms"}
PRECISION_LEVELS = (0.5, 0.8)
SWEEP_QUANTILES = np.concatenate([np.linspace(0.5, 0.95, 10), np.linspace(0.96, 0.999, 14), [0.9995, 0.9999, 1.0]])


class TriggerEvalError(RtcalmError, ValueError):
    """An event file or a recording trigger-eval cannot use; one line."""


@dataclass(frozen=True)
class EventSpec:
    name: str
    threshold: float
    neurons: str | tuple[int, ...] = "each"
    top_active: float | None = None
    reduce: str = "mean"
    level: float | None = None
    units: str = "z"
    threshold_units: str = "value"
    separation_ms: float = 500.0
    window_ms: float = 500.0

    def describe(self) -> str:
        """One line, for reports and the JSON's ``event``."""
        who = {"each": "each neuron", "all": "all neurons"}.get(self.neurons, None) if isinstance(self.neurons, str) \
            else f"neurons {list(self.neurons)}"
        if self.top_active is not None:
            who += f" (the {self.top_active:.0%} with the largest ΔF/F std)"
        signal = who if self.neurons == "each" else f"{self.reduce} of {who}"
        above = f"{self.threshold:g} SD of the signal" if self.threshold_units == "sd" else f"{self.threshold:g}"
        units = "whole-file z" if self.units == "z" else "ΔF/F"
        return (f"{self.name}: {signal} in {units} crosses {above} upward (onsets {self.separation_ms:g} ms apart; "
                f"window {self.window_ms:g} ms)")


def read_event_file(path) -> EventSpec:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TriggerEvalError(f"{str(path)!r}: no such event file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TriggerEvalError(f"{str(path)!r}: not a readable TOML event file ({exc})") from None
    try:
        return parse_event(document)
    except RulesError as error:
        raise TriggerEvalError(f"{str(path)!r}: {error}") from None


def parse_event(document: dict) -> EventSpec:
    if document.get("format") != EVENT_FORMAT or document.get("version") != 1 or set(document) - {
            "format", "version", "event"}:
        raise RulesError(f"not an rtcalm event file: format = {EVENT_FORMAT!r}, version = 1 and one [event] table")
    table = document.get("event")
    if not isinstance(table, dict):
        raise RulesError("no [event] table")
    unknown = set(table) - EVENT_KEYS
    if unknown:
        raise RulesError(f"unknown event key(s) {sorted(unknown)}; known: {sorted(EVENT_KEYS)}")
    name = table.get("name")
    if type(name) is not str or not RULE_NAME_PATTERN.fullmatch(name):
        raise RulesError(f"event name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    where = f"event {name!r}"
    neurons = "each" if table.get("neurons", "each") == "each" else neurons_field(table, where)
    if neurons == "predictable":
        raise RulesError(f"{where}: neurons must be 'each', 'all' or a list of indices (events use no running mask)")
    reduce = choice_field(table, "reduce", where, ("mean", "max", "count_above"), default="mean")
    level = number_field(table, "level", where, required=False)
    if (reduce == "count_above") != (level is not None) or (neurons == "each" and reduce != "mean"):
        raise RulesError(f"{where}: level goes with reduce = 'count_above' only, and 'each' takes no reduction")
    return EventSpec(
        name=name, threshold=number_field(table, "threshold", where), neurons=neurons,
        top_active=number_field(table, "top_active", where, required=False, low=1e-6, high=1.0),
        reduce=reduce, level=level, units=choice_field(table, "units", where, ("z", "dff"), default="z"),
        threshold_units=choice_field(table, "threshold_units", where, ("value", "sd"), default="value"),
        separation_ms=number_field(table, "separation_ms", where, required=False, low=0.0, high=1e6) or 500.0,
        window_ms=number_field(table, "window_ms", where, required=False, low=0.0, high=1e6) or 500.0)


# --- events: channels, signals, onsets ------------------------------------------------------------------
def event_channels(spec: EventSpec, dff: np.ndarray) -> list[tuple[int, ...]]:
    """The neurons of each event channel of a (frames, neurons) recording."""
    n = dff.shape[1]
    chosen = np.arange(n) if not isinstance(spec.neurons, tuple) else np.array(spec.neurons)
    if chosen.max() >= n:
        raise TriggerEvalError(f"event {spec.name!r}: neuron index {chosen.max()} is out of range for {n} neurons")
    if spec.top_active is not None:
        std = np.nanstd(dff[:, chosen], axis=0)
        keep = max(1, round(spec.top_active * chosen.size))
        chosen = np.sort(chosen[np.argsort(-np.nan_to_num(std, nan=-1.0), kind="stable")[:keep]])
    if spec.neurons == "each":
        return [(int(i),) for i in chosen]
    return [tuple(int(i) for i in chosen)]


def event_signal(spec: EventSpec, dff: np.ndarray, channels: list[tuple[int, ...]]) -> np.ndarray:
    """(frames, channels): each channel's signal, in the event's units (z: the whole file's)."""
    values = dff.astype(np.float64)
    if spec.units == "z":
        values = (values - np.nanmean(values, axis=0)) / np.where(np.nanstd(values, axis=0) > 0,
                                                                 np.nanstd(values, axis=0), np.nan)
    columns = []
    with np.errstate(all="ignore"):
        for neurons in channels:
            x = values[:, list(neurons)]
            if spec.reduce == "mean":
                columns.append(np.nanmean(x, axis=1))
            elif spec.reduce == "max":
                columns.append(np.nanmax(x, axis=1))
            else:
                columns.append(np.sum(x > spec.level, axis=1).astype(np.float64))
    return np.stack(columns, axis=1)


def event_onsets(signal: np.ndarray, threshold: np.ndarray, separation_frames: int) -> list[np.ndarray]:
    """Per channel, the frames where the signal rises above ``threshold`` (per channel) from at or
    below it, at least ``separation_frames`` after the previous onset."""
    onsets = []
    for c in range(signal.shape[1]):
        above = signal[:, c] > threshold[c]  # NaN: not above
        rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
        kept, last = [], -(1 << 40)
        for t in rising:
            if t - last >= separation_frames:
                kept.append(t)
                last = t
        onsets.append(np.array(kept, dtype=np.int64))
    return onsets


def event_thresholds(spec: EventSpec, signal: np.ndarray) -> np.ndarray:
    if spec.threshold_units == "value":
        return np.full(signal.shape[1], spec.threshold)
    return np.nanmean(signal, axis=0) + spec.threshold * np.nanstd(signal, axis=0)


# --- scoring --------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Counts pooled over channels and files for one rule (or one threshold of a sweep)."""

    fires: int = 0
    true_fires: int = 0
    events: int = 0
    detected: int = 0
    leads_frames: list = field(default_factory=list)  # onset minus earliest fire, per detected onset

    def add(self, fires: np.ndarray, onsets: np.ndarray, window: int, burn_in: int) -> None:
        """``fires`` and ``onsets``: sorted frame indices of one channel of one file."""
        fires, onsets = fires[fires >= burn_in], onsets[onsets >= burn_in]
        self.fires += fires.size
        self.events += onsets.size
        if fires.size == 0 or onsets.size == 0:
            return
        # a fire is true when an onset lies in [fire, fire + window]
        next_onset = np.searchsorted(onsets, fires, side="left")
        has_next = next_onset < onsets.size
        self.true_fires += int(np.sum(onsets[np.minimum(next_onset, onsets.size - 1)][has_next] - fires[has_next]
                                      <= window))
        # an onset is detected by its earliest fire in [onset - window, onset]
        first_fire = np.searchsorted(fires, onsets - window, side="left")
        valid = first_fire < fires.size
        lead = onsets[valid] - fires[np.minimum(first_fire, fires.size - 1)][valid]
        detected = lead >= 0
        self.detected += int(detected.sum())
        self.leads_frames.extend(lead[detected].tolist())

    def summary(self, rate_hz: float) -> dict:
        return {"fires": self.fires, "events": self.events,
                "precision": self.true_fires / self.fires if self.fires else None,
                "recall": self.detected / self.events if self.events else None,
                "lead_ms": float(np.median(self.leads_frames)) * 1e3 / rate_hz if self.leads_frames else None}


def burn_in_frames(engine: StepEngine, config: DaemonConfig) -> int:
    return max(engine.receptive_field, config.stats.warmup_frames)


def continuous_dff(recording: Recording, engine: StepEngine) -> np.ndarray:
    if recording.dff.ndim != 2:
        raise TriggerEvalError(f"{recording.meta.source}: trigger-eval needs a continuous recording (frames, "
                               "neurons), not trials")
    if abs(recording.rate_hz - engine.rate_hz) > 0.02 * engine.rate_hz:
        raise TriggerEvalError(f"{recording.meta.source}: recorded at {recording.rate_hz:g} Hz; the model runs at "
                               f"{engine.rate_hz:g} Hz")
    return recording.dff


# --- replays --------------------------------------------------------------------------------------------
def replay(engine: StepEngine, dff: np.ndarray, rules: list[RuleSpec], config: DaemonConfig | None = None):
    """Stream ``dff`` (frames, neurons) through the daemon's path with ``rules``: (fired frames per rule
    as arrays, the rules' values at every frame (frames, rules))."""
    stream = OfflineStream(engine, dff.shape[1], config=config, rules=rules)
    rule_set = stream.session.rules
    values = np.empty((dff.shape[0], len(rules)))
    fired = [[] for _ in rules]
    for t in range(dff.shape[0]):
        count = stream.push(dff[t])
        values[t] = rule_set.values
        for i in range(count):
            r = int(rule_set.events[i])
            if rule_set.outcome[r] == kernels.FIRED:
                fired[r].append(t)
    return [np.array(f, dtype=np.int64) for f in fired], values


def evaluate_rules(engine: StepEngine, recordings: list[Recording], rules: list[RuleSpec], event: EventSpec,
                   config: DaemonConfig | None = None) -> dict:
    """Each rule's fires scored against the event's onsets (of any channel) in every recording."""
    config = config or DaemonConfig()
    tallies = {spec.name: Tally() for spec in rules}
    per_file = []
    for recording in recordings:
        dff = continuous_dff(recording, engine)
        channels = event_channels(event, dff)
        signal = event_signal(event, dff, channels)
        onsets = np.unique(np.concatenate(event_onsets(signal, event_thresholds(event, signal),
                                                       _frames(event.separation_ms, engine))))
        fired, _values = replay(engine, dff, rules, config)
        for spec, fires in zip(rules, fired, strict=True):
            tallies[spec.name].add(fires, onsets, _frames(event.window_ms, engine), burn_in_frames(engine, config))
        per_file.append({"file": recording.meta.source, "events": int(onsets.size),
                         "fired": {spec.name: fires.tolist() for spec, fires in zip(rules, fired, strict=True)}})
    return {"event": event.describe(), "files": len(recordings),
            "rules": {name: tally.summary(engine.rate_hz) for name, tally in tallies.items()}, "per_file": per_file}


def compare(engine: StepEngine, recordings: list[Recording], event: EventSpec, *, forecast_frames: tuple[int, int],
            config: DaemonConfig | None = None, levels=PRECISION_LEVELS) -> dict:
    """Reactive (``activity``) against predictive (``forecast``) rules on the event's channels, each swept
    over thresholds (quantiles of its own values); per precision level, the best recall each reaches
    and its median lead (None where the level is out of reach)."""
    config = config or DaemonConfig()
    window, separation = _frames(event.window_ms, engine), _frames(event.separation_ms, engine)
    runs = []  # per file: (base rules, recorded values, onsets per channel)
    for recording in recordings:
        dff = continuous_dff(recording, engine)
        channels = event_channels(event, dff)
        signal = event_signal(event, dff, channels)
        onsets = event_onsets(signal, event_thresholds(event, signal), separation)
        base = [_channel_rule(event, kind, neurons, c, forecast_frames)
                for kind in ("activity", "forecast") for c, neurons in enumerate(channels)]
        _fired, values = replay(engine, dff, base, config)
        runs.append((base, values, onsets))
    sweep = {}
    for kind_index, kind in enumerate(("activity", "forecast")):
        pooled = np.concatenate([values[:, kind_index * len(onsets):(kind_index + 1) * len(onsets)].ravel()
                                 for _base, values, onsets in runs])
        grid = np.unique(np.quantile(pooled[np.isfinite(pooled)], SWEEP_QUANTILES))
        tallies = [Tally() for _ in grid]
        for base, values, onsets in runs:
            n_channels = len(onsets)
            columns = slice(kind_index * n_channels, (kind_index + 1) * n_channels)
            fired = _gate_sweep(engine, base[columns], values[:, columns], grid)
            for g, tally in enumerate(tallies):
                for c in range(n_channels):
                    tally.add(fired[g][c], onsets[c], window, burn_in_frames(engine, config))
        sweep["reactive" if kind == "activity" else "forecast"] = [
            {"threshold": float(threshold), **tally.summary(engine.rate_hz)} for threshold, tally in zip(grid, tallies, strict=True)]
    return {"compare": {name: _at_levels(points, levels) for name, points in sweep.items()},
            "event": event.describe(), "files": len(recordings), "forecast_frames": list(forecast_frames),
            "curves": sweep}


def _channel_rule(event: EventSpec, kind: str, neurons: tuple[int, ...], channel: int,
                  forecast_frames: tuple[int, int]) -> RuleSpec:
    """The rule a lab would write for this event channel: the same neurons and reduction, running-z or
    ΔF/F units, firing at most once per event (refractory = the event separation), armed."""
    return RuleSpec(name=f"{kind}-{channel}", kind=kind, threshold=math.inf, neurons=neurons,
                    reduce="mean" if event.neurons == "each" else event.reduce, level=event.level, units=event.units,
                    frames=forecast_frames if kind == "forecast" else None, armed=True,
                    refractory_ms=event.separation_ms, max_rate_hz=0.0)


def _gate_sweep(engine: StepEngine, base: list[RuleSpec], values: np.ndarray, grid: np.ndarray) -> list[list[np.ndarray]]:
    """Fired frames [threshold][channel] of ``base`` rules gated at every threshold of ``grid`` over the
    recorded ``values`` (frames, channels), by one RuleSet holding every (threshold, channel) rule."""
    specs = [replace(spec, name=f"{spec.name}@{g}", threshold=float(threshold))
             for g, threshold in enumerate(grid) for spec in base]
    rules = RuleSet(specs, n_neurons=1 + max(max(s.neurons) for s in base), horizon=engine.horizon,
                    rate_hz=engine.rate_hz, receptive_field=engine.receptive_field, heads={})
    tiled = np.empty(len(specs))
    fired = [[] for _ in specs]
    for t in range(values.shape[0]):
        for g in range(grid.size):
            tiled[g * len(base):(g + 1) * len(base)] = values[t]
        count = rules.gate_values(stream_frames=t + 1, values=tiled)
        for i in range(count):
            r = int(rules.events[i])
            if rules.outcome[r] == kernels.FIRED:
                fired[r].append(t)
    n = len(base)
    return [[np.array(fired[g * n + c], dtype=np.int64) for c in range(n)] for g in range(grid.size)]


def _at_levels(points: list[dict], levels) -> dict:
    """Per precision level: the sweep point of highest recall among those at least that precise (ties:
    the longer lead), or None."""
    out = {}
    for level in levels:
        reaching = [p for p in points if p["precision"] is not None and p["precision"] >= level
                    and p["recall"] is not None]
        best = max(reaching, key=lambda p: (p["recall"], p["lead_ms"] or 0.0), default=None)
        out[str(level)] = None if best is None else {"lead_ms": best["lead_ms"], "recall": best["recall"],
                                                      "precision": best["precision"], "threshold": best["threshold"]}
    return out


def _frames(ms: float, engine: StepEngine) -> int:
    return int(round(ms * 1e-3 * engine.rate_hz))
