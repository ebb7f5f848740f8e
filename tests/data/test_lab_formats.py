"""suite2p plane folders, CaImAn HDF5 files and label tables: real files in the real formats written to
tmp_path, values against hand-computed references, and one clear error for every malformed input."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from rtcalm.data import (
    Recording,
    TrialTable,
    detect_format,
    load_recording,
    read_caiman,
    read_label_table,
    read_suite2p,
)
from rtcalm.errors import RecordingError

# --- suite2p -------------------------------------------------------------------------------------------


def _ops(fs=30.0, **changes) -> dict:
    """An ops dict shaped like suite2p's: numbers, strings, lists, nested dicts, arrays and a datetime."""
    ops = {"fs": fs, "nplanes": 1, "nchannels": 1, "tau": 1.0, "neucoeff": 0.7, "Ly": 8, "Lx": 8,
           "save_path": "/data/mouse1/suite2p/plane0", "filelist": ["file_00001.tif"], "nframes": 0,
           "meanImg": np.zeros((8, 8), np.float32), "xoff": np.zeros(3, np.int32),
           "timing": {"registration": 1.5, "detection": 2.0}, "date_proc": datetime.datetime(2024, 5, 1, 12, 0)}
    ops.update(changes)
    return {k: v for k, v in ops.items() if v is not None}


def _write_plane(folder, f, fneu, iscell, ops=None, stat=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "F.npy", f)
    np.save(folder / "Fneu.npy", fneu)
    np.save(folder / "iscell.npy", iscell)
    np.save(folder / "ops.npy", _ops() if ops is None else ops, allow_pickle=True)
    if stat is not None:
        np.save(folder / "stat.npy", stat, allow_pickle=True)
    return folder


def _stat(n_rois):
    return np.array([{"ypix": np.arange(3) + k, "xpix": np.arange(3), "lam": np.ones(3, np.float32),
                      "med": [k + 0.5, 2.0 * k], "npix": 3} for k in range(n_rois)], dtype=object)


def _random_plane(tmp_path, n_rois=4, n_frames=300, fs=10.0, seed=0, name="plane0"):
    rng = np.random.default_rng(seed)
    f = (200 + 5 * rng.standard_normal((n_rois, n_frames)) + 50 * (rng.random((n_rois, n_frames)) > 0.97))
    fneu = 60 + 3 * rng.standard_normal((n_rois, n_frames))
    iscell = np.column_stack([np.arange(n_rois) % 2 == 0, rng.random(n_rois)]).astype(np.float64)
    folder = _write_plane(tmp_path / name, f.astype(np.float32), fneu.astype(np.float32), iscell,
                          _ops(fs=fs, nframes=n_frames), _stat(n_rois))
    return folder, f.astype(np.float32), fneu.astype(np.float32), iscell


def _reference_dff(f, fneu, coef, window, percentile):
    """Brute force: mirror the ends, sort every window, take rank floor(window * percentile / 100)."""
    corrected = f.astype(np.float64) - coef * fneu.astype(np.float64)
    half, rank = window // 2, int(window * percentile / 100)
    padded = np.pad(corrected, half, mode="symmetric")
    baseline = np.array([np.sort(padded[t:t + window])[rank] for t in range(corrected.size)])
    return (corrected - baseline) / baseline


