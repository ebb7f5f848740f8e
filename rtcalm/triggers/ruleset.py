"""A session's trigger rules, compiled into arrays, with their per-frame state.

:class:`RuleSet` is what the daemon evaluates after the model step and the decoding heads of every
answered frame, and what ``rtcalm trigger-eval`` drives offline over a recording (the same object,
the same calls). Everything is allocated when the rules are loaded; per frame, :meth:`RuleSet.evaluate`
runs two numba kernels (:mod:`rtcalm.triggers.kernels`) and a Python loop over the *decoded* rules
only (a dictionary look-up each), never over neurons.

Time is counted in frames of the acquisition (``clock``: frames consumed since the rules were loaded,
filled-in missing frames and frames folded into a catch-up batch included), so the refractory period
and the rate limit mean the same live and offline, whatever the rig's clock or the daemon's load.
Rules are evaluated on answered frames only: a frame folded into a catch-up batch is stale by the time
it is processed, and acting on it late would be worse than not acting.

Safety (docs/triggers.md): rules start disarmed unless the file says otherwise. Forecast and decoded
rules are *held* (not evaluated, their streaks restart) for the model's receptive field after the
stream restarts (a reset, a new neuron count, a gap too long to fill, a hot-swapped model) and after
every filled gap (its missing frames then leave the model's window), since until then the forecast
and the hidden state are built on frames the model never saw. The refractory clock and the rate
tokens survive all of these, so a restart can never make a rule fire sooner than it otherwise could.
"""

from __future__ import annotations

import math

import numpy as np

from rtcalm.triggers import kernels
from rtcalm.triggers.rules import RuleSpec, check_for_session

_KIND = {"activity": kernels.ACTIVITY, "forecast": kernels.FORECAST, "decoded": kernels.DECODED}
_REDUCE = {"mean": kernels.MEAN, "max": kernels.MAX, "count_above": kernels.COUNT_ABOVE}
OUTCOME_NAMES = {kernels.FIRED: "fired", kernels.REFRACTORY: "refractory", kernels.RATE_LIMIT: "rate_limit"}
NEVER = -(1 << 62)  # the clock of a rule's last fire before it first fires


