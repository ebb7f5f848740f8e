"""Trigger rules in a real daemon over real sockets: load_rules / arm / disarm / rules, trigger messages
before their frame's prediction, every rejection leaving the loaded rules as they were, no trigger on a
rejected frame, what resets, neuron-count changes and hot swaps do to rules, the Prometheus counters,
and the serial line through a real pseudo-terminal."""

from __future__ import annotations

import os
import select
import time

import numpy as np
import pytest
from daemon_helpers import Harness, make_config
from test_metrics import settled_scrape

from rtcalm import protocol
from rtcalm.client import DaemonError, Prediction, Trigger, TriggerSubscriber

N = 8
HEADER = 'format = "rtcalm-rules"\nversion = 1\n'
# ΔF/F units, so that the rules read frames from the first one on (z needs the statistics' warm-up)
SPIKE = """
[[rule]]
name = "spike"
kind = "activity"
neurons = [2]
reduce = "max"
units = "dff"
threshold = 5.0
refractory_ms = 0
max_rate_hz = 0
serial_byte = 42
"""
POPULATION = """
[[rule]]
name = "population"
kind = "activity"
neurons = "all"
reduce = "count_above"
level = 1.0
units = "dff"
threshold = 3.5
refractory_ms = 100
max_rate_hz = 0
"""
SOON = """
[[rule]]
name = "soon"
kind = "forecast"
frames = [1, 3]
threshold = -1e9
refractory_ms = 0
max_rate_hz = 0
"""


def write_rules(directory, *rules: str, armed: bool = True, name: str = "rules.toml"):
    path = directory / name
    path.write_text(HEADER + f"armed = {'true' if armed else 'false'}\n" + "".join(rules))
    return str(path)


def quiet(value: float = 0.0) -> np.ndarray:
    return np.full(N, value, np.float32)


def spike() -> np.ndarray:
    frame = quiet()
    frame[2] = 9.0
    return frame


def answer(harness: Harness, sender, frame, **send) -> tuple[list[Trigger], Prediction]:
    """Send one frame; the triggers published for it, then its prediction (triggers come first)."""
    sender.send(frame, **send)
    triggers = []
    while True:
        message = harness.receive(sender.session)
        if isinstance(message, Trigger):
            triggers.append(message)
        elif isinstance(message, Prediction):
            return triggers, message


@pytest.fixture
def rig(harness):
    sender = harness.sender("rig1")
    harness.send_lockstep(sender, [quiet()])
    return harness, sender


def test_a_rule_fires_before_its_frames_prediction_with_every_field(rig, tmp_path):
    harness, sender = rig
    reply = harness.control.load_rules("rig1", write_rules(tmp_path, SPIKE, POPULATION))
    assert [r["name"] for r in reply["rules"]] == ["spike", "population"] and reply["replaced"] == 0
    assert all(r["armed"] for r in reply["rules"])
    triggers, prediction = answer(harness, sender, quiet())
    assert triggers == []
    t_acq = time.time_ns()
    triggers, prediction = answer(harness, sender, spike(), t_acq_ns=t_acq)
    assert [t.rule for t in triggers] == ["spike"]
    fired = triggers[0]
    assert (fired.session, fired.seq, fired.kind, fired.value, fired.threshold, fired.direction) == \
        ("rig1", prediction.seq, "activity", 9.0, 5.0, "above")
    assert fired.t_acq_ns == t_acq <= fired.t_fire_ns <= prediction.t_pub_ns
    assert (fired.stream_id, fired.stream_frame) == (prediction.stream_id, prediction.stream_frame)
    assert "rules" in prediction.stage_ns
    # once per crossing: the same spike held does not fire again; after a quiet frame it does
    assert answer(harness, sender, spike())[0] == []
    answer(harness, sender, quiet())
    assert [t.rule for t in answer(harness, sender, spike())[0]] == ["spike"]
    listed = harness.control.rules("rig1")["rules"]
    assert listed[0]["frames_since_fire"] == 0 and listed[0]["value"] == 9.0


def test_a_session_without_rules_publishes_the_same_prediction_fields(rig):
    harness, sender = rig
    _triggers, prediction = answer(harness, sender, quiet())
    assert set(prediction.stage_ns) == {"validate", "stats", "model"}


def test_rules_start_disarmed_and_arm_disarm_by_name(rig, tmp_path):
    harness, sender = rig
    harness.control.load_rules("rig1", write_rules(tmp_path, SPIKE, POPULATION, armed=False))
    assert answer(harness, sender, spike())[0] == []
    answer(harness, sender, quiet())
    reply = harness.control.arm("rig1", ["spike"])
    assert reply["changed"] == ["spike"] and [r["armed"] for r in reply["rules"]] == [True, False]
    assert [t.rule for t in answer(harness, sender, spike())[0]] == ["spike"]
    answer(harness, sender, quiet())
    harness.control.disarm("rig1")
    assert answer(harness, sender, spike())[0] == []


