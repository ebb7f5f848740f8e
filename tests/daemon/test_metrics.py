"""The Prometheus endpoint, scraped over real HTTP: counters agree with what was sent, histograms are
filled, gauges describe sessions and model; the shipped Grafana dashboard only uses metrics that exist."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from rtcalm.sim import make_synthetic

REPO = Path(__file__).resolve().parents[2]


def scrape(harness) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(harness.endpoints["metrics"], timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def settled_scrape(harness, settled) -> dict:
    """Scrape until ``settled(samples)``: the daemon updates some counters just after sending the
    message the test waited for."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(harness)
        if settled(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_histograms_and_gauges(harness):
    assert harness.endpoints["metrics"].startswith("http://127.0.0.1:")
    before = scrape(harness)
    frames = make_synthetic(n_neurons=12, n_frames=40, seed=7).dff
    sender = harness.sender("m")
    harness.send_lockstep(sender, frames[:20])
    sender.send(frames[19], seq=19)  # duplicate
    harness.error("m")
    sender.send(frames[5], seq=5)  # out of order
    harness.error("m")
    harness.send_lockstep(sender, frames[23:24], seqs=[23])  # gap of 3
    harness.push_raw(b"garbage")
    harness.error()
    published = value(before, "rtcalm_predictions_published_total") + 21
    received = value(before, "rtcalm_frames_received_total") + 24
    # the daemon counts a batch after answering it: the garbage message's error arrives before its count
    after = settled_scrape(harness, lambda s: value(s, "rtcalm_predictions_published_total") == published
                           and value(s, "rtcalm_frames_received_total") >= received)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rtcalm_frames_received_total") == 24
    assert delta("rtcalm_predictions_published_total") == 21
    assert delta("rtcalm_frames_duplicate_total") == 1
    assert delta("rtcalm_frames_reordered_total") == 1
    assert delta("rtcalm_gaps_total") == 1 and delta("rtcalm_gap_frames_total") == 3
    assert delta("rtcalm_frames_malformed_total", code="malformed") == 1
    assert delta("rtcalm_errors_published_total", code="duplicate") == 1
    assert delta("rtcalm_receive_to_publish_seconds_count") == 21
    for stage in ("validate", "stats", "model", "publish"):
        assert delta("rtcalm_stage_seconds_count", stage=stage) == 21
        assert delta("rtcalm_stage_seconds_sum", stage=stage) > 0
    assert delta("rtcalm_acquisition_to_publish_seconds_count") == 21
    assert value(after, "rtcalm_session_neurons", session="m") == 12
    assert value(after, "rtcalm_sessions") == 1
    version = harness.control.status()["model"]["version"]
    assert value(after, "rtcalm_model_info", version=version, backend="torch-cpu") == 1
    assert value(after, "rtcalm_ingest_backlog_frames") >= 1
    assert ("rtcalm_session_predictable_ratio", (("session", "m"),)) in after
    assert 0 <= value(after, "rtcalm_session_predictable_ratio", session="m") <= 1
    assert not any(name.endswith("_fraction") for name, _labels in after)  # a 0-1 ratio's name ends in _ratio

    harness.control.stop_session("m")
    stopped = scrape(harness)
    assert ("rtcalm_session_neurons", (("session", "m"),)) not in stopped


def test_frame_rejections_are_labelled_only_with_frame_codes(harness):
    """rtcalm_frames_malformed_total{code} is pre-created for the codes a frame can be rejected with, not
    for control-only codes (unknown_command, model_loading, head_*) that no frame can ever have."""
    from rtcalm.protocol import ERROR_CODES, FRAME_REJECTION_CODES

    samples = scrape(harness)
    labels = {dict(key[1])["code"] for key in samples if key[0] == "rtcalm_frames_malformed_total"}
    assert labels == set(FRAME_REJECTION_CODES)
    assert {"unknown_command", "model_loading", "head_invalid", "session_exists"}.isdisjoint(labels)
    assert set(FRAME_REJECTION_CODES) <= set(ERROR_CODES)


def test_batched_frames_are_counted(harness):
    before = scrape(harness)
    frames = make_synthetic(n_neurons=40, n_frames=200, seed=8).dff
    sender = harness.sender("b")
    for frame in frames:
        sender.send(frame)
    while harness.prediction("b").seq != 199:
        pass
    status = harness.session_status("b")
    published = value(before, "rtcalm_predictions_published_total") + status["published"]
    after = settled_scrape(harness, lambda s: value(s, "rtcalm_predictions_published_total") == published)

    def delta(name):
        return value(after, name) - value(before, name)

    assert delta("rtcalm_frames_batched_total") == status["batched"] > 0
    assert delta("rtcalm_predictions_published_total") == status["published"] == 200 - status["batched"]


def _metric_names_in(expression: str) -> set[str]:
    names = set(re.findall(r"\brtcalm_[a-z_]+", expression))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_shipped_dashboard_and_scrape_config_match_the_metrics(harness):
    exported = {family.name for family in text_string_to_metric_families(
        urllib.request.urlopen(harness.endpoints["metrics"], timeout=10).read().decode())}
    exported |= {name + "_total" for name in exported}  # the parser strips a counter's _total
    dashboard = json.loads((REPO / "configs" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions
    used = set().union(*(_metric_names_in(e) for e in expressions))
    assert used and used <= exported, f"dashboard uses unknown metrics: {sorted(used - exported)}"
    scrape_config = (REPO / "configs" / "prometheus.yml").read_text()
    assert "127.0.0.1:9750" in scrape_config and "/metrics" in scrape_config


def test_stage_times_report_the_one_percentile_definition_over_the_last_frames():
    """``status``'s latency percentiles (StageTimes) are rtcalm.stats.percentile's linear interpolation,
    over the most recent frames of the ring buffer (hand-checked: receive_to_publish 1, 2, 3, 4, 10 us)."""
    from rtcalm.daemon.metrics import StageTimes

    times = StageTimes(capacity=5)
    times.record(999_000, 0, 0, 0, 0)  # overwritten by the five below: the ring keeps the last five
    for us in (10, 1, 4, 2, 3):
        times.record(us * 1000, 100, 200, 300, 400)
    summary = times.summary()
    assert summary["frames"] == 5
    row = summary["receive_to_publish"]
    assert row["p50_us"] == 3.0
    assert abs(row["p99_us"] - 9.76) < 1e-9  # rank 3.96: 4 + 0.96 * (10 - 4); nearest rank would say 10
    assert abs(row["p999_us"] - 9.976) < 1e-9
    assert summary["model"] == {"p50_us": 0.3, "p99_us": 0.3, "p999_us": 0.3}
    assert times.summary(last=2)["receive_to_publish"]["p50_us"] == 2.5  # the last two: 2 and 3
