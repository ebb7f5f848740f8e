"""docs/render.py: the docs hold exactly what their stored results render, and the sentences in a block
that state a conclusion follow the numbers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RENDER = REPO / "docs" / "render.py"


@pytest.fixture
def render(tmp_path, monkeypatch):
    """docs/render.py as a module, reading its results from a copy in tmp_path."""
    spec = importlib.util.spec_from_file_location("docs_render", RENDER)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "docs_render", module)
    spec.loader.exec_module(module)
    results = tmp_path / "results"
    shutil.copytree(REPO / "docs" / "results", results)
    monkeypatch.setattr(module, "RESULTS", results)
    return module


def test_every_doc_is_what_its_stored_results_render():
    done = subprocess.run([sys.executable, str(RENDER), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_hand_edited_number(tmp_path, render, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for block in render.BLOCKS:
        shutil.copy(REPO / "docs" / block.doc, docs / block.doc)
    monkeypatch.setattr(render, "DOCS", docs)
    assert render.main(["--check"]) == 0
    results = docs / "results.md"
    text = results.read_text()
    begin = text.index(render.begin_marker("triggers"))
    edited = text[:begin] + text[begin:].replace("0.863", "0.900", 1)
    assert edited != text
    results.write_text(edited)
    assert render.main(["--check"]) == 1


def test_missing_markers_are_one_line_errors(render):
    with pytest.raises(SystemExit, match="expected one generated block 'triggers'"):
        render.replace_block("no markers here", "triggers", "body", "docs/results.md")


def test_the_decoding_verdict_follows_the_numbers(render):
    path = render.RESULTS / "decoding_served.json"
    document = json.loads(path.read_text())
    for key, run in document["runs"].items():
        if key.startswith("direction_seed"):
            for row in run["per_mouse"].values():
                row["served"] = 1.0
            run["mean"]["served"] = 1.0
    path.write_text(json.dumps(document))
    block = render.served_block()
    assert "missed on" not in block and "met on every seed" in block
    assert "within 0.01 or above on every seed" in block
    first = document["runs"]["direction_seed1"]
    mouse = next(iter(first["per_mouse"]))
    first["per_mouse"][mouse]["served"] = 0.0
    first["mean"]["served"] = 0.0
    path.write_text(json.dumps(document))
    block = render.served_block()
    assert f"missed on {mouse} (seed 1: 0.000 against" in block
    assert "more than 0.01 below on some seed" in block


def test_the_served_rule_comparison_follows_the_numbers(render):
    path = render.RESULTS / "served_rules.json"
    document = json.loads(path.read_text())
    for run in document["runs"].values():
        for row in run["per_mouse"].values():
            row["average_all"] = 1.0
            row["best"] = 0.0
        run["mean"]["average_all"], run["mean"]["best"] = 1.0, 0.0
    path.write_text(json.dumps(document))
    block = render.served_rules_block()
    assert f"Highest mean: {render.SERVED_RULES['average_all']}; fewest misses (0): " in block
    assert render.SERVED_RULES["average_all"] in block.split("fewest misses (0): ")[1].split(". ")[0]
    assert render.SERVED_RULES["best"] not in block.split("fewest misses (0): ")[1].split(". ")[0]
    assert f"| {render.SERVED_RULES['best']} | 0.000 | 0.000 | 0.000 | 0.000 |" in block
    assert block.count(f"18 of {3 * len(document['mice'])} |") == 1  # the best rule misses every mouse and seed


def test_the_interval_verdict_follows_the_numbers(render):
    assert "limit 0.02: met" in render.intervals_block()
    path = render.RESULTS / "intervals_test_mice.json"
    document = json.loads(path.read_text())
    document["intervals"]["0.8"]["per_horizon"]["30"]["coverage"] = 0.75
    path.write_text(json.dumps(document))
    assert "limit 0.02: not met" in render.intervals_block()


def test_the_head_cost_verdict_follows_the_numbers(render):
    path = render.RESULTS / "bench" / f"{render.HEADS_RUN}.json"
    document = json.loads(path.read_text())
    heads = document["result"]["interleaved"]["added"].values()
    for head in heads:
        head["receive_to_publish"]["median_ms"] = render.HEAD_LIMIT_MS
    path.write_text(json.dumps(document))
    assert "**not met** |" not in render.closed_loop_block()
    next(iter(heads))["receive_to_publish"]["median_ms"] = render.HEAD_LIMIT_MS + 0.05
    path.write_text(json.dumps(document))
    assert render.closed_loop_block().count("**not met** |") == 1


def test_the_pretraining_verdict_follows_the_numbers(render):
    path = render.RESULTS / "decoder_pretraining.json"
    document = json.loads(path.read_text())
    mice = len(document["per_mouse"])

    def pretrained(values: dict) -> str:
        for size, value in values.items():
            document["mean"]["pretrained"][size]["mean"] = value
            for row in document["per_mouse"].values():
                row["pretrained"][size]["mean"] = value
        path.write_text(json.dumps(document))
        return render.decoder_pretraining_block()

    block = pretrained(dict.fromkeys(document["sizes"], 1.0))
    assert "ahead of per-mouse LDA at every calibration size" in block
    assert "offer it (it wins against per-mouse LDA): met." in block
    assert block.count(f"ahead on {mice} of {mice} mice") == 2 * len(document["sizes"])
    block = pretrained(dict.fromkeys(document["sizes"], 0.0))
    assert ("does not put the decoder ahead of per-mouse LDA at 16 trials, 32 trials, 64 trials, all (the training "
            "fold); against the same network trained from scratch it is ahead at no size") in block
    assert "offer it (it wins against per-mouse LDA): not met." in block
    block = pretrained({"16": 1.0})
    assert "ahead of per-mouse LDA at 32 trials, 64 trials, all (the training fold); it is ahead at 16 trials" in block
    assert "not met." in block
    within = document["within_pretraining_mice"]
    assert "worse than LDA" in block or "at least as well as LDA" in block
    for check in within.values():
        check["held_out_accuracy"] = dict.fromkeys(check["held_out_accuracy"], 1.0)
    assert "at least as well as LDA" in pretrained({})
    for check in within.values():
        check["held_out_accuracy"] = dict.fromkeys(check["held_out_accuracy"], 0.0)
    assert "worse than LDA" in pretrained({})
