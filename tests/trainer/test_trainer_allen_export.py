"""``python -m trainer allen-export`` (trainer/allen_export.py): Allen NWB files -> native recordings +
natural-movie templates + a SessionStore (the allensdk-free path), the clear error without allensdk, and the
allensdk path's conversion run against a stand-in ``allensdk`` package that serves the same test NWB through
allensdk 2.16's BrainObservatoryNwbDataSet API (return types and table construction copied from its
source), in a subprocess that must not import torch, scipy or numba (they are absent from the allensdk
environment)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from rtcalm.data import load_recording, read_movie_template, read_native
from rtcalm.data.store import SessionStore
from trainer import allen_export
from trainer.__main__ import main as trainer_main

REPO = Path(__file__).resolve().parents[2]
PIPE = "processing/brain_observatory_pipeline"


def export(*argv) -> int:
    return trainer_main(["allen-export", *map(str, argv)])


def allen_nwb(write_allen_nwb, path: Path, session: str, container: str, with_eye_tracking: bool,
              with_template: bool, seed: int = 0, template_seed: int = 0) -> dict:
    """write_allen_nwb's Allen layout, plus pupil tracking and a natural-movie template when asked (the
    same template in every file unless ``template_seed`` differs, as Allen sessions share the movie)."""
    dff, timestamps = write_allen_nwb(path, n_cells=6, n_frames=300, seed=seed)
    extras = {"dff": dff, "timestamps": timestamps}
    with h5py.File(path, "a") as f:
        f["general/session_id"][...] = session.encode()
        f["general/experiment_container_id"][...] = container.encode()
        if with_eye_tracking:
            # eye tracking at 60 Hz, from one imaging frame after imaging starts to ~1 s before it ends,
            # with a NaN blink
            pupil_times = np.arange(2, 2 * 300 - 60) / 60.0 + timestamps[0]
            area = 900 + 50 * np.sin(pupil_times)
            area[10:14] = np.nan
            f[f"{PIPE}/PupilTracking/pupil_size/data"] = area
            f[f"{PIPE}/PupilTracking/pupil_size/timestamps"] = pupil_times
            extras.update(pupil_times=pupil_times, pupil_area=area)
        if with_template:
            template = np.random.default_rng(template_seed).integers(0, 256, size=(3, 8, 16), dtype=np.uint8)
            f["stimulus/templates/natural_movie_one_image_stack/data"] = template
            extras["template"] = template
    return extras


@pytest.fixture(scope="module")
def nwb_files(tmp_path_factory, write_allen_nwb):
    folder = tmp_path_factory.mktemp("nwb")
    first = allen_nwb(write_allen_nwb, folder / "a.nwb", "501", "70", with_eye_tracking=True, with_template=True,
                      seed=0)
    second = allen_nwb(write_allen_nwb, folder / "b.nwb", "502", "71", with_eye_tracking=False, with_template=True,
                       seed=1)
    return {"a": (folder / "a.nwb", first), "b": (folder / "b.nwb", second)}


def test_nwb_export_writes_native_recordings_templates_and_a_store(nwb_files, tmp_path, capsys):
    out, store = tmp_path / "export", tmp_path / "store"
    assert export("--nwb", nwb_files["a"][0], nwb_files["b"][0], "--out", out, "--store", store) == 0
    assert "wrote template" in capsys.readouterr().out
    path, extras = out / "recordings" / "501.rtcalm.h5", nwb_files["a"][1]
    recording = load_recording(path)
    original = load_recording(nwb_files["a"][0])
    assert recording.meta.format == "rtcalm-h5" and np.array_equal(recording.dff, extras["dff"].T)
    assert np.array_equal(recording.neuron_ids, original.neuron_ids) and recording.rate_hz == original.rate_hz
    meta = recording.meta
    assert (meta.mouse, meta.session, meta.cre_line, meta.area, meta.depth_um, meta.indicator) == \
        ("70", "501", "Sst-IRES-Cre", "VISp", 275.0, "GCaMP6f")
    assert meta.extra["session_type"] == "three_session_A" and meta.extra["exported_from"] == str(nwb_files["a"][0])
    assert np.array_equal(recording.continuous_labels["running_speed"], original.continuous_labels["running_speed"])
    # pupil: interpolated over the blink onto the imaging frames, NaN where eye tracking did not run
    # (imaging frame 0 and the last 30)
    pupil = recording.continuous_labels["pupil_area"]
    t = extras["timestamps"]
    inside = (t >= extras["pupil_times"][0]) & (t <= extras["pupil_times"][-1])
    assert np.isnan(pupil[~inside]).all() and np.isfinite(pupil[inside]).all() and (~inside).sum() == 31
    assert np.allclose(pupil[inside], 900 + 50 * np.sin(t[inside]), atol=0.1)
    for column in original.trials.names:
        a, b = recording.trials[column], original.trials[column]
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), column
    with h5py.File(path, "r") as f:
        assert f["timestamps_s"].dtype == np.float64 and np.array_equal(f["timestamps_s"][()], t)
    # the second session has no eye tracking: no pupil label, and its identical template is accepted
    assert "pupil_area" not in load_recording(out / "recordings" / "502.rtcalm.h5").continuous_labels
    template = read_movie_template(out / "templates" / "natural_movie_one.h5")  # what the movie trainer reads
    assert np.array_equal(template, extras["template"].astype(np.float32) / 255.0)
    built = SessionStore(store)
    assert len(built) == 2 and built.mice() == ["70", "71"]
    assert np.array_equal(np.asarray(built.dff(built.sessions[0]["id"])), extras["dff"].T)
    # a second run skips what exists
    assert export("--nwb", nwb_files["a"][0], "--out", out) == 0
    assert "exists, skipped" in capsys.readouterr().out


def test_nwb_export_rejects_bad_input(nwb_files, tmp_path, capsys, write_allen_nwb):
    def error_of(*argv) -> str:
        assert export(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("trainer: error: ") and err.count("\n") == 1  # one line
        return err

    nwb = nwb_files["a"][0]
    assert "missing.nwb: file not found" in error_of("--nwb", tmp_path / "missing.nwb", "--out", tmp_path / "o")
    assert "give --out" in error_of("--nwb", nwb)
    assert "--experiments only apply with --allensdk" in error_of("--nwb", nwb, "--out", tmp_path / "o",
                                                                   "--experiments", 1)
    assert "--native only builds a store" in error_of("--native", nwb)
    native = tmp_path / "native.rtcalm.h5"
    from rtcalm.data import save_recording

    save_recording(load_recording(nwb), native)
    assert "not an Allen Brain Observatory NWB file (read as rtcalm-h5)" in error_of("--nwb", native, "--out", tmp_path / "o")
    text = tmp_path / "notes.nwb"
    text.write_text("not hdf5")
    err = error_of("--nwb", text, nwb, "--out", tmp_path / "o2")
    assert "1 experiment(s) failed" in err and "notes.nwb" in err
    assert (tmp_path / "o2" / "recordings" / "501.rtcalm.h5").is_file()  # the good file was still exported
    # a different template under the same stimulus name is refused, not mixed
    other = tmp_path / "other.nwb"
    allen_nwb(write_allen_nwb, other, "503", "72", with_eye_tracking=False, with_template=True, seed=5,
              template_seed=1)
    assert "differs from the one already in" in error_of("--nwb", other, "--out", tmp_path / "o2")
    with pytest.raises(SystemExit):
        export("--nwb", nwb, "--allensdk", "--out", tmp_path / "o")
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("allensdk") is not None, reason="allensdk is installed here")
def test_allensdk_path_without_allensdk_says_what_to_install_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer", "allen-export", "--allensdk", "--manifest",
                             str(tmp_path / "manifest.json"), "--experiments", "501", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.startswith("trainer: error: allensdk is not installed") and result.stderr.count("\n") == 1
    assert "pip install allensdk 'statsmodels<0.15' 'setuptools<81'" in result.stderr
    assert not (tmp_path / "out").exists()


STAND_IN = '''
"""Stand-in for allensdk 2.16 (BrainObservatoryCache / BrainObservatoryNwbDataSet), serving local NWB files
listed in nwb_files.json beside the manifest. Return types and table construction follow allensdk's source."""
import json, os
import h5py, numpy as np, pandas as pd
from allensdk.brain_observatory.brain_observatory_exceptions import NoEyeTrackingException

