"""tools/served_rules.py: each rule averages the candidates it says it does, from the library's choice."""

from __future__ import annotations

import pytest

from rtcalm.eval.served import Candidate, Choice


@pytest.fixture(scope="module")
def rules(tool):
    return tool("served_rules")


RAW8 = Candidate("raw", 0, 8, None)
RAW1 = Candidate("raw", 0, 1, None)
BACKBONE2 = Candidate("backbone", 1, 2, None)
BOTH1 = Candidate("both", 1, 1, None)


def test_complexity_orders_by_features_times_bins_then_kind(rules):
    assert sorted([RAW8, BOTH1, BACKBONE2, RAW1], key=rules.complexity) == [RAW1, BACKBONE2, BOTH1, RAW8]
    assert rules.complexity(Candidate("backbone", 1, 2, None)) < rules.complexity(Candidate("both", 1, 2, None))


def test_each_rule_takes_its_members(rules):
    scores = {RAW1: 0.30, RAW8: 0.42, BACKBONE2: 0.40, BOTH1: 0.20}
    band = Choice((RAW8, BACKBONE2), scores, 0.42, 0.05, None)
    assert rules.members("best", band) == [RAW8]
    assert rules.members("one_se_simplest", band) == [BACKBONE2]  # 2 features per neuron against 8
    assert rules.members("average_band", band) == [RAW8, BACKBONE2]
    assert rules.members("average_all", band) == [RAW1, RAW8, BACKBONE2, BOTH1]
    assert band.features == "both" and band.record()["members"][1]["inner_cv"] == 0.40
    assert band.describe().startswith("both, the average of 2 heads within one standard error (0.050)")
