"""``rtcalm stats``, and ``rtcalm bench stats``'s neuron counts (its run: tests/bench/test_bench_commands.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtcalm.cli import main
from rtcalm.daemon.config import DaemonConfig
from rtcalm.data import load_recording
from rtcalm.stats import stats_of_recording


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.real_data
def test_one_file_prints_the_documented_object(capsys, cascade_mat):
    report = _json(capsys, ["stats", str(cascade_mat), "--json", "--thresholds", "knee"])
    assert {"neurons", "thresholds", "summary", "file", "cre_line", "lines"} <= set(report)
    rec = load_recording(cascade_mat)
    stats = stats_of_recording(rec)
    assert [n["id"] for n in report["neurons"]] == rec.neuron_ids.tolist()  # recording order
    first = report["neurons"][0]
    assert list(first)[:3] == ["id", "skewness", "kurtosis"]
    assert {"predictable", "count", "mean", "std", "lag1_autocorr", "snr"} <= set(first)
    np.testing.assert_allclose([n["skewness"] for n in report["neurons"]], stats.skewness, rtol=1e-12)
    t = report["thresholds"]
    assert t["requested"] == "knee"
    predictable = [n["skewness"] <= t["skewness"]["value"] and n["kurtosis"] <= t["kurtosis"]["value"]
                   for n in report["neurons"]]
    assert [n["predictable"] for n in report["neurons"]] == predictable
    assert report["summary"]["predictable"] == sum(predictable)
    assert report["cre_line"] == "Cux2-CreERT2"


@pytest.mark.real_data
def test_poyo_cap_preset_is_the_default_like_the_daemons(capsys, cascade_mat):
    report = _json(capsys, ["stats", str(cascade_mat), "--json"])
    assert report["thresholds"]["requested"] == "poyo-cap" == DaemonConfig().stats.predictable_method
    assert report["thresholds"]["skewness"] == {"value": 3.51, "method": "poyo-cap preset", "fallback": None}
    assert report["thresholds"]["kurtosis"]["value"] == 22.62


@pytest.mark.real_data
def test_several_files_share_thresholds(capsys, neurodio_files, grating_files):
    paths = [str(neurodio_files[0]), str(grating_files[0])]
    report = _json(capsys, ["stats", *paths, "--json", "--thresholds", "knee"])
    assert [f["file"] for f in report["files"]] == paths
    assert "neurons" not in report
    total = sum(f["summary"]["neurons"] for f in report["files"])
    assert report["summary"]["neurons"] == total
    assert report["files"][1]["cre_line"] is None  # the grating files have no Cre line
    assert "only 1 Cre line known" in report["thresholds"]["notes"][0]


def test_text_output_and_synthetic(capsys):
    assert main(["stats", "--synthetic", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "thresholds (requested: poyo-cap)" in out
    assert "split:" in out and "neurons predictable" in out


def test_no_input_and_bad_files_exit_2(capsys, tmp_path):
    assert main(["stats"]) == 2
    assert "give one or more recording files" in capsys.readouterr().err
    bad = tmp_path / "not_a_recording.npz"
    bad.write_bytes(b"hello")
    assert main(["stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtcalm: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["bench", "stats", "--neurons", "0"], ["bench", "stats", "--neurons", "a,b"]])
def test_bench_rejects_bad_neuron_counts(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "neuron counts" in capsys.readouterr().err