class RuleSet:
    """Compiled rules for a session of ``n_neurons`` served by a model with ``horizon`` frames of
    forecast at ``rate_hz`` and a receptive field of ``receptive_field`` frames; ``heads``: the
    session's decoding heads, name -> classes ([] for a regression head). Raises RulesError if a rule
    does not fit (rtcalm.triggers.rules.check_for_session)."""

    def __init__(self, specs: list[RuleSpec], *, n_neurons: int, horizon: int, rate_hz: float,
                 receptive_field: int, heads: dict[str, list[float]]):
        check_for_session(specs, n_neurons=n_neurons, horizon=horizon, heads=heads)
        self.specs = list(specs)
        self.names = [spec.name for spec in specs]
        self.n_neurons, self.horizon, self.rate_hz = n_neurons, horizon, rate_hz
        self.receptive_field = receptive_field
        n = len(specs)
        # --- compiled rules (never change after load) ---
        self.kind = np.array([_KIND[s.kind] for s in specs], dtype=np.int8)
        self.use_z = np.array([s.units == "z" for s in specs], dtype=np.bool_)
        self.mode = np.array([kernels.INDICES if isinstance(s.neurons, tuple) else
                              (kernels.PREDICTABLE if s.neurons == "predictable" else kernels.ALL) for s in specs],
                             dtype=np.int8)
        index_lists = [s.neurons if isinstance(s.neurons, tuple) else () for s in specs]
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(indices) for indices in index_lists])
        self.idx = np.array([i for indices in index_lists for i in indices], dtype=np.int64)
        self.reduce = np.array([_REDUCE[s.reduce] for s in specs], dtype=np.int8)
        self.level = np.array([s.level if s.level is not None else 0.0 for s in specs], dtype=np.float64)
        self.first = np.array([s.frames[0] - 1 if s.frames else 0 for s in specs], dtype=np.int64)
        self.last = np.array([s.frames[1] - 1 if s.frames else 0 for s in specs], dtype=np.int64)
        self.sign = np.array([1.0 if s.direction == "above" else -1.0 for s in specs])
        self.threshold = np.array([s.threshold for s in specs], dtype=np.float64)
        self.min_frames = np.array([s.min_frames for s in specs], dtype=np.int64)
        self.refractory_frames = np.array([math.ceil(s.refractory_ms * 1e-3 * rate_hz - 1e-9) for s in specs],
                                          dtype=np.int64)
        self.token_rate = np.array([s.max_rate_hz / rate_hz for s in specs], dtype=np.float64)  # per frame
        self.token_cap = np.array([max(1.0, s.max_rate_hz) for s in specs], dtype=np.float64)  # a second's worth
        self.needs_warm = self.kind != kernels.ACTIVITY
        self.decoded_rules = [r for r, s in enumerate(specs) if s.kind == "decoded"]
        # --- state ---
        self.armed = np.array([s.armed for s in specs], dtype=np.bool_)
        self.values = np.full(n, np.nan)
        self.streak = np.zeros(n, dtype=np.int64)
        self.last_fire = np.full(n, NEVER, dtype=np.int64)
        self.tokens = self.token_cap.copy()
        self.outcome = np.zeros(n, dtype=np.int8)
        self.events = np.zeros(n, dtype=np.int64)
        self.held = np.zeros(n, dtype=np.bool_)
        # per-forecast-frame scratch of the kernels (horizon,)
        self._total, self._extreme = np.zeros(horizon), np.zeros(horizon)
        self._count, self._above = np.zeros(horizon, dtype=np.int64), np.zeros(horizon, dtype=np.int64)
        self.clock = 0  # frames consumed since load
        self.hold = 0  # frames left before forecast and decoded rules may evaluate
        self._seen = 0  # the stream's frame count at the previous evaluation
        self._decoded_keys: list[tuple[int, str, int]] = []  # (rule, output key, class index or -1)
        self.bind_heads(heads)
        self.restart(stream_frames=0)

    def __len__(self) -> int:
        return len(self.specs)

    # --- per frame ------------------------------------------------------------------------------------
    def evaluate(self, *, stream_frames: int, dff: np.ndarray, z: np.ndarray, forecast_dff: np.ndarray,
                 forecast_z: np.ndarray, predictable: np.ndarray, decoded: dict) -> int:
        """One answered frame: ``stream_frames`` consumed so far by the session's stream (the frames
        since the previous call, filled-in and folded ones included, advance the clock); its ΔF/F ``dff``
        and normalised ``z`` (N,); the forecast in both units (N, horizon); the predictable mask (N,)
        uint8; the heads' ``decoded`` outputs. Returns how many rules fired or were suppressed on this
        frame: ``self.events[:count]`` are their indices and ``self.outcome[r]`` says which."""
        elapsed = self._advance(stream_frames)
        for r, key, class_index in self._decoded_keys:  # a handful of dictionary look-ups
            output = decoded.get(key)
            if output is None:
                self.values[r] = np.nan
            else:
                self.values[r] = output[class_index] if class_index >= 0 else output
        kernels.rule_values(self.kind, self.use_z, self.mode, self.idx, self.offsets, self.reduce, self.level,
                            self.first, self.last, self.sign, self.hold == 0, dff, z, forecast_dff, forecast_z,
                            predictable, self.values, self._total, self._count, self._extreme, self._above)
        return self._gate(elapsed)

    def gate_values(self, *, stream_frames: int, values: np.ndarray) -> int:
        """:meth:`evaluate` with the rules' values given instead of computed (the same clock, hold and
        gate): trigger-eval records the values of one pass and gates them at many thresholds."""
        elapsed = self._advance(stream_frames)
        self.values[:] = values
        return self._gate(elapsed)

    def _advance(self, stream_frames: int) -> int:
        """Move the clock and the hold to ``stream_frames``; the frames elapsed since the last call."""
        elapsed = stream_frames - self._seen
        self._seen = stream_frames
        self.clock += elapsed
        warming = self.hold > 0
        self.hold = max(0, self.hold - elapsed)
        if warming != (self.hold > 0):
            np.logical_and(self.needs_warm, self.hold > 0, out=self.held)
        return elapsed

    def _gate(self, elapsed: int) -> int:
        return kernels.gate(self.values, self.threshold, self.sign, self.min_frames, self.refractory_frames,
                            self.token_rate, self.token_cap, self.armed, self.held, self.streak, self.last_fire,
                            self.tokens, self.clock, elapsed, self.outcome, self.events)

    # --- between frames ---------------------------------------------------------------------------------
    def restart(self, *, stream_frames: int = 0, extra_hold: int = 0) -> None:
        """The stream restarted (now at ``stream_frames``), or the model changed, or a gap of
        ``extra_hold`` frames is being filled: every streak restarts and forecast and decoded rules are
        held until the receptive field holds only frames after this point."""
        self._seen = stream_frames
        self.hold = self.receptive_field + extra_hold
        self.streak[:] = 0
        np.logical_and(self.needs_warm, self.hold > 0, out=self.held)

    def gap(self, missing: int) -> None:
        """``missing`` frames are about to be filled in as missing data."""
        self.hold = max(self.hold, self.receptive_field + missing)
        self.streak[:] = 0
        np.logical_and(self.needs_warm, self.hold > 0, out=self.held)

    def bind_heads(self, heads: dict[str, list[float]]) -> None:
        """Where each decoded rule reads its value, for the session's current heads (name -> classes). A
        rule whose head is gone, or no longer has its class, reads NaN (never holds) until a head that
        fits is loaded again."""
        keys = []
        for r in self.decoded_rules:
            spec = self.specs[r]
            classes = heads.get(spec.head)
            if classes is None or (spec.class_value is None) != (not classes) or (
                    classes and spec.class_value not in classes):
                keys.append((r, "\x00unbound", -1))  # a key no head publishes
            elif spec.class_value is None:
                keys.append((r, spec.head, -1))
            else:
                keys.append((r, spec.head + "_probabilities", classes.index(spec.class_value)))
        self._decoded_keys = keys

    def set_armed(self, names: list[str] | None, armed: bool) -> list[str]:
        """Arm or disarm the rules ``names`` (all when None); returns the names changed. KeyError names an
        unknown rule before anything changes."""
        chosen = self.names if names is None else names
        unknown = [name for name in chosen if name not in self.names]
        if unknown:
            raise KeyError(", ".join(unknown))
        for name in chosen:
            self.armed[self.names.index(name)] = armed
        return list(chosen)

    def fits(self, *, n_neurons: int, horizon: int) -> bool:
        """Whether these rules still fit a stream of ``n_neurons`` and a model of ``horizon``."""
        if n_neurons != self.n_neurons:
            return False
        return all(spec.frames is None or spec.frames[1] <= horizon for spec in self.specs)

    def describe(self) -> list[dict]:
        """Every rule with its state, for the ``rules`` control command."""
        out = []
        for r, spec in enumerate(self.specs):
            state = {"armed": bool(self.armed[r]), "streak": int(self.streak[r]),
                     "held": bool(self.held[r]), "value": None if math.isnan(self.values[r]) else float(self.values[r]),
                     "frames_since_fire": None if self.last_fire[r] == NEVER else int(self.clock - self.last_fire[r])}
            out.append({**spec.to_dict(), **state})
        return out