def test_suite2p_dff_hand_computed(tmp_path):
    # ROI 0: Fc = F - 0.7 * 10 is 3 with two transients; a 3-frame median baseline stays at 3.
    # ROI 1: Fc = 1..5 with a 3-frame minimum: mirrored ends give baselines 1, 1, 2, 3, 4... (here on 9 frames).
    f = np.array([[10, 10, 20, 10, 10, 10, 30, 10, 10],
                  [8, 9, 10, 11, 12, 13, 14, 15, 16]], dtype=np.float32)
    fneu = np.full_like(f, 10.0)
    folder = _write_plane(tmp_path / "plane0", f, fneu, np.array([[1.0, 0.9], [1.0, 0.8]]), _ops(fs=1.0))
    median = read_suite2p(folder, baseline_window_s=3.0, baseline_percentile=50.0)
    np.testing.assert_allclose(median.dff[:, 0], [0, 0, 10 / 3, 0, 0, 0, 20 / 3, 0, 0], rtol=1e-6)
    minimum = read_suite2p(folder, baseline_window_s=3.0, baseline_percentile=0.0)
    fc = np.arange(1.0, 10.0)
    np.testing.assert_allclose(minimum.dff[:, 1], (fc - np.array([1, 1, 2, 3, 4, 5, 6, 7, 8])) / [1, 1, 2, 3, 4, 5, 6, 7, 8],
                               rtol=1e-6)
    assert median.rate_hz == 1.0 and median.dff.shape == (9, 2) and median.dff.dtype == np.float32


def test_suite2p_against_brute_force_reference(tmp_path):
    folder, f, fneu, iscell = _random_plane(tmp_path)
    rec = read_suite2p(folder, baseline_window_s=5.0, baseline_percentile=8.0, neuropil_coef=0.5)
    cells = np.flatnonzero(iscell[:, 0] > 0.5)
    assert rec.meta.format == "suite2p" and rec.rate_hz == 10.0 and rec.n_frames == 300
    np.testing.assert_array_equal(rec.neuron_ids, cells)  # ROI indices survive the iscell filter
    for column, roi in enumerate(cells):
        # 5 s at 10 Hz is 50 frames, made odd (51) so that the window is centred
        np.testing.assert_allclose(rec.dff[:, column], _reference_dff(f[roi], fneu[roi], 0.5, 51, 8.0),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.neuron_info["iscell_probability"], iscell[cells, 1].astype(np.float32))
    np.testing.assert_allclose(rec.neuron_info["centroid_yx_px"], [[k + 0.5, 2.0 * k] for k in cells])
    assert "0.5 * Fneu" in rec.meta.extra["dff"] and rec.meta.extra["rois"] == "4"


