"""Rules files: every field checked at load, one-line errors naming the rule and the field."""

from __future__ import annotations

import pytest

from rtcalm.triggers.rules import MAX_RULES, RulesError, check_for_session, parse_rules, read_rules_file

HEADER = 'format = "rtcalm-rules"\nversion = 1\n'
ACTIVITY = {"name": "burst", "kind": "activity", "threshold": 1.0, "refractory_ms": 100, "max_rate_hz": 2}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def rules_text(*rules: dict, header: str = HEADER) -> str:
    return header + "".join("\n[[rule]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in rule.items())
                            for rule in rules)


def one(**changes) -> str:
    rule = {**ACTIVITY, **changes}
    return rules_text({key: value for key, value in rule.items() if value is not None})


def test_a_full_file_parses_with_defaults_and_disarmed_rules():
    specs = parse_rules(rules_text(
        ACTIVITY,
        {"name": "soon", "kind": "forecast", "neurons": [3, 1], "reduce": "count_above", "level": 2.0, "units": "dff",
         "frames": [3, 10], "threshold": 2, "direction": "below", "min_frames": 3, "refractory_ms": 0,
         "max_rate_hz": 0, "serial_byte": 66, "armed": True},
        {"name": "dir", "kind": "decoded", "head": "direction", "class": 90, "threshold": 0.8, "refractory_ms": 1000,
         "max_rate_hz": 1}))
    burst, soon, direction = specs
    assert (burst.neurons, burst.reduce, burst.units, burst.direction, burst.min_frames, burst.armed) == \
        ("all", "mean", "z", "above", 1, False)
    assert soon.neurons == (3, 1) and soon.frames == (3, 10) and soon.level == 2.0 and soon.armed
    assert soon.serial_byte == 66 and soon.direction == "below" and soon.threshold == 2.0
    assert direction.head == "direction" and direction.class_value == 90.0
    assert parse_rules(rules_text(ACTIVITY, header=HEADER + "armed = true\n"))[0].armed
    assert parse_rules(HEADER) == []


@pytest.mark.parametrize("text, message", [
    ("not toml = = 1", "not valid TOML"),
    ('format = "other"\nversion = 1', "not an rtcalm rules file"),
    ('format = "rtcalm-rules"\nversion = 2', "not an rtcalm rules file"),
    (HEADER + "extra = 1", "unknown top-level key"),
    (HEADER + 'armed = "yes"', "armed must be true or false"),
    (HEADER + "rule = 3", r"rules are \[\[rule\]\] tables"),
    (rules_text(*[{**ACTIVITY, "name": f"r{i}"} for i in range(MAX_RULES + 1)]), f"at most {MAX_RULES}"),
    (rules_text(ACTIVITY, ACTIVITY), "used more than once"),
    (rules_text({**ACTIVITY, "serial_byte": 5}, {**ACTIVITY, "name": "b", "serial_byte": 5}), "share a serial_byte"),
])
def test_bad_files(text, message):
    with pytest.raises(RulesError, match=message):
        parse_rules(text)