def test_bad_rules_and_commands_change_nothing(rig, tmp_path):
    harness, sender = rig
    harness.control.load_rules("rig1", write_rules(tmp_path, SPIKE))
    before = harness.control.rules("rig1")["rules"]
    bad_files = {
        "missing": str(tmp_path / "nope.toml"),
        "syntax": write_rules(tmp_path, SPIKE + "\nthreshold = = 3", name="a.toml"),
        "half good": write_rules(tmp_path, POPULATION, SPIKE.replace('kind = "activity"', 'kind = "bogus"'),
                                 name="b.toml"),
        "out of range": write_rules(tmp_path, SPIKE.replace("neurons = [2]", f"neurons = [{N}]"), name="c.toml"),
        "beyond horizon": write_rules(tmp_path, SOON.replace("[1, 3]", "[1, 99]"), name="d.toml"),
        "no such head": write_rules(tmp_path, '\n[[rule]]\nname = "d"\nkind = "decoded"\nhead = "direction"\n'
                                    'threshold = 0.5\nrefractory_ms = 0\nmax_rate_hz = 0\n', name="e.toml"),
    }
    for what, path in bad_files.items():
        with pytest.raises(DaemonError) as caught:
            harness.control.load_rules("rig1", path)
        assert caught.value.code == "rules_invalid", what
        assert "\n" not in caught.value.message
    for cmd, args, code in [("load_rules", {"session": "rig1"}, "bad_field"),
                            ("load_rules", {"session": "nobody", "path": bad_files["missing"]}, "unknown_session"),
                            ("arm", {"session": "rig1", "rules": ["spike", "ghost"]}, "unknown_rule"),
                            ("arm", {"session": "rig1", "rules": "spike"}, "bad_field"),
                            ("disarm", {"session": "rig1", "rules": []}, "bad_field"),
                            ("disarm", {"session": "rig1", "rules": [3]}, "bad_field"),
                            ("rules", {"session": 5}, "bad_field")]:
        with pytest.raises(DaemonError) as caught:
            harness.control.request(cmd, **args)
        assert caught.value.code == code, (cmd, args)
    assert harness.control.rules("rig1")["rules"] == before
    assert [t.rule for t in answer(harness, sender, spike())[0]] == ["spike"]  # still serving, still armed


def test_never_fires_on_a_rejected_frame(rig, tmp_path):
    harness, sender = rig
    harness.control.load_rules("rig1", write_rules(tmp_path, SPIKE))
    bad = spike()
    bad[2] = 2e4  # above limits.max_abs_dff: refused
    with_inf = spike()
    with_inf[0] = np.inf
    for frame in (bad, with_inf):
        harness.push_raw(protocol.build_frame("rig1", sender.next_seq, time.time_ns(), frame))
        assert harness.error("rig1").code in ("value_out_of_range", "non_finite")
    triggers, _prediction = answer(harness, sender, quiet())
    assert triggers == [] and not [m for m in harness.drain(harness.subscriber) if isinstance(m, Trigger)]
    assert harness.control.rules("rig1")["rules"][0]["frames_since_fire"] is None
    # a duplicate of a frame that would fire is dropped before the rules too
    answer(harness, sender, quiet())
    sender.send(spike(), seq=sender.next_seq - 1)
    assert harness.error("rig1").code == "duplicate"
    assert [m for m in harness.drain(harness.subscriber) if isinstance(m, Trigger)] == []


def test_forecast_rules_are_held_after_a_reset_and_rules_dropped_on_a_new_neuron_count(rig, tmp_path):
    harness, sender = rig
    receptive_field = harness.daemon.pipeline.engine.receptive_field
    harness.control.load_rules("rig1", write_rules(tmp_path, SOON, SPIKE))
    fired_at = []
    for i in range(receptive_field + 2):
        triggers, _ = answer(harness, sender, quiet())
        fired_at += [i for t in triggers if t.rule == "soon"]
    assert fired_at == [receptive_field - 1]  # held while the load's receptive field filled, then once
    harness.control.reset_session("rig1")
    sender.next_seq = 0
    listed = {r["name"]: r for r in harness.control.rules("rig1")["rules"]}
    assert listed["soon"]["held"] and not listed["spike"]["held"] and listed["soon"]["armed"]
    assert [t.rule for t in answer(harness, sender, spike())[0]] == ["spike"]  # activity rules are not held
    sender.send(np.zeros(N + 1, np.float32))  # a new neuron count restarts the stream: the rules no longer fit
    harness.prediction("rig1")
    assert harness.control.rules("rig1")["rules"] == []
    assert harness.session_status("rig1")["rules"] == 0


