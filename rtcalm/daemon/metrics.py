"""Prometheus metrics of the daemon, and a ring buffer of recent per-frame stage timings.

Each daemon has its own ``CollectorRegistry`` (two daemons in one process, as in the tests, do not
share counters) served over HTTP on a loopback port by prometheus_client's own server thread. The hot
path only calls ``observe``/``inc`` on label children bound once here, never ``.labels(...)`` per frame.

Names follow the Prometheus conventions: base units (``_seconds``), counters end in ``_total``.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rtcalm.protocol import ERROR_CODES, FRAME_REJECTION_CODES
from rtcalm.stats.percentile import percentile

STAGES = ("validate", "stats", "model", "publish")
RULES_STAGE = "rules"  # observed only for sessions with trigger rules
# Latency buckets in seconds: fine below a millisecond (the non-model stages), then up to several
# frame periods at 30 Hz (a frame period is 33 ms).
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 6e-3,
                   8e-3, 12e-3, 16e-3, 25e-3, 33e-3, 50e-3, 66e-3, 100e-3, 250e-3, 1.0)
SESSION_RESTART_REASONS = ("neuron_count", "gap_too_large", "reset", "internal")
HEAD_DROP_REASONS = ("neuron_count", "model_swap")  # why decoding heads stopped fitting their session
RULES_DROP_REASONS = ("neuron_count", "model_swap")  # why trigger rules stopped fitting their session
SUPPRESSION_REASONS = ("refractory", "rate_limit")


class RuleMetrics:
    """One session's trigger metrics, a child per rule bound at load (the hot path indexes lists)."""

    def __init__(self, metrics: DaemonMetrics, session: str, names: list[str]):
        self.session, self.names = session, list(names)
        self.fired = [metrics.triggers_fired.labels(session=session, rule=name) for name in names]
        self.latency = [metrics.trigger_latency.labels(session=session, rule=name) for name in names]
        self.suppressed = {reason: [metrics.triggers_suppressed.labels(session=session, rule=name, reason=reason)
                                    for name in names] for reason in SUPPRESSION_REASONS}


class DaemonMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()

        self.receive_to_publish = Histogram(
            "rtcalm_receive_to_publish_seconds",
            "Time from taking a frame off the ingest socket to publishing its prediction",
            buckets=LATENCY_BUCKETS, registry=registry)
        stage = Histogram("rtcalm_stage_seconds", "Time spent in one pipeline stage per published prediction",
                          ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.stage = {name: stage.labels(stage=name) for name in (*STAGES, RULES_STAGE)}
        self.acquisition_to_publish = Histogram(
            "rtcalm_acquisition_to_publish_seconds",
            "Time from the rig's acquisition timestamp to publishing (observed only when the rig's clock "
            "is this machine's: metrics.rig_clock_is_local)", buckets=LATENCY_BUCKETS, registry=registry)

        self.frames_received = Counter("rtcalm_frames_received_total", "Messages taken off the ingest socket",
                                       registry=registry)
        self.predictions_published = Counter("rtcalm_predictions_published_total", "Predictions published",
                                             registry=registry)
        malformed = Counter("rtcalm_frames_malformed_total", "Ingest messages rejected by validation, by error code",
                            ["code"], registry=registry)
        self.malformed = {code: malformed.labels(code=code) for code in FRAME_REJECTION_CODES}
        self.gaps = Counter("rtcalm_gaps_total", "Sequence gaps (one or more missing frames)", registry=registry)
        self.gap_frames = Counter("rtcalm_gap_frames_total", "Missing frames filled in as missing data",
                                  registry=registry)
        self.duplicates = Counter("rtcalm_frames_duplicate_total", "Frames dropped as duplicates",
                                  registry=registry)
        self.reordered = Counter("rtcalm_frames_reordered_total",
                                 "Frames dropped because they arrived after a later frame (out of order)",
                                 registry=registry)
        self.batched = Counter("rtcalm_frames_batched_total",
                               "Frames folded into the model state in a catch-up batch without their own prediction",
                               registry=registry)
        restarts = Counter("rtcalm_session_restarts_total", "Session states started afresh, by reason",
                           ["reason"], registry=registry)
        self.session_restarts = {reason: restarts.labels(reason=reason) for reason in SESSION_RESTART_REASONS}
        errors = Counter("rtcalm_errors_published_total", "Error messages sent, by code: published to subscribers "
                         "(frames) or sent as control replies", ["code"], registry=registry)
        self.errors_published = {code: errors.labels(code=code) for code in ERROR_CODES}
        self.control_requests = Counter("rtcalm_control_requests_total", "Control requests, by command and result",
                                        ["cmd", "result"], registry=registry)
        dropped = Counter("rtcalm_heads_dropped_total", "Decoding heads dropped because they no longer fit their "
                          "session (new neuron count, or a hot-swapped model of another d_model), by reason",
                          ["reason"], registry=registry)
        self.heads_dropped = {reason: dropped.labels(reason=reason) for reason in HEAD_DROP_REASONS}
        self.sessions_expired = Counter("rtcalm_sessions_expired_total",
                                        "Sessions stopped after sessions.idle_timeout_s without a frame",
                                        registry=registry)
        self.model_loads = Counter("rtcalm_model_loads_total", "Model loads (hot swaps), by result", ["result"],
                                   registry=registry)

        self.trigger_latency = Histogram(
            "rtcalm_trigger_latency_seconds", "Time from a frame's acquisition timestamp to sending the trigger "
            "it fired, per rule (observed only when metrics.rig_clock_is_local)", ["session", "rule"],
            buckets=LATENCY_BUCKETS, registry=registry)
        self.triggers_fired = Counter("rtcalm_triggers_fired_total", "Trigger rules fired", ["session", "rule"],
                                      registry=registry)
        self.triggers_suppressed = Counter(
            "rtcalm_triggers_suppressed_total", "Armed trigger rules whose condition was met but that did not fire, "
            "by reason (refractory period, rate limit)", ["session", "rule", "reason"], registry=registry)
        self.serial_failed = Counter("rtcalm_serial_trigger_failures_total", "Trigger bytes the serial line could "
                                     "not take (buffer full or write error)", registry=registry)
        rules_dropped = Counter("rtcalm_rules_dropped_total", "Trigger rule sets dropped because they no longer fit "
                                "their session, by reason", ["reason"], registry=registry)
        self.rules_dropped = {reason: rules_dropped.labels(reason=reason) for reason in RULES_DROP_REASONS}
        self.rules_armed = Gauge("rtcalm_session_rules_armed", "Armed trigger rules of a session", ["session"],
                                 registry=registry)

        self.forecast_skill = Gauge(
            "rtcalm_forecast_skill", "Forecast skill against copy-last over the recent window ([quality] "
            "window_frames): 1 - MSE(model) / MSE(copy-last) in the daemon's z units; below 0 is worse than "
            "copy-last", ["session", "horizon"], registry=registry)
        self.interval_coverage = Gauge(
            "rtcalm_forecast_interval_coverage", "Fraction of the forecast intervals issued that held the truth, "
            "over the recent window (only with [quality] interval_levels)", ["session", "level", "horizon"],
            registry=registry)

        self.sessions = Gauge("rtcalm_sessions", "Sessions being served", registry=registry)
        self.neurons = Gauge("rtcalm_session_neurons", "Neurons per frame of a session", ["session"],
                             registry=registry)
        self.predictable_ratio = Gauge("rtcalm_session_predictable_ratio",
                                       "Fraction (0-1) of a session's neurons currently classed predictable",
                                       ["session"], registry=registry)
        self.heads = Gauge("rtcalm_session_heads", "Decoding heads loaded for a session", ["session"],
                           registry=registry)
        self.model_info = Gauge("rtcalm_model_info", "The serving model (value 1), labelled with version and backend",
                                ["version", "backend"], registry=registry)
        self.model_loading = Gauge("rtcalm_model_loading", "1 while a model is being loaded for a hot swap",
                                   registry=registry)
        self.backlog = Gauge("rtcalm_ingest_backlog_frames",
                             "Messages drained from the ingest socket in the latest batch (1 = keeping up)",
                             registry=registry)
        self._quality_series: dict[str, set] = {}  # session -> {(gauge, labels after the session)} set
        self._server = None

    # --- serving ---
    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; returns the bound port (useful with port 0)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- helpers for things that change rarely ---
    def set_model(self, version: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, backend=backend).set(1)

    def forget_session(self, session: str) -> None:
        for gauge in (self.neurons, self.predictable_ratio, self.heads, self.rules_armed):
            try:
                gauge.remove(session)
            except KeyError:
                pass
        for gauge, labels in self._quality_series.pop(session, ()):
            gauge.remove(session, *labels)

    def set_quality(self, session: str, quality) -> None:
        """The session's skill and coverage gauges from its SessionQuality (housekeeping, not per frame);
        NaN until a horizon has been scored."""
        series = self._quality_series.setdefault(session, set())  # what forget_session removes
        if quality.skill is not None:
            for horizon, value in zip(quality.skill.horizons, quality.skill.skill, strict=True):
                self.forecast_skill.labels(session, str(horizon)).set(value)
                series.add((self.forecast_skill, (str(horizon),)))
        if quality.intervals is not None and quality.skill is not None:
            coverage = quality.intervals.coverage
            for j, level in enumerate(quality.intervals.levels):
                for horizon in quality.skill.horizons:  # the same few horizons as the skill
                    labels = (f"{level:g}", str(horizon))
                    self.interval_coverage.labels(session, *labels).set(coverage[j, horizon - 1])
                    series.add((self.interval_coverage, labels))

    def forget_rules(self, rules: RuleMetrics) -> None:
        """Remove a replaced or dropped rule set's series (a rule name may not come back)."""
        for name in rules.names:
            for metric in (self.triggers_fired, self.trigger_latency):
                try:
                    metric.remove(rules.session, name)
                except KeyError:
                    pass
            for reason in SUPPRESSION_REASONS:
                try:
                    self.triggers_suppressed.remove(rules.session, name, reason)
                except KeyError:
                    pass


class StageTimes:
    """The last ``capacity`` answered frames' timings in nanoseconds, in a preallocated ring buffer, for
    percentiles in ``status`` (Prometheus histograms only give bucketed quantiles)."""

    COLUMNS = ("receive_to_publish", *STAGES)

    def __init__(self, capacity: int = 65536):
        self._rows = np.zeros((capacity, len(self.COLUMNS)), dtype=np.int64)
        self._count = 0

    def record(self, receive_to_publish: int, validate: int, stats: int, model: int, publish: int) -> None:
        row = self._rows[self._count % self._rows.shape[0]]
        row[0] = receive_to_publish
        row[1] = validate
        row[2] = stats
        row[3] = model
        row[4] = publish
        self._count += 1

    def summary(self, last: int | None = None) -> dict:
        """Per column: median, p99 and p99.9 in microseconds, over the most recent ``last`` answered
        frames (default: all in the buffer)."""
        capacity = self._rows.shape[0]
        n = min(self._count, capacity) if last is None else min(last, self._count, capacity)
        out = {"frames": n}
        if n == 0:
            return out
        rows = self._rows[np.arange(self._count - n, self._count) % capacity]
        quantiles = percentile(rows, [50, 99, 99.9], axis=0) / 1e3
        for i, name in enumerate(self.COLUMNS):
            out[name] = {"p50_us": float(quantiles[0, i]), "p99_us": float(quantiles[1, i]),
                         "p999_us": float(quantiles[2, i])}
        return out
