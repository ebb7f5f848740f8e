"""Every file in ../shared/data/real reads with the shapes SOURCES.md states, via `rtcalm info --json`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rtcalm.data import load_recording

pytestmark = pytest.mark.real_data

# (experiment folder, stimulus folder) -> (neurons, frames), from SOURCES.md
NEURODIO_SHAPES = {
    ("496908818", "natural_movie_one_70290-71191"): (172, 901),
    ("496935917", "natural_movie_one_31442-32343"): (120, 901),
    ("496935917", "natural_movie_two_63943-64844"): (120, 901),
    ("500964514", "natural_movie_one_70426-71331"): (213, 905),
    ("501271265", "natural_movie_one_38756-39660"): (215, 904),
    ("501271265", "natural_movie_three_19746-23366"): (215, 3620),
    ("501317920", "natural_movie_one_70463-71367"): (227, 904),
    ("501337989", "natural_movie_one_31520-32423"): (191, 903),
    ("501337989", "natural_movie_two_64104-65007"): (191, 903),
    ("501498760", "natural_movie_one_70439-71342"): (212, 903),
    ("501773889", "natural_movie_one_31524-32428"): (210, 904),
    ("501773889", "natural_movie_two_64128-65032"): (210, 904),
    ("501788003", "natural_movie_one_31521-32425"): (215, 904),
    ("501788003", "natural_movie_two_64122-65026"): (215, 904),
}
NEURODIO_META = {  # experiment -> (cre line, area, depth, container)
    "496908818": ("Rorb-IRES2-Cre", "VISp", 275, "511507144"),
    "500964514": ("Cux2-CreERT2", "VISp", 175, "511509529"),
    "501317920": ("Cux2-CreERT2", "VISp", 275, "511510927"),
    "501788003": ("Rorb-IRES2-Cre", "VISp", 275, "511510989"),
}
GRATING_NEURONS = {"mrcuts24": 28, "mrcuts26": 74, "mrcuts27": 39, "mrcuts28": 56, "mrcuts29": 18, "mrcuts30": 39}


def _info_json(paths):
    out = subprocess.run([sys.executable, "-m", "rtcalm", "info", "--json", *map(str, paths)],
                         capture_output=True, text=True, check=True)
    parsed = json.loads(out.stdout)
    return parsed if isinstance(parsed, list) else [parsed]


def test_cascade_excerpt(cascade_mat):
    (summary,) = _info_json([cascade_mat])
    assert (summary["neurons"], summary["frames"], summary["rate_hz"]) == (74, 6001, 30.0)
    assert summary["trial_structured"] is False
    rec = load_recording(cascade_mat)
    assert rec.dff.dtype == np.float32 and rec.dff.shape == (6001, 74)  # time-major
    assert rec.dff.min() == pytest.approx(-0.307, abs=1e-3) and rec.dff.max() == pytest.approx(4.135, abs=1e-3)


def test_neurodio_excerpts(neurodio_files):
    assert len(neurodio_files) == 14
    summaries = _info_json(neurodio_files)
    for path, summary in zip(neurodio_files, summaries, strict=True):
        key = (path.parent.parent.name, path.parent.name)
        assert (summary["neurons"], summary["frames"]) == NEURODIO_SHAPES[key], path
        assert summary["rate_hz"] == 30.0
        experiment = key[0]
        if experiment in NEURODIO_META:
            cre, area, depth, container = NEURODIO_META[experiment]
            meta = summary["meta"]
            assert (meta["cre_line"], meta["area"], meta["depth_um"], meta["mouse"]) == (cre, area, depth, container)
            assert meta["indicator"] == "GCaMP6f"


def test_neurodio_cell_ids_shared_between_movies(real_data_dir):
    folder = real_data_dir / "yueqiw_neurod-io/data/501337989"
    a, b = (load_recording(p) for p in sorted(folder.glob("*/rec_data.npz")))
    assert np.array_equal(np.sort(a.neuron_ids), np.sort(b.neuron_ids))
    assert a.neuron_ids.dtype == np.int64 and a.neuron_ids.min() > 0


def test_grating_trials(grating_files):
    assert len(grating_files) == 6
    summaries = _info_json(grating_files)
    for path, summary in zip(grating_files, summaries, strict=True):
        mouse = summary["meta"]["mouse"]
        assert mouse in path.name and summary["neurons"] == GRATING_NEURONS[mouse]
        assert (summary["trials"], summary["frames_per_trial"], summary["rate_hz"]) == (128, 49, 16.0)
        assert summary["trial_structured"] is True
        assert {"running_speed", "pupil", "direction_deg"} <= set(summary["labels"])
    rec = load_recording(grating_files[0])
    assert rec.dff.shape == (128, 49, 28)
    assert rec.trial_time_s[0] == pytest.approx(-1.0) and rec.trial_time_s[-1] == pytest.approx(2.0)
    directions, counts = np.unique(rec.trials["direction_deg"], return_counts=True)
    assert list(directions) == [0, 45, 90, 135, 180, 225, 270, 315] and set(counts) == {16}
    assert len(rec.epochs()) == 128  # epochs are kept apart, never glued
    assert rec.continuous_labels["running_speed"].shape == (128, 49)