PIPE = "processing/brain_observatory_pipeline"

class BrainObservatoryNwbDataSet:
    def __init__(self, nwb_file):
        self.nwb_file = nwb_file
    def get_dff_traces(self):
        with h5py.File(self.nwb_file, "r") as f:
            g = f[PIPE + "/DfOverF/imaging_plane_1"]
            return g["timestamps"][()], g["data"][()]
    def get_cell_specimen_ids(self):
        with h5py.File(self.nwb_file, "r") as f:
            return f[PIPE + "/ImageSegmentation/cell_specimen_ids"][()]
    def get_metadata(self):
        with h5py.File(self.nwb_file, "r") as f:
            text = lambda k: f[k][()].decode()
            genotype = text("general/subject/genotype")
            return {"genotype": genotype, "cre_line": genotype.split(";")[0],
                    "targeted_structure": text("general/optophysiology/imaging_plane_1/location"),
                    "imaging_depth_um": int(text("general/optophysiology/imaging_plane_1/imaging depth").split()[0]),
                    "ophys_experiment_id": int(text("general/session_id")),
                    "experiment_container_id": int(text("general/experiment_container_id")),
                    "indicator": text("general/optophysiology/imaging_plane_1/indicator"),
                    "session_type": text("general/session_type")}
    def list_stimuli(self):
        with h5py.File(self.nwb_file, "r") as f:
            return [k.replace("_stimulus", "") for k in f["stimulus/presentation/"].keys()]
    def get_stimulus_table(self, name):
        with h5py.File(self.nwb_file, "r") as f:
            g = f["stimulus/presentation/" + name + "_stimulus"]
            frame_dur = g["frame_duration"][()]
            if name in ("drifting_gratings", "static_gratings"):
                table = pd.DataFrame(g["data"][()], columns=[x.decode() for x in g["features"][()]])
            else:
                table = pd.DataFrame(g["data"][()], columns=["frame"])
        table.loc[:, "start"] = frame_dur[:, 0].astype(int)
        table.loc[:, "end"] = frame_dur[:, 1].astype(int)
        table = table.sort_values(["start", "end"])
        if name.startswith("natural_movie"):
            n = table["frame"].nunique()
            table["repeat"] = np.repeat(range(len(table) // n), n)
        return table
    def get_running_speed(self):
        with h5py.File(self.nwb_file, "r") as f:
            g = f[PIPE + "/BehavioralTimeSeries/running_speed"]
            return g["data"][()], g["timestamps"][()]
    def get_pupil_size(self):
        try:
            with h5py.File(self.nwb_file, "r") as f:
                g = f[PIPE]["PupilTracking"]["pupil_size"]
                return g["timestamps"][()], g["data"][()]
        except KeyError:
            raise NoEyeTrackingException("No pupil tracking for this experiment.")
    def get_stimulus_template(self, name):
        with h5py.File(self.nwb_file, "r") as f:
            return f["stimulus"]["templates"][name + "_image_stack"]["data"][()]

class BrainObservatoryCache:
    def __init__(self, manifest_file=None):
        with open(os.path.join(os.path.dirname(manifest_file), "nwb_files.json")) as f:
            self.files = {int(k): v for k, v in json.load(f).items()}
    def get_ophys_experiments(self, cre_lines=None, targeted_structures=None, session_types=None, **_):
        return [{"id": i} for i in sorted(self.files)]
    def get_ophys_experiment_data(self, ophys_experiment_id, file_name=None):
        if ophys_experiment_id not in self.files:
            raise IOError("HTTP 404 for experiment %d" % ophys_experiment_id)
        return BrainObservatoryNwbDataSet(self.files[ophys_experiment_id])
'''


def test_allensdk_path_writes_what_the_nwb_path_writes(nwb_files, tmp_path):
    sdk = tmp_path / "site" / "allensdk"
    for package in (sdk, sdk / "core", sdk / "brain_observatory"):
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    (sdk / "core" / "brain_observatory_cache.py").write_text(STAND_IN)
    (sdk / "brain_observatory" / "brain_observatory_exceptions.py").write_text(
        "class NoEyeTrackingException(Exception):\n    pass\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "nwb_files.json").write_text(json.dumps({"501": str(nwb_files["a"][0]), "502": str(nwb_files["b"][0])}))
    # as allensdk's environment runs it: python -m trainer from the repository root (rtcalm not installed)
    probe = textwrap.dedent(f"""
        import json, runpy, sys
        sys.argv = ["trainer", "allen-export", "--allensdk", "--manifest", {str(cache / "manifest.json")!r},
                    "--all", "--out", {str(tmp_path / "sdk_out")!r}]
        try:
            runpy.run_module("trainer", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numba", "scipy"))
        print(json.dumps({{"code": code, "heavy": heavy, "trainer": sys.modules["trainer"].__file__}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                            cwd=REPO)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": [], "trainer": str(REPO / "trainer" / "__init__.py")}, result.stderr

    nwb_out = tmp_path / "nwb_out"
    assert export("--nwb", nwb_files["a"][0], nwb_files["b"][0], "--out", nwb_out) == 0
    for session in ("501", "502"):
        a = read_native(tmp_path / "sdk_out" / "recordings" / f"{session}.rtcalm.h5")
        b = read_native(nwb_out / "recordings" / f"{session}.rtcalm.h5")
        assert np.array_equal(a.dff, b.dff) and np.array_equal(a.neuron_ids, b.neuron_ids) and a.rate_hz == b.rate_hz
        for key in ("mouse", "session", "cre_line", "area", "depth_um", "indicator", "stimulus"):
            assert getattr(a.meta, key) == getattr(b.meta, key), key
        assert a.meta.extra["session_type"] == b.meta.extra["session_type"]
        assert a.continuous_labels.keys() == b.continuous_labels.keys()
        for name in a.continuous_labels:
            assert np.array_equal(a.continuous_labels[name], b.continuous_labels[name], equal_nan=True), name
        assert set(a.trials.names) == set(b.trials.names) | {"repeat"}  # allensdk numbers the movie repeats
        for column in b.trials.names:
            x, y = a.trials[column], b.trials[column]
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), column
    with h5py.File(tmp_path / "sdk_out" / "templates" / "natural_movie_one.h5", "r") as f:
        assert np.array_equal(f["natural_movie_one"][()], nwb_files["a"][1]["template"])


def test_allensdk_failures_are_reported_and_the_rest_exported(nwb_files, tmp_path, monkeypatch, capsys):
    class DataSet:
        def __init__(self, experiment_id):
            self.experiment_id = experiment_id

        def get_dff_traces(self):
            timestamps = np.arange(50) / 30.0
            traces = np.ones((3, 50)) if self.experiment_id == 7 else np.full((3, 50), np.nan)
            return timestamps, traces

        def get_metadata(self):
            return {"experiment_container_id": 1, "ophys_experiment_id": self.experiment_id, "genotype": None}

        def list_stimuli(self):
            return []

        def get_running_speed(self):
            return np.full(50, np.nan), np.arange(50) / 30.0

        def get_pupil_size(self):
            raise LookupError("no eye tracking")

        def get_cell_specimen_ids(self):
            return np.array([1, 2, 3])

    class Cache:
        def __init__(self, manifest_file):
            pass

        def get_ophys_experiment_data(self, experiment_id):
            if experiment_id == 9:
                raise ConnectionError("network down")
            return DataSet(experiment_id)

    monkeypatch.setattr(allen_export, "import_allensdk", lambda: (Cache, LookupError))
    ids = tmp_path / "ids.txt"
    ids.write_text("7  # good\n8\n9\n")
    code = export("--allensdk", "--manifest", tmp_path / "m.json", "--experiment-list", ids, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2 and "2 experiment(s) failed" in err
    assert "experiment 8: dff has 150 NaN/Inf values" in err
    assert "experiment 9: allensdk failed (ConnectionError: network down)" in err
    recording = read_native(tmp_path / "out" / "recordings" / "7.rtcalm.h5")
    assert recording.dff.shape == (50, 3) and recording.continuous_labels == {} and recording.trials is None
    ids.write_text("7\nseven\n")
    assert export("--allensdk", "--manifest", "m.json", "--experiment-list", ids, "--out", tmp_path / "out") == 2
    assert "ids.txt:2: expected an ophys experiment id, got 'seven'" in capsys.readouterr().err