def test_suite2p_defaults_and_load_recording(tmp_path):
    folder, f, fneu, _ = _random_plane(tmp_path, n_frames=1200)
    assert detect_format(folder) == "suite2p"
    rec = load_recording(folder)
    # Defaults: 0.7, 8th percentile, 60 s -> 600 frames -> 601 (odd)
    np.testing.assert_allclose(rec.dff[:, 0], _reference_dff(f[0], fneu[0], 0.7, 601, 8.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rec.dff, read_suite2p(folder).dff)


def test_suite2p_window_longer_than_recording(tmp_path):
    folder, f, fneu, _ = _random_plane(tmp_path, n_frames=40)
    rec = read_suite2p(folder)  # 600 frames asked, 40 available: the window becomes 39 frames
    np.testing.assert_allclose(rec.dff[:, 0], _reference_dff(f[0], fneu[0], 0.7, 39, 8.0), rtol=1e-5, atol=1e-6)


def test_suite2p_iscell_boolean_column_and_no_stat(tmp_path):
    f = np.full((3, 20), 100.0, np.float32)
    folder = _write_plane(tmp_path / "p", f, f * 0.1, np.array([False, True, True]))
    rec = read_suite2p(folder)
    np.testing.assert_array_equal(rec.neuron_ids, [1, 2])
    assert rec.neuron_info == {}
    np.testing.assert_allclose(rec.dff, 0.0, atol=1e-6)


def test_suite2p_nonpositive_baseline_rois_are_left_out(tmp_path):
    f = np.full((3, 20), 100.0, np.float32)
    fneu = np.full((3, 20), 10.0, np.float32)
    fneu[1] = 200.0  # neuropil brighter than the ROI: F - 0.7 * Fneu < 0
    folder = _write_plane(tmp_path / "p", f, fneu, np.ones((3, 2)))
    rec = read_suite2p(folder)
    np.testing.assert_array_equal(rec.neuron_ids, [0, 2])
    assert rec.meta.extra["nonpositive_baseline_rois"] == "1"
    fneu[:] = 200.0
    _write_plane(folder, f, fneu, np.ones((3, 2)))
    with pytest.raises(RecordingError, match="non-positive baseline"):
        read_suite2p(folder)


class _RunsShell:
    """Unpickling this calls os.system: a file holding it must be refused, never executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["ops.npy", "stat.npy"])
def test_suite2p_malicious_pickle_is_refused_not_executed(tmp_path, target):
    folder, *_ = _random_plane(tmp_path)
    marker = tmp_path / "pwned"
    if target == "ops.npy":
        payload = np.array(_ops(fs=10.0, evil=_RunsShell(marker)), dtype=object)
    else:
        payload = _stat(4)
        payload[2] = {"med": [1, 2], "evil": _RunsShell(marker)}
    np.save(folder / target, payload, allow_pickle=True)
    with pytest.raises(RecordingError, match=r"unsafe pickle refused .*(posix|os)\.system"):
        read_suite2p(folder)
    assert not marker.exists()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtcalm", "info", *map(str, args)], capture_output=True, text=True)


def test_suite2p_cli_info_and_one_line_error(tmp_path):
    folder, *_ = _random_plane(tmp_path)
    result = _cli(folder, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "suite2p" and summary["neurons"] == 2 and summary["rate_hz"] == 10.0
    marker = tmp_path / "pwned"
    np.save(folder / "ops.npy", np.array(_ops(evil=_RunsShell(marker)), dtype=object), allow_pickle=True)
    result = _cli(folder)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"rtcalm: error: {folder}/ops.npy: unsafe pickle refused")
    assert not marker.exists()


def _corrupt(folder, name, value, allow_pickle=False):
    np.save(folder / name, value, allow_pickle=allow_pickle)


SUITE2P_BAD = {
    "Fneu shape": (lambda d: _corrupt(d, "Fneu.npy", np.zeros((4, 299), np.float32)), r"Fneu.npy: shape \(4, 299\) differs from F.npy.s \(4, 300\)"),
    "F 1-D": (lambda d: _corrupt(d, "F.npy", np.zeros(300, np.float32)), "F.npy: must be a 2-D numeric array"),
    "F empty": (lambda d: _corrupt(d, "F.npy", np.zeros((4, 0), np.float32)), "F.npy: is empty"),
    "F NaN": (lambda d: _corrupt(d, "F.npy", np.where(np.eye(4, 300) > 0, np.nan, 1.0)), "F.npy: has 4 NaN/Inf"),
    "Fneu Inf": (lambda d: _corrupt(d, "Fneu.npy", np.full((4, 300), np.inf)), "Fneu.npy: has 1200 NaN/Inf"),
    "F pickled": (lambda d: _corrupt(d, "F.npy", np.array([np.zeros(3), None], dtype=object), True),
                  "F.npy: holds an object array, which needs pickle"),
    "F not npy": (lambda d: (d / "F.npy").write_bytes(b"not an array"), "F.npy: is not a .npy file"),
    "F truncated": (lambda d: (d / "F.npy").write_bytes((d / "F.npy").read_bytes()[:200]), "F.npy: cannot read .npy"),
    "iscell length": (lambda d: _corrupt(d, "iscell.npy", np.ones((5, 2))), r"iscell.npy: must be \(4, 2\) or \(4,\)"),
    "iscell columns": (lambda d: _corrupt(d, "iscell.npy", np.ones((4, 3))), "iscell.npy: must be"),
    "iscell text": (lambda d: _corrupt(d, "iscell.npy", np.array(["yes"] * 4)), "iscell.npy: must be"),
    "iscell NaN": (lambda d: _corrupt(d, "iscell.npy", np.full((4, 2), np.nan)), "iscell.npy: has 8 NaN/Inf"),
    "no cells": (lambda d: _corrupt(d, "iscell.npy", np.zeros((4, 2))), "none of the 4 ROIs is classified as a cell"),
    "no fs": (lambda d: _corrupt(d, "ops.npy", _ops(fs=None), True), r"ops.npy: has no 'fs'"),
    "fs zero": (lambda d: _corrupt(d, "ops.npy", _ops(fs=0.0), True), "'fs' must be a positive frame rate"),
    "fs NaN": (lambda d: _corrupt(d, "ops.npy", _ops(fs=float("nan")), True), "'fs' must be a positive frame rate"),
    "fs text": (lambda d: _corrupt(d, "ops.npy", _ops(fs="thirty"), True), "'fs' must be a number"),
    "ops array": (lambda d: _corrupt(d, "ops.npy", np.zeros(3)), "ops.npy: must hold a dict"),
    "ops list": (lambda d: _corrupt(d, "ops.npy", np.array([{"fs": 30.0}], dtype=object), True), "must hold a dict"),
    "ops truncated": (lambda d: (d / "ops.npy").write_bytes((d / "ops.npy").read_bytes()[:140]), "ops.npy: cannot read"),
    "ops not npy": (lambda d: (d / "ops.npy").write_bytes(b"\x80\x04K\x01."), "ops.npy: cannot read"),
    "stat length": (lambda d: _corrupt(d, "stat.npy", _stat(3), True), r"stat.npy: must hold one entry per ROI of F.npy \(4\)"),
    "stat no med": (lambda d: _corrupt(d, "stat.npy", np.array([{"npix": 3}] * 4, dtype=object), True), "ROI 0 has no 'med'"),
}


@pytest.mark.parametrize("case", sorted(SUITE2P_BAD))
def test_suite2p_bad_files(tmp_path, case):
    folder, *_ = _random_plane(tmp_path)
    damage, problem = SUITE2P_BAD[case]
    damage(folder)
    with pytest.raises(RecordingError, match=problem):
        load_recording(folder)


@pytest.mark.parametrize("missing", ["F.npy", "Fneu.npy", "iscell.npy", "ops.npy"])
def test_suite2p_missing_file(tmp_path, missing):
    folder, *_ = _random_plane(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(RecordingError, match=f"not a complete suite2p plane folder: missing {missing}"):
        load_recording(folder)


@pytest.mark.parametrize("name, value", [("neuropil_coef", -0.1), ("baseline_window_s", 0.0),
                                         ("baseline_percentile", 101.0), ("neuropil_coef", float("nan"))])
def test_suite2p_bad_parameters(tmp_path, name, value):
    folder, *_ = _random_plane(tmp_path)
    with pytest.raises(RecordingError, match=f"{name}=nan|{name}={value}"):
        read_suite2p(folder, **{name: value})


def test_folders_that_are_not_planes(tmp_path):
    for plane in ("plane0", "plane1"):
        _random_plane(tmp_path / "suite2p", name=plane)
    with pytest.raises(RecordingError, match=r"suite2p output with 2 plane folder\(s\); pass one plane"):
        load_recording(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="is a directory"):
        load_recording(tmp_path / "empty")
    with pytest.raises(RecordingError, match="is one file of a suite2p plane folder; pass the folder"):
        load_recording(tmp_path / "suite2p" / "plane0" / "F.npy")


# --- CaImAn --------------------------------------------------------------------------------------------

def _none(group, key):
    group[key] = "NoneType"  # how CaImAn's save_dict_to_hdf5 writes None


def _write_caiman(path, *, f_dff="default", c="default", idx="default", fr=15.0, n_components=5, n_frames=50):
    """A file in the layout ``cnm.save()`` writes: estimates and params as groups, None as "NoneType",
    the sparse A as data/indices/indptr/shape."""
    rng = np.random.default_rng(1)
    traces = {"F_dff": rng.random((n_components, n_frames)) * 0.5, "C": rng.random((n_components, n_frames)) * 80}
    with h5py.File(path, "w") as f:
        est = f.create_group("estimates")
        for key, value in (("F_dff", f_dff), ("C", c)):
            if isinstance(value, str) and value == "default":
                est[key] = traces[key]
            elif value is None:
                _none(est, key)
            else:
                est[key] = value
        if isinstance(idx, str) and idx == "default":
            est["idx_components"] = np.array([0, 2, 3])
        elif idx is None:
            _none(est, "idx_components")
        else:
            est["idx_components"] = idx
        _none(est, "idx_components_bad")
        est["S"] = np.zeros((n_components, n_frames))
        est["YrA"] = np.zeros((n_components, n_frames))
        for key, value in (("data", np.ones(n_components)), ("indices", np.arange(n_components)),
                           ("indptr", np.arange(n_components + 1)), ("shape", np.array([64, n_components]))):
            est[f"A/{key}"] = value
        params = f.create_group("params")
        params["data/dims"] = np.array([8, 8])
        params["data/decay_time"] = 0.4
        if isinstance(fr, str):
            params["data/fr"] = fr
        elif fr is None:
            _none(params["data"], "fr")
        else:
            params["data/fr"] = fr
        params["init/K"] = 4
        f["dims"] = np.array([8, 8])
        _none(f, "dview")
    return traces


def test_caiman_f_dff_accepted_components(tmp_path):
    path = tmp_path / "analysis_results.hdf5"
    traces = _write_caiman(path)
    assert detect_format(path) == "caiman-hdf5"
    rec = load_recording(path)
    assert rec.meta.format == "caiman-hdf5" and rec.rate_hz == 15.0
    np.testing.assert_array_equal(rec.neuron_ids, [0, 2, 3])
    np.testing.assert_allclose(rec.dff, traces["F_dff"][[0, 2, 3]].T.astype(np.float32))
    assert rec.meta.extra["trace"] == "estimates/F_dff" and rec.meta.extra["components"] == "5"


def test_caiman_c_without_f_dff_and_all_components(tmp_path):
    path = tmp_path / "cnmf.h5"  # the name does not matter, the contents do
    traces = _write_caiman(path, f_dff=None, idx=None)
    rec = load_recording(path)
    np.testing.assert_array_equal(rec.neuron_ids, np.arange(5))
    np.testing.assert_allclose(rec.dff, traces["C"].T.astype(np.float32))
    assert "not ΔF/F" in rec.meta.extra["trace"] and "accepted_by" not in rec.meta.extra


def test_caiman_frame_rate_rules(tmp_path):
    path = tmp_path / "no_rate.hdf5"
    _write_caiman(path, fr=None)
    with pytest.raises(RecordingError, match=r"no frame rate in the file \(params/data/fr\).*rate_hz="):
        load_recording(path)
    assert read_caiman(path, rate_hz=7.5).rate_hz == 7.5
    _write_caiman(path, fr=15.0)
    assert read_caiman(path, rate_hz=15.0).rate_hz == 15.0
    with pytest.raises(RecordingError, match="rate_hz=30 contradicts the file's params/data/fr=15"):
        read_caiman(path, rate_hz=30.0)
    with pytest.raises(RecordingError, match="rate_hz must be a positive frame rate"):
        read_caiman(path, rate_hz=-1.0)


CAIMAN_BAD = {
    "no traces": (dict(f_dff=None, c=None), "neither estimates/F_dff nor estimates/C holds an array"),
    "F_dff 1-D": (dict(f_dff=np.zeros(50)), "estimates/F_dff must be a non-empty 2-D numeric array"),
    "F_dff text": (dict(f_dff="garbage"), "estimates/F_dff must be numeric"),
    "F_dff NaN": (dict(f_dff=np.full((5, 50), np.nan)), "estimates/F_dff has 150 NaN/Inf values"),
    "idx range": (dict(idx=np.array([0, 7])), r"idx_components has indices outside 0..4"),
    "idx twice": (dict(idx=np.array([1, 1])), "lists a component twice"),
    "idx float": (dict(idx=np.array([0.5])), "must hold integer component indices"),
    "idx empty": (dict(idx=np.zeros(0, np.int64)), "no component was accepted"),
    "fr text": (dict(fr="fast"), "params/data/fr must be numeric"),
    "fr zero": (dict(fr=0.0), "params/data/fr must be a positive frame rate"),
    "fr array": (dict(fr=np.array([15.0, 30.0])), "params/data/fr must be one number"),
}


@pytest.mark.parametrize("case", sorted(CAIMAN_BAD))
def test_caiman_bad_files(tmp_path, case):
    changes, problem = CAIMAN_BAD[case]
    path = tmp_path / "cnmf.hdf5"
    _write_caiman(path, **changes)
    with pytest.raises(RecordingError, match=problem):
        load_recording(path)


def test_caiman_truncated_and_group_instead_of_dataset(tmp_path):
    path = tmp_path / "cnmf.hdf5"
    _write_caiman(path)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(RecordingError, match="cannot"):
        load_recording(truncated)
    with h5py.File(path, "a") as f:
        del f["estimates/F_dff"]
        f.create_group("estimates/F_dff")
    with pytest.raises(RecordingError, match="estimates/F_dff is a group"):
        load_recording(path)


# --- label tables --------------------------------------------------------------------------------------

def _recording(n_frames=100, rate_hz=10.0) -> Recording:
    return Recording(dff=np.zeros((n_frames, 3), np.float32), rate_hz=rate_hz, neuron_ids=np.arange(3))


def _table(tmp_path, text, name="labels.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_label_table_frames_numeric_and_string_labels(tmp_path):
    path = _table(tmp_path, "frame,direction_deg,stimulus\n40,90,grating\n10,0,grating\n25.0,45,gray\n\n")
    table = read_label_table(path, _recording())
    assert isinstance(table, TrialTable) and len(table) == 3
    np.testing.assert_array_equal(table["start_frame"], [10, 25, 40])  # sorted by onset
    assert table["start_frame"].dtype == np.int64
    np.testing.assert_allclose(table["onset_s"], [1.0, 2.5, 4.0])
    np.testing.assert_array_equal(table["direction_deg"], [0.0, 45.0, 90.0])
    assert table["direction_deg"].dtype == np.float64
    assert list(table["stimulus"]) == ["grating", "gray", "grating"]
    assert table.names == ["onset_s", "start_frame", "direction_deg", "stimulus"]
    # usable as the trials of the recording it describes
    rec = Recording(dff=np.zeros((100, 3), np.float32), rate_hz=10.0, neuron_ids=np.arange(3), trials=table)
    assert rec.label_names == ["start_frame", "direction_deg", "stimulus"]


def test_label_table_times_tsv_with_bom_and_spaces(tmp_path):
    path = _table(tmp_path, "\ufefftime\t class \n 0.04 \t A\n2.26\tB\n9.9\tA\n0.25\tC\n", name="events.tsv")
    table = read_label_table(path, _recording(rate_hz=10.0))
    np.testing.assert_array_equal(table["start_frame"], [0, 3, 23, 99])  # nearest frame, 2.5 -> 3
    np.testing.assert_allclose(table["onset_s"], [0.04, 0.25, 2.26, 9.9])  # the given times, not frame times
    assert list(table["class"]) == ["A", "C", "B", "A"]


def test_label_table_quoted_cells(tmp_path):
    path = _table(tmp_path, 'frame,scene\n3,"forest, dense"\n7,"city"\n')
    assert list(read_label_table(path, _recording())["scene"]) == ["forest, dense", "city"]


LABEL_BAD = {
    "no onset column": ("trial,direction\n1,0\n", "the first column must be 'frame' .* or 'time'"),
    "onset not first": ("direction,frame\n0,1\n", "the first column must be 'frame'"),
    "no labels": ("frame\n1\n2\n", "no label columns"),
    "duplicate header": ("frame,a,b,a\n1,2,3,4\n", "duplicate column names in the header: a"),
    "empty name": ("frame,,b\n1,2,3\n", "empty column name"),
    "reserved name": ("frame,onset_s\n1,2\n", "'onset_s' is reserved"),
    "second onset": ("frame,time\n1,2\n", "'time' is reserved"),
    "fractional frame": ("frame,a\n12.5,1\n", r"line 2: frame '12.5' is not an integer frame index"),
    "text frame": ("frame,a\n1,1\ntwelve,1\n", r"line 3: frame 'twelve' is not an integer"),
    "NaN frame": ("frame,a\nnan,1\n", "line 2: frame 'nan' is not an integer"),
    "negative frame": ("frame,a\n-1,1\n", r"line 2: frame -1 is outside the recording \(frames 0..99\)"),
    "frame past end": ("frame,a\n5,1\n100,1\n", r"line 3: frame 100 is outside the recording \(frames 0..99\)"),
    "time past end": ("time,a\n10.0,1\n", r"line 2: time 10 s \(frame 100 at 10 Hz\) is outside the recording"),
    "negative time": ("time,a\n-0.5,1\n", "line 2: time '-0.5' is not a time in seconds >= 0"),
    "text time": ("time,a\nsoon,1\n", "line 2: time 'soon' is not a time"),
    "duplicate frame": ("frame,a\n3,1\n4,1\n3,2\n", "lines 2 and 4 both start at frame 3"),
    "times on one frame": ("time,a\n1.01,1\n0.99,2\n", "lines 2 and 3 both start at frame 10"),
    "short row": ("frame,a,b\n1,2,3\n2,3\n", "line 3 has 2 fields, the header has 3"),
    "long row": ("frame,a\n1,2,3\n", "line 2 has 3 fields, the header has 2"),
    "empty cell": ("frame,a\n1,\n", "line 2: empty value in column 'a'"),
    "NaN label": ("frame,a\n1,0.5\n2,nan\n", "line 3: column 'a' has the non-finite value 'nan'"),
    "Inf label": ("frame,a\n1,inf\n", "column 'a' has the non-finite value 'inf'"),
    "header only": ("frame,a\n", "has a header but no rows"),
    "empty file": ("", "is empty"),
    "blank file": ("\n\n", "is empty"),
}


@pytest.mark.parametrize("case", sorted(LABEL_BAD))
def test_label_table_bad(tmp_path, case):
    text, problem = LABEL_BAD[case]
    path = _table(tmp_path, text)
    with pytest.raises(RecordingError, match=problem) as error:
        read_label_table(path, _recording())
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_label_table_unreadable_and_wrong_recording(tmp_path):
    with pytest.raises(RecordingError, match="file not found"):
        read_label_table(tmp_path / "nope.csv", _recording())
    with pytest.raises(RecordingError, match="is a directory"):
        read_label_table(tmp_path, _recording())
    latin1 = _table(tmp_path, "frame,stimulus\n1,grün\n", encoding="latin-1")
    with pytest.raises(RecordingError, match="is not UTF-8 text"):
        read_label_table(latin1, _recording())
    epochs = Recording(dff=np.zeros((4, 10, 3), np.float32), rate_hz=10.0, neuron_ids=np.arange(3),
                       trials=TrialTable({"onset_s": np.zeros(4)}), trial_time_s=np.arange(10) / 10)
    with pytest.raises(RecordingError, match=r"label tables are for contiguous recordings.*\(4 epochs\)"):
        read_label_table(_table(tmp_path, "frame,a\n1,1\n"), epochs)
