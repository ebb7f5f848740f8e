"""trigger-eval: event files, onsets, the precision / recall / lead arithmetic against hand counts, the
threshold sweep against direct replays, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtcalm.daemon.config import DaemonConfig
from rtcalm.data.recording import Recording
from rtcalm.engine import load_engine
from rtcalm.eval.triggers import (
    Tally,
    TriggerEvalError,
    _channel_rule,
    burn_in_frames,
    compare,
    evaluate_rules,
    event_channels,
    event_onsets,
    event_signal,
    event_thresholds,
    parse_event,
    read_event_file,
    replay,
)
from rtcalm.sim import make_synthetic
from rtcalm.triggers.rules import RulesError

REPO = Path(__file__).resolve().parents[2]


def event_document(**changes) -> dict:
    table = {"name": "ev", "threshold": 3.0, **changes}
    return {"format": "rtcalm-event", "version": 1, "event": {k: v for k, v in table.items() if v is not None}}


def test_event_files_in_configs_parse():
    for path in sorted((REPO / "configs" / "events").glob("*.toml")):
        assert read_event_file(path).name == path.stem


@pytest.mark.parametrize("document, message", [
    ({"format": "x", "version": 1, "event": {}}, "not an rtcalm event file"),
    ({"format": "rtcalm-event", "version": 1}, "no .event. table"),
    (event_document(extra=1), "unknown event key"),
    (event_document(name="a b"), "event name"),
    (event_document(threshold=None), "threshold is required"),
    (event_document(neurons="predictable"), "events use no running mask"),
    (event_document(neurons=[]), "non-empty list"),
    (event_document(reduce="max"), "'each' takes no reduction"),
    (event_document(neurons="all", reduce="count_above"), "level goes with"),
    (event_document(top_active=0.0), "top_active must be"),
    (event_document(top_active=1.5), "top_active must be"),
    (event_document(units="percent"), "units must be"),
    (event_document(threshold_units="sigma"), "threshold_units must be"),
    (event_document(window_ms=-1), "window_ms must be"),
])
def test_bad_event_files(document, message):
    with pytest.raises(RulesError, match=message):
        parse_event(document)


def test_event_file_errors_name_the_file(tmp_path):
    with pytest.raises(TriggerEvalError, match="no such event file"):
        read_event_file(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('format = "rtcalm-event"\nversion = 1\n[event]\nname = "e"\n')
    with pytest.raises(TriggerEvalError, match="bad.toml.*threshold is required"):
        read_event_file(bad)


def test_channels_signals_and_onsets():
    dff = np.zeros((12, 4), np.float32)
    dff[:, 3] = np.arange(12)  # the most variable neuron
    dff[[2, 3, 7], 1] = 5.0
    each = parse_event(event_document(neurons="each", units="dff", threshold=1.0))
    channels = event_channels(each, dff)
    assert channels == [(0,), (1,), (2,), (3,)]
    signal = event_signal(each, dff, channels)
    onsets = event_onsets(signal, np.full(4, 1.0), separation_frames=3)
    assert onsets[1].tolist() == [2, 7] and onsets[0].size == 0 and onsets[3].tolist() == [2]
    assert event_onsets(signal, np.full(4, 1.0), separation_frames=6)[1].tolist() == [2]  # 7 is too soon
    top = replace(each, top_active=0.25)
    assert event_channels(top, dff) == [(3,)]
    pooled = parse_event(event_document(neurons=[1, 3], reduce="count_above", level=4.0, units="dff", threshold=1.5))
    assert event_signal(pooled, dff, event_channels(pooled, dff))[:, 0].tolist() == \
        [0, 0, 1, 1, 0, 1, 1, 2, 1, 1, 1, 1]
    relative = parse_event(event_document(neurons=[1], units="dff", threshold=2.0, threshold_units="sd"))
    column = dff[:, 1].astype(float)
    assert event_thresholds(relative, column[:, None])[0] == pytest.approx(column.mean() + 2 * column.std())


def test_tally_matches_hand_counts():
    tally = Tally()
    fires = np.array([3, 10, 20, 40])
    onsets = np.array([5, 10, 31, 60])
    tally.add(fires, onsets, window=5, burn_in=0)
    # fire 3 -> onset 5 (true), 10 -> 10 (true, lead 0), 20 -> none within 5, 40 -> none
    # onset 5 <- fire 3 (lead 2), 10 <- fire 10 (lead 0), 31 <- none (fire 20 is 11 before), 60 <- none
    assert (tally.fires, tally.true_fires, tally.events, tally.detected) == (4, 2, 4, 2)
    summary = tally.summary(rate_hz=30.0)
    assert summary["precision"] == 0.5 and summary["recall"] == 0.5
    assert summary["lead_ms"] == pytest.approx(1000 / 30.0)  # median of 2 and 0 frames
    burned = Tally()
    burned.add(fires, onsets, window=5, burn_in=8)
    assert (burned.fires, burned.events, burned.true_fires, burned.detected) == (3, 3, 1, 1)
    # the earliest fire in the window gives the lead
    early = Tally()
    early.add(np.array([1, 3, 4]), np.array([5]), window=5, burn_in=0)
    assert early.leads_frames == [4] and early.true_fires == 3


@pytest.fixture(scope="module")
def engine():
    return load_engine("default", backend="onnx")


@pytest.fixture(scope="module")
def recordings():
    return [Recording(dff=make_synthetic(n_neurons=10, n_frames=400, seed=seed).dff, rate_hz=30.0,
                      neuron_ids=np.arange(10)) for seed in (5, 6)]


def test_the_sweep_equals_replaying_each_threshold(engine, recordings):
    """compare() gates recorded values at every threshold; a direct replay of the same rule at one of
    those thresholds through the daemon's path must score exactly the same."""
    event = parse_event(event_document(neurons="each", threshold=2.5, separation_ms=300, window_ms=300))
    result = compare(engine, recordings, event, forecast_frames=(1, 3))
    assert set(result["compare"]) == {"reactive", "forecast"} and result["files"] == 2
    for name, kind in (("reactive", "activity"), ("forecast", "forecast")):
        point = result["curves"][name][len(result["curves"][name]) // 2]
        tally = Tally()
        for recording in recordings:
            channels = event_channels(event, recording.dff)
            signal = event_signal(event, recording.dff, channels)
            onsets = event_onsets(signal, np.full(len(channels), 2.5), 9)
            rules = [replace(_channel_rule(event, kind, neurons, c, (1, 3)), threshold=point["threshold"])
                     for c, neurons in enumerate(channels)]
            fired, _values = replay(engine, recording.dff, rules)
            for c in range(len(channels)):
                tally.add(fired[c], onsets[c], 9, burn_in_frames(engine, DaemonConfig()))
        assert tally.summary(30.0) == {k: v for k, v in point.items() if k != "threshold"}


def test_evaluate_rules_reports_every_rule(engine, recordings):
    from rtcalm.triggers.rules import parse_rules

    rules = parse_rules('format = "rtcalm-rules"\nversion = 1\narmed = true\n[[rule]]\nname = "a"\nkind = "activity"\n'
                        'threshold = 0.5\nrefractory_ms = 100\nmax_rate_hz = 0\n')
    event = parse_event(event_document(neurons="all", threshold=1.0, threshold_units="sd"))
    result = evaluate_rules(engine, recordings, rules, event)
    assert set(result["rules"]) == {"a"} and result["rules"]["a"]["fires"] > 0
    assert len(result["per_file"]) == 2
    with pytest.raises(TriggerEvalError, match="recorded at 16 Hz"):
        evaluate_rules(engine, [replace(recordings[0], rate_hz=16.0)], rules, event)


@pytest.mark.parametrize("args, message", [
    (["--compare"], "required: --event"),
    (["--event", "E"], "one of the arguments --rules --compare is required"),
    (["--event", "E", "--compare", "--rules", "R"], "not allowed with"),
    (["--event", "E", "--compare", "--forecast-frames", "3"], "FIRST:LAST"),
    (["--event", "E", "--compare", "--forecast-frames", "4:2"], "1 <= FIRST <= LAST"),
])
def test_cli_arguments(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "rtcalm", "trigger-eval", "f.npz", *args], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_cli_bad_event_file_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rtcalm", "trigger-eval", "f.npz", "--event", "none.toml",
                           "--compare"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no such event file" in done.stderr


def test_cli_on_a_real_recording(real_data_dir, tmp_path):
    recording = real_data_dir / "yueqiw_neurod-io/data/501788003/natural_movie_two_64122-65026/rec_data.npz"
    done = subprocess.run([sys.executable, "-m", "rtcalm", "trigger-eval", str(recording), "--event",
                           str(REPO / "configs/events/transients.toml"), "--compare", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files"] == 1 and set(result["compare"]) == {"reactive", "forecast"}
    assert set(result["compare"]["reactive"]) == {"0.5", "0.8"}
    reached = result["compare"]["reactive"]["0.5"]
    assert reached is None or (reached["precision"] >= 0.5 and 0 <= reached["recall"] <= 1)

