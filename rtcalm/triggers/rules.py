"""Trigger rules files: reading and checking them completely before anything uses them.

A rules file is TOML (docs/triggers.md is the reference)::

    format = "rtcalm-rules"
    version = 1
    armed = false                  # optional; rules start disarmed unless this (or a rule's own) says true

    [[rule]]
    name = "burst"                 # 1-64 of A-Z a-z 0-9 _ . : -, unique in the file
    kind = "activity"              # activity | forecast | decoded
    neurons = "all"                # activity, forecast: "all", "predictable" or a list of neuron indices
    reduce = "mean"                # activity, forecast: mean | max | count_above
    level = 2.0                    # count_above only: a neuron counts when its value is above this
    units = "z"                    # activity, forecast: "z" (running z-score, what the model sees) or "dff"
    frames = [3, 10]               # forecast only: frames ahead, both ends included (1 = the next frame)
    head = "direction"             # decoded only: a loaded decoding head
    class = 90.0                   # decoded, classification heads: that class's probability
    threshold = 0.8
    direction = "above"            # fires when the value goes above (or below) the threshold
    min_frames = 1                 # the condition holds on this many consecutive evaluated frames
    refractory_ms = 500.0          # required: no fire for this long after a fire (0: none)
    max_rate_hz = 2.0              # required: long-run fire rate bound (token bucket, burst of max(1, rate))
    serial_byte = 65               # optional: the byte written to the serial trigger line when it fires
    armed = true                   # optional, overrides the file's

:func:`parse_rules` turns the text into :class:`RuleSpec` values or raises :class:`RulesError` with one
line naming the rule and the field. Checks that need a session (neuron indices against its count,
frames against the model's horizon, heads and classes against its loaded heads) are made by
:func:`check_for_session`; a rule set that passes both is compiled by :class:`rtcalm.triggers.ruleset.RuleSet`.
Nothing here runs per frame.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rtcalm.errors import RtcalmError

FORMAT = "rtcalm-rules"
VERSION = 1
MAX_RULES = 64  # per session: the per-frame cost grows with it, and no experiment needs more lines
MAX_RULES_FILE_BYTES = 1 << 20
RULE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
KINDS = ("activity", "forecast", "decoded")
REDUCTIONS = ("mean", "max", "count_above")
UNITS = ("z", "dff")
DIRECTIONS = ("above", "below")
NEURON_SETS = ("all", "predictable")
MAX_MIN_FRAMES = 100_000
MAX_REFRACTORY_MS = 3_600_000.0  # an hour

RULE_KEYS = {
    "common": {"name", "kind", "threshold", "direction", "min_frames", "refractory_ms", "max_rate_hz",
               "serial_byte", "armed"},
    "activity": {"neurons", "reduce", "level", "units"},
    "forecast": {"neurons", "reduce", "level", "units", "frames"},
    "decoded": {"head", "class"},
}


class RulesError(RtcalmError, ValueError):
    """A rules file or rule that cannot be used; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class RuleSpec:
    """One checked rule. ``neurons`` is "all", "predictable" or a tuple of indices; ``frames`` (forecast)
    is (first, last) frames ahead, 1-based and inclusive; ``class_value`` is None for a regression head's
    value."""

    name: str
    kind: str
    threshold: float
    direction: str = "above"
    min_frames: int = 1
    refractory_ms: float = 0.0
    max_rate_hz: float = 0.0
    serial_byte: int | None = None
    armed: bool = False
    neurons: str | tuple[int, ...] = "all"
    reduce: str = "mean"
    level: float | None = None
    units: str = "z"
    frames: tuple[int, int] | None = None
    head: str | None = None
    class_value: float | None = None

    def to_dict(self) -> dict:
        """The rule as the ``rules`` control command and trigger-eval report it (TOML field names)."""
        out = {"name": self.name, "kind": self.kind, "threshold": self.threshold, "direction": self.direction,
               "min_frames": self.min_frames, "refractory_ms": self.refractory_ms, "max_rate_hz": self.max_rate_hz}
        if self.serial_byte is not None:
            out["serial_byte"] = self.serial_byte
        if self.kind == "decoded":
            out["head"] = self.head
            if self.class_value is not None:
                out["class"] = self.class_value
            return out
        out.update(neurons=self.neurons if isinstance(self.neurons, str) else list(self.neurons),
                   reduce=self.reduce, units=self.units)
        if self.level is not None:
            out["level"] = self.level
        if self.frames is not None:
            out["frames"] = list(self.frames)
        return out


