"""``rtcalm bench latency --rules FILE``: the trigger path timed in the same run as the predictions.

Fast tests check the rules file before any daemon starts (a bad file is one line, exit 2), the
arithmetic of the trigger report and its targets on made-up arrivals, and configs/bench_rules.toml
itself; the slow ones run the real daemon: a tiny end-to-end run that must receive triggers, and a
rules file only the daemon can refuse (beyond the model's horizon)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtcalm.bench import latency
from rtcalm.bench.timing import percentiles_ms
from rtcalm.cli import main
from rtcalm.triggers.rules import read_rules_file

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_RULES = REPO_ROOT / "configs" / "bench_rules.toml"
HEADER = 'format = "rtcalm-rules"\nversion = 1\n'
TRIGGER_KEYS = {"rules_file", "rules", "count", "frames_fired", "frames_without_prediction", "by_rule",
                "rig_to_trigger", "rig_to_last_trigger", "rig_to_prediction", "trigger_minus_prediction",
                "fire_to_received", "rules_stage"}


def rule(name: str, extra: str = "", threshold: float = 1.0) -> str:
    return (f'[[rule]]\nname = "{name}"\nkind = "activity"\nthreshold = {threshold}\nrefractory_ms = 0\n'
            f"max_rate_hz = 0\n{extra}\n")


@pytest.fixture
def no_daemon(monkeypatch):
    """Fails the test if the bench gets as far as starting a daemon."""
    def refuse(*args, **kwargs):
        raise AssertionError("the bench started a daemon for a rules file it should have refused")
    monkeypatch.setattr(latency, "DaemonProcess", refuse)


# --- a bad rules file: one line, exit 2, no daemon ---------------------------------------------------------
SHIPPED = object()  # configs/bench_rules.toml: its largest index, 510, needs 511 neurons


@pytest.mark.parametrize("text, neurons, expected", [
    (None, 64, "no such rules file"),
    ("this is = = not toml", 64, "not valid TOML"),
    ('format = "something-else"\nversion = 1\n', 64, "not an rtcalm rules file"),
    (HEADER, 64, "has no rules"),
    (HEADER + rule("a") + rule("a"), 64, "used more than once"),
    (HEADER + rule("a", "neurons = [3, 64]"), 64, "neuron index 64 is out of range for a session of 64 neurons"),
    (HEADER + '[[rule]]\nname = "d"\nkind = "decoded"\nhead = "direction"\nthreshold = 0.5\n'
              "refractory_ms = 0\nmax_rate_hz = 0\n", 64, "loads no decoding head"),
    (HEADER + '[[rule]]\nname = "x"\nkind = "activity"\nthreshold = 1.0\n', 64, "refractory_ms is required"),
    (SHIPPED, 510, "neuron index 510 is out of range for a session of 510 neurons"),
])
def test_a_bad_rules_file_is_one_line_and_exit_2_before_any_daemon(tmp_path, capsys, no_daemon, text, neurons,
                                                                     expected):
    path = BENCH_RULES if text is SHIPPED else tmp_path / "rules.toml"
    if isinstance(text, str):
        path.write_text(text)
    code = main(["bench", "latency", "--neurons", str(neurons), "--frames", "5", "--no-references",
                 "--rules", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"rtcalm: error: --rules {str(path)!r}: ") and err.count("\n") == 1, err
    assert expected in err


def test_the_shipped_rules_load_at_511_neurons(no_daemon):
    assert len(latency.check_rules_file(BENCH_RULES, 511)) == 16


def test_rules_arguments_are_validated(capsys, no_daemon):
    with pytest.raises(SystemExit) as exit_info:  # --rules needs its value
        main(["bench", "latency", "--rules"])
    assert exit_info.value.code == 2
    assert main(["bench", "latency", "--rules", "  ", "--frames", "5"]) == 2
    assert "--rules needs a rules file's path" in capsys.readouterr().err
    # the other arguments are still checked first, with or without rules
    assert main(["bench", "latency", "--rules", str(BENCH_RULES), "--neurons", "0"]) == 2
    assert main(["bench", "latency", "--rules", str(BENCH_RULES), "--rate", "0"]) == 2


def test_check_rules_file_accepts_the_shipped_file_at_both_sizes():
    assert len(latency.check_rules_file(BENCH_RULES, 512)) == 16
    assert len(latency.check_rules_file(BENCH_RULES, 4096)) == 16


# --- the report's arithmetic ---------------------------------------------------------------------------------
def prediction_row(seq: int, arrival: float, rules_ns: int | None = 5000) -> tuple:
    stage_ns = {"validate": 1, "stats": 1, "model": 1}
    if rules_ns is not None:
        stage_ns["rules"] = rules_ns
    return (seq, arrival, int(arrival * 1e9), stage_ns, 0, 0)


def test_trigger_latency_pairs_each_fired_frame_with_its_prediction():
    send = np.arange(10, dtype=np.float64)  # frame s sent at s seconds
    own = [prediction_row(s, s + 0.002, rules_ns=1000 * s) for s in range(2, 10) if s != 7]  # 7 unanswered
    own[1] = prediction_row(3, 3.004, rules_ns=3000)  # frame 3's prediction took 4 ms, frame 5's 2 ms
    triggers = [(1, 1.0005, 0, "a", 0),  # warm-up: excluded
                (3, 3.0010, 3_001_000_000, "a", 3_000_900_000),
                (3, 3.0012, 3_001_200_000, "b", 3_000_900_000),  # two rules on frame 3
                (5, 5.0015, 5_001_500_000, "a", 5_001_300_000),
                (7, 7.0010, 7_001_000_000, "b", 7_000_800_000)]  # its prediction never came
    report = latency.trigger_latency(triggers, own, send, warmup_frames=2, rules_file="r.toml",
                                     rule_names=["a", "b", "c"])
    assert TRIGGER_KEYS <= set(report)
    assert (report["rules"], report["count"], report["frames_fired"]) == (3, 4, 3)
    assert report["frames_without_prediction"] == 1
    assert report["by_rule"] == {"a": 2, "b": 2, "c": 0}
    assert report["rig_to_trigger"]["p50_ms"] == pytest.approx(np.median([1.0, 1.2, 1.5, 1.0]))  # every trigger
    # per frame with a prediction (3 and 5), with its last trigger: 1.2 and 1.5 ms against 4 and 2 ms
    assert report["rig_to_last_trigger"]["p50_ms"] == pytest.approx(1.35)
    assert report["rig_to_prediction"]["p50_ms"] == pytest.approx(3.0)
    assert report["trigger_minus_prediction"]["p50_ms"] == pytest.approx(np.median([1.2 - 4, 1.5 - 2]))
    assert report["trigger_minus_prediction"]["p99_ms"] < 0
    assert report["fire_to_received"]["p50_ms"] == pytest.approx(0.2)
    assert report["rules_stage"]["frames"] == len(own)
    assert report["rules_stage"]["p50_ms"] == pytest.approx(np.median([1e-3 * s for s in (2, 3, 4, 5, 6, 8, 9)]))


def test_trigger_latency_without_any_trigger_reports_none():
    report = latency.trigger_latency([], [prediction_row(5, 5.001)], np.arange(6.0), warmup_frames=1,
                                     rules_file="r.toml", rule_names=["a"])
    assert report["count"] == 0 and report["rig_to_trigger"]["p50_ms"] is None
    targets = latency.check_targets(make_result(report, neurons=512))
    assert targets["trigger_path_adds_to_p50"]["met"] is False


def make_result(triggers: dict | None, *, neurons: int, p99_ms: float = 5.0, rate_hz: float = 30.0) -> dict:
    none = percentiles_ms([])
    result = {"neurons": neurons, "rate_hz": rate_hz, "p99_ms": p99_ms, "lost_frames": 0,
              "stages": {"all_but_model": none}}
    if triggers is not None:
        result["triggers"] = triggers
    return result


def trigger_summary(rules: int, trigger_p50: float, prediction_p50: float) -> dict:
    return {"rules": rules, "rig_to_trigger": {"p50_ms": trigger_p50 - 1.0},  # not the one the target uses
            "rig_to_last_trigger": {"p50_ms": trigger_p50}, "rig_to_prediction": {"p50_ms": prediction_p50}}


def test_trigger_targets():
    without = latency.check_targets(make_result(None, neurons=4096))
    assert not any("trigger" in name or "rules" in name for name in without)  # unchanged without --rules

    targets = latency.check_targets(make_result(trigger_summary(16, 3.05, 3.0), neurons=512))
    added = targets["trigger_path_adds_to_p50"]
    assert added["met"] and added["value_ms"] == pytest.approx(0.05) and added["limit_ms"] == 0.1
    assert "p99_under_frame_period_16_rules_4096" not in targets  # 512 neurons
    assert not latency.check_targets(make_result(trigger_summary(16, 3.2, 3.0), neurons=512))[
        "trigger_path_adds_to_p50"]["met"]

    at_4096 = latency.check_targets(make_result(trigger_summary(16, 9.0, 9.1), neurons=4096, p99_ms=30.0))
    assert at_4096["p99_under_frame_period_16_rules_4096"]["met"]
    assert at_4096["p99_under_frame_period_16_rules_4096"]["limit_ms"] == pytest.approx(1e3 / 30)
    too_slow = latency.check_targets(make_result(trigger_summary(16, 9.0, 9.1), neurons=4096, p99_ms=34.0))
    assert not too_slow["p99_under_frame_period_16_rules_4096"]["met"]
    assert "p99_under_frame_period_16_rules_4096" not in latency.check_targets(
        make_result(trigger_summary(15, 9.0, 9.1), neurons=4096))  # the target is for 16 rules


# --- configs/bench_rules.toml ---------------------------------------------------------------------------------
def test_the_shipped_bench_rules_mix_kinds_and_suppress_nothing():
    specs = read_rules_file(BENCH_RULES)
    assert len(specs) == 16
    assert {spec.kind for spec in specs} == {"activity", "forecast"}
    assert {spec.reduce for spec in specs} == {"mean", "max", "count_above"}
    assert {spec.units for spec in specs} == {"z", "dff"}
    assert {spec.direction for spec in specs} == {"above", "below"}
    assert {spec.frames for spec in specs if spec.frames} >= {(1, 5), (3, 10), (1, 30)}
    sets = {spec.neurons if isinstance(spec.neurons, str) else "indices" for spec in specs}
    assert sets == {"all", "predictable", "indices"}
    index_lists = [spec.neurons for spec in specs if isinstance(spec.neurons, tuple)]
    assert all(100 <= len(indices) <= 512 and max(indices) < 512 for indices in index_lists)
    assert all(spec.refractory_ms == 0 and spec.max_rate_hz == 0 for spec in specs)


@pytest.mark.slow
def test_the_shipped_bench_rules_fire_often_on_the_bench_frames():
    """Replayed offline through the daemon's path on the bench's own synthetic frames (512 neurons, the
    default model): most rules fire, and many frames carry a trigger."""
    from rtcalm.engine import load_engine
    from rtcalm.eval.triggers import replay
    from rtcalm.sim import make_synthetic

    dff = make_synthetic(n_neurons=512, n_frames=400, seed=0).dff
    fired, _values = replay(load_engine("default", backend="auto", threads=1), dff, read_rules_file(BENCH_RULES))
    counts = [fires[fires >= 60].size for fires in fired]  # after the bench's warm-up
    assert sum(count > 0 for count in counts) >= 12, counts
    assert sum(count >= 5 for count in counts) >= 6, counts
    assert np.unique(np.concatenate(fired)).size >= 60


# --- the real daemon --------------------------------------------------------------------------------------
def run_bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtcalm", "bench", "latency", "--no-references", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


@pytest.mark.slow
def test_bench_latency_with_rules_receives_triggers_and_reports_them():
    done = run_bench("--neurons", "512", "--frames", "90", "--rate", "60", "--rules", str(BENCH_RULES),
                     "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["result"]
    triggers = report["triggers"]
    assert TRIGGER_KEYS <= set(triggers)
    assert triggers["rules"] == 16 and triggers["rules_file"] == str(BENCH_RULES)
    assert triggers["count"] > 0 and 0 < triggers["frames_fired"] <= report["frames"]
    assert sum(triggers["by_rule"].values()) == triggers["count"]
    assert set(triggers["by_rule"]) == {spec.name for spec in read_rules_file(BENCH_RULES)}
    for name in ("rig_to_trigger", "rig_to_last_trigger", "rig_to_prediction", "fire_to_received"):
        assert 0 < triggers[name]["p50_ms"] <= triggers[name]["p99_ms"], name
    # the daemon sends a frame's triggers before its prediction, on the same socket: they arrive first
    assert triggers["trigger_minus_prediction"]["p999_ms"] < 0
    assert triggers["rules_stage"]["frames"] > 0 and triggers["rules_stage"]["p50_ms"] > 0
    assert "trigger_path_adds_to_p50" in report["targets"]
    assert report["lost_frames"] == 0
    text = latency.format_report(report)
    assert "rig send -> frame's last trigger" in text and "trigger_path_adds_to_p50" in text


@pytest.mark.slow
def test_bench_latency_stops_with_one_line_when_the_daemon_refuses_the_rules(tmp_path):
    path = tmp_path / "far.toml"  # passes every check made here; the model's horizon (30) is the daemon's
    path.write_text(HEADER + rule("far", 'kind = "forecast"\nframes = [1, 1000]').replace(
        'kind = "activity"\n', "", 1))
    done = run_bench("--neurons", "32", "--frames", "30", "--rate", "100", "--rules", str(path), timeout=180)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("rtcalm: error:")]
    assert len(lines) == 1 and "the daemon refused it" in lines[0] and "horizon" in lines[0], done.stderr
    assert "predictions" not in done.stderr and not done.stdout  # nothing streamed, nothing reported


@pytest.mark.parametrize("text, expected", [(None, "config file not found"),
                                            ("[quality]\ninterval_levels = [0.95, 0.8]\n", "interval_levels must be")])
def test_a_bad_daemon_config_is_one_line_and_exit_2_before_any_daemon(tmp_path, capsys, no_daemon, text, expected):
    path = tmp_path / "daemon.toml"
    if text is not None:
        path.write_text(text)
    assert main(["bench", "latency", "--frames", "5", "--no-references", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_the_shipped_intervals_config_turns_intervals_on():
    from rtcalm.daemon.config import load_config

    assert load_config(Path(__file__).resolve().parents[2] / "configs" / "bench_intervals.toml").quality.interval_levels \
        == (0.8, 0.95)