@pytest.mark.parametrize("changes, message", [
    ({"name": "bad name"}, "rule 1: name"),
    ({"name": "x" * 65}, "rule 1: name"),
    ({"kind": "psychic"}, "kind must be one of"),
    ({"threshold": None}, "threshold is required"),
    ({"threshold": "high"}, "threshold must be a finite number"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"threshold": float("inf")}, "threshold must be a finite number"),
    ({"direction": "up"}, "direction must be one of"),
    ({"min_frames": 0}, "min_frames must be an integer"),
    ({"min_frames": 1.5}, "min_frames must be an integer"),
    ({"refractory_ms": None}, "refractory_ms is required"),
    ({"refractory_ms": -1}, "refractory_ms must be a finite number in"),
    ({"max_rate_hz": None}, "max_rate_hz is required"),
    ({"max_rate_hz": -0.5}, "max_rate_hz must be a finite number in"),
    ({"serial_byte": 0}, "serial_byte must be an integer from 1 to 255"),
    ({"serial_byte": 256}, "serial_byte must be an integer from 1 to 255"),
    ({"armed": 1}, "armed must be true or false"),
    ({"neurons": "some"}, "neurons must be 'all', 'predictable' or a list"),
    ({"neurons": []}, "non-empty list of distinct"),
    ({"neurons": [1, 1]}, "non-empty list of distinct"),
    ({"neurons": [-1]}, "non-empty list of distinct"),
    ({"neurons": [1.0]}, "non-empty list of distinct"),
    ({"reduce": "median"}, "reduce must be one of"),
    ({"reduce": "count_above"}, "level goes with reduce"),
    ({"level": 1.0}, "level goes with reduce"),
    ({"units": "percent"}, "units must be one of"),
    ({"frames": [1, 3]}, "do not apply to a activity rule"),
    ({"head": "direction"}, "do not apply to a activity rule"),
    ({"typo": 1}, "do not apply"),
    ({"kind": "forecast"}, "frames must be"),
    ({"kind": "forecast", "frames": [0, 3]}, "frames must be"),
    ({"kind": "forecast", "frames": [4, 3]}, "frames must be"),
    ({"kind": "forecast", "frames": [1]}, "frames must be"),
    ({"kind": "decoded", "neurons": None, "reduce": None}, "head must be the name"),
    ({"kind": "decoded", "head": "d", "class": "ninety"}, "class must be a finite number"),
    ({"kind": "decoded", "head": "d", "neurons": "all"}, "do not apply to a decoded rule"),
])
def test_every_bad_field_is_named(changes, message):
    with pytest.raises(RulesError, match=message) as caught:
        parse_rules(one(**changes))
    assert "\n" not in str(caught.value)


def test_rules_must_fit_the_session():
    specs = parse_rules(rules_text({**ACTIVITY, "neurons": [0, 9]}))
    check_for_session(specs, n_neurons=10, horizon=5, heads={})
    with pytest.raises(RulesError, match="neuron index 9 is out of range for a session of 9"):
        check_for_session(specs, n_neurons=9, horizon=5, heads={})
    forecast = parse_rules(rules_text({**ACTIVITY, "kind": "forecast", "frames": [2, 6]}))
    with pytest.raises(RulesError, match="beyond the model's horizon of 5"):
        check_for_session(forecast, n_neurons=4, horizon=5, heads={})
    decoded = {"name": "d", "kind": "decoded", "head": "direction", "threshold": 0.5, "refractory_ms": 0,
               "max_rate_hz": 0}
    for rule, heads, message in [
        (decoded, {}, "no decoding head 'direction' .loaded: none."),
        (decoded, {"direction": [0.0, 90.0]}, "classifies; give class"),
        ({**decoded, "class": 45}, {"direction": [0.0, 90.0]}, "class 45 is not one of"),
        ({**decoded, "class": 0}, {"direction": []}, "outputs a value, not classes"),
    ]:
        with pytest.raises(RulesError, match=message):
            check_for_session(parse_rules(rules_text(rule)), n_neurons=4, horizon=5, heads=heads)
    check_for_session(parse_rules(rules_text({**decoded, "class": 90})), n_neurons=4, horizon=5,
                      heads={"direction": [0.0, 90.0]})


def test_files_on_disk(tmp_path):
    good = tmp_path / "rules.toml"
    good.write_text(one())
    assert read_rules_file(good)[0].name == "burst"
    for path, content, message in [
        (tmp_path / "missing.toml", None, "no such rules file"),
        (tmp_path / "binary.toml", b"\xff\xfe\x00", "cannot read it as UTF-8"),
        (tmp_path / "huge.toml", b"#" * ((1 << 20) + 1), "not a rules file"),
        (tmp_path / "bad.toml", one(kind="x").encode(), "bad.toml.*kind must be one of"),
    ]:
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(RulesError, match=message):
            read_rules_file(path)