def read_rules_file(path) -> list[RuleSpec]:
    """Read and check the rules file at ``path`` (RulesError, with the path, otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise RulesError(f"{str(path)!r}: no such rules file")
    if path.stat().st_size > MAX_RULES_FILE_BYTES:
        raise RulesError(f"{str(path)!r}: over {MAX_RULES_FILE_BYTES} bytes, not a rules file")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{str(path)!r}: cannot read it as UTF-8 text ({exc})") from None
    try:
        return parse_rules(text)
    except RulesError as error:
        raise RulesError(f"{str(path)!r}: {error}") from None


def parse_rules(text: str) -> list[RuleSpec]:
    """The checked rules of a rules file's text, in file order (an empty list clears a session's rules)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"not valid TOML ({exc})") from None
    unknown = set(document) - {"format", "version", "armed", "rule"}
    if unknown:
        raise RulesError(f"unknown top-level key(s) {sorted(unknown)}; expected format, version, armed, [[rule]]")
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise RulesError(f"not an rtcalm rules file: it needs format = {FORMAT!r} and version = {VERSION}")
    armed = bool_field(document, "armed", "the file", default=False)
    rules = document.get("rule", [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise RulesError("rules are [[rule]] tables")
    if len(rules) > MAX_RULES:
        raise RulesError(f"{len(rules)} rules; at most {MAX_RULES} per session")
    specs = [parse_rule(rule, i, armed) for i, rule in enumerate(rules)]
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise RulesError(f"rule name(s) {duplicated} used more than once")
    serial = [spec.serial_byte for spec in specs if spec.serial_byte is not None]
    if len(serial) != len(set(serial)):
        raise RulesError("two rules share a serial_byte; the board could not tell them apart")
    return specs


def parse_rule(table: dict, index: int, file_armed: bool = False) -> RuleSpec:
    """One [[rule]] table (``index``: its position, for messages)."""
    name = table.get("name")
    if type(name) is not str or not RULE_NAME_PATTERN.fullmatch(name):
        raise RulesError(f"rule {index + 1}: name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    where = f"rule {name!r}"
    kind = choice_field(table, "kind", where, KINDS)
    unknown = set(table) - RULE_KEYS["common"] - RULE_KEYS[kind]
    if unknown:
        raise RulesError(f"{where}: key(s) {sorted(unknown)} do not apply to a {kind} rule")
    for key in ("refractory_ms", "max_rate_hz"):
        if key not in table:  # a line that drives hardware: its pace is the lab's decision, not a default
            raise RulesError(f"{where}: {key} is required (0 for no limit)")
    spec = dict(
        name=name, kind=kind, threshold=number_field(table, "threshold", where, required=True),
        direction=choice_field(table, "direction", where, DIRECTIONS, default="above"),
        min_frames=integer_field(table, "min_frames", where, 1, MAX_MIN_FRAMES, default=1),
        refractory_ms=number_field(table, "refractory_ms", where, low=0.0, high=MAX_REFRACTORY_MS),
        max_rate_hz=number_field(table, "max_rate_hz", where, low=0.0, high=1000.0),
        serial_byte=integer_field(table, "serial_byte", where, 1, 255, default=None),
        armed=bool_field(table, "armed", where, default=file_armed))
    if kind == "decoded":
        head = table.get("head")
        if type(head) is not str or not RULE_NAME_PATTERN.fullmatch(head):
            raise RulesError(f"{where}: head must be the name of a decoding head, got {head!r}")
        return RuleSpec(**spec, head=head, class_value=number_field(table, "class", where, required=False))
    reduce = choice_field(table, "reduce", where, REDUCTIONS, default="mean")
    level = number_field(table, "level", where, required=False)
    if (reduce == "count_above") != (level is not None):
        raise RulesError(f"{where}: level goes with reduce = 'count_above', and only with it")
    frames = None
    if kind == "forecast":
        frames = table.get("frames")
        if (not isinstance(frames, list) or len(frames) != 2 or not all(type(f) is int for f in frames)
                or not 1 <= frames[0] <= frames[1]):
            raise RulesError(f"{where}: frames must be [first, last] frames ahead with 1 <= first <= last, "
                             f"got {frames!r}")
        frames = (frames[0], frames[1])
    return RuleSpec(**spec, neurons=neurons_field(table, where), reduce=reduce, level=level,
                    units=choice_field(table, "units", where, UNITS, default="z"), frames=frames)


def check_for_session(specs: list[RuleSpec], *, n_neurons: int, horizon: int, heads: dict[str, list[float]]) -> None:
    """RulesError unless every rule fits a session of ``n_neurons`` served by a model forecasting
    ``horizon`` frames, with decoding heads ``heads`` (name -> classes; [] for a regression head)."""
    for spec in specs:
        where = f"rule {spec.name!r}"
        if isinstance(spec.neurons, tuple) and max(spec.neurons) >= n_neurons:
            raise RulesError(f"{where}: neuron index {max(spec.neurons)} is out of range for a session of "
                             f"{n_neurons} neurons")
        if spec.frames is not None and spec.frames[1] > horizon:
            raise RulesError(f"{where}: frames {list(spec.frames)} reach beyond the model's horizon of {horizon} frames")
        if spec.kind != "decoded":
            continue
        if spec.head not in heads:
            loaded = ", ".join(heads) or "none"
            raise RulesError(f"{where}: the session has no decoding head {spec.head!r} (loaded: {loaded}); "
                             "load the head first")
        classes = heads[spec.head]
        if classes and spec.class_value is None:
            raise RulesError(f"{where}: head {spec.head!r} classifies; give class = one of {classes}")
        if not classes and spec.class_value is not None:
            raise RulesError(f"{where}: head {spec.head!r} outputs a value, not classes; remove class")
        if classes and spec.class_value not in classes:
            raise RulesError(f"{where}: class {spec.class_value:g} is not one of head {spec.head!r}'s {classes}")


# --- field readers (the event files of rtcalm.eval.triggers use them too): RulesError naming the field ---
def number_field(table: dict, key: str, where: str, *, required: bool = True, low: float = -math.inf,
            high: float = math.inf) -> float | None:
    value = table.get(key)
    if value is None:
        if required:
            raise RulesError(f"{where}: {key} is required")
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        bounds = "" if math.isinf(low) and math.isinf(high) else f" in [{low:g}, {high:g}]"
        raise RulesError(f"{where}: {key} must be a finite number{bounds}, got {value!r}")
    return float(value)


def integer_field(table: dict, key: str, where: str, low: int, high: int, *, default: int | None) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise RulesError(f"{where}: {key} must be an integer from {low} to {high}, got {value!r}")
    return value


def bool_field(table: dict, key: str, where: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if type(value) is not bool:
        raise RulesError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def choice_field(table: dict, key: str, where: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = table.get(key, default)
    if value not in choices:
        raise RulesError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def neurons_field(table: dict, where: str) -> str | tuple[int, ...]:
    value = table.get("neurons", "all")
    if isinstance(value, str):
        if value not in NEURON_SETS:
            raise RulesError(f"{where}: neurons must be 'all', 'predictable' or a list of neuron indices, got {value!r}")
        return value
    if (not isinstance(value, list) or not value or not all(type(i) is int and i >= 0 for i in value)
            or len(set(value)) != len(value)):
        raise RulesError(f"{where}: neurons must be a non-empty list of distinct neuron indices (>= 0)")
    return tuple(value)