def test_prometheus_counts_fires_and_suppressions(make_harness, tmp_path):
    harness = make_harness()
    sender = harness.sender("rig1")
    harness.send_lockstep(sender, [quiet()])
    harness.control.load_rules("rig1", write_rules(tmp_path, POPULATION))
    for _ in range(3):  # a crossing every other frame: the 100 ms refractory (3 frames) suppresses one in two
        answer(harness, sender, quiet(2.0))
        answer(harness, sender, quiet())
    # the daemon updates its metrics just after sending: wait for the last frame's
    samples = settled_scrape(harness, lambda s: s.get(("rtcalm_stage_seconds_count", (("stage", "rules"),)), 0) >= 6)
    labels = (("rule", "population"), ("session", "rig1"))
    assert samples[("rtcalm_triggers_fired_total", labels)] == 2
    assert samples[("rtcalm_triggers_suppressed_total", (("reason", "refractory"), *labels))] == 1
    assert samples[("rtcalm_trigger_latency_seconds_count", labels)] == 2
    assert samples[("rtcalm_session_rules_armed", (("session", "rig1"),))] == 1
    assert samples[("rtcalm_stage_seconds_count", (("stage", "rules"),))] >= 6


def test_the_serial_line_through_a_pseudo_terminal(checkpoint, tmp_path):
    master, slave = os.openpty()
    harness = Harness(make_config(triggers={"serial_port": os.ttyname(slave)}), str(checkpoint))
    try:
        assert harness.endpoints["serial_trigger_line"] == os.ttyname(slave)
        sender = harness.sender("rig1")
        harness.send_lockstep(sender, [quiet()])
        harness.control.load_rules("rig1", write_rules(tmp_path, SPIKE, POPULATION))  # only spike has a byte
        with TriggerSubscriber(harness.endpoints["publish"], sessions="rig1", context=harness.context) as triggers:
            time.sleep(0.3)  # the subscription reaches the daemon
            answer(harness, sender, spike())
            frame = quiet(2.0)
            frame[2] = 9.0
            answer(harness, sender, quiet())
            answer(harness, sender, frame)  # both rules fire: one byte (spike's) on the line
            got = [triggers.receive(timeout_ms=5000) for _ in range(3)]
        assert [t.rule for t in got] == ["spike", "spike", "population"] or \
            sorted(t.rule for t in got) == ["population", "spike", "spike"]
        data, deadline = b"", time.monotonic() + 10
        while len(data) < 2 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                data += os.read(master, 16)
        assert data == bytes([42, 42])
        assert not select.select([master], [], [], 0.3)[0]  # nothing else is ever written
    finally:
        harness.close()
        os.close(master)
        os.close(slave)


def test_an_unopenable_serial_port_stops_the_daemon_at_start(checkpoint):
    from rtcalm.daemon import Daemon
    from rtcalm.engine import load_engine
    from rtcalm.errors import RtcalmError

    daemon = Daemon(make_config(triggers={"serial_port": "/dev/does-not-exist-rtcalm"}),
                    engine=load_engine(str(checkpoint), backend="torch"))
    with pytest.raises(RtcalmError, match="does-not-exist-rtcalm"):
        daemon.start()


def test_an_empty_rules_file_clears_and_a_hot_swap_holds_forecast_rules(rig, tmp_path, second_checkpoint):
    harness, sender = rig
    harness.control.load_rules("rig1", write_rules(tmp_path, SOON, SPIKE))
    receptive_field = harness.daemon.pipeline.engine.receptive_field
    for _ in range(receptive_field + 1):
        answer(harness, sender, quiet())
    assert not {r["name"]: r for r in harness.control.rules("rig1")["rules"]}["soon"]["held"]
    harness.control.load_model(str(second_checkpoint))
    answer(harness, sender, quiet())  # the swap is installed between frames
    listed = {r["name"]: r for r in harness.control.rules("rig1")["rules"]}
    assert listed["soon"]["held"] and not listed["spike"]["held"] and listed["soon"]["armed"]
    assert [t.rule for t in answer(harness, sender, spike())[0]] == ["spike"]
    reply = harness.control.load_rules("rig1", write_rules(tmp_path, name="empty.toml"))
    assert reply == {"cmd": "load_rules", "ok": True, "session": "rig1", "rules": [], "replaced": 2}
    assert harness.control.rules("rig1")["rules"] == [] and harness.session_status("rig1")["rules"] == 0
    answer(harness, sender, quiet())
    assert answer(harness, sender, spike())[0] == []
