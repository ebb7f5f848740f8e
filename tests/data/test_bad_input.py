"""Bad files give one clear error line naming the file and the problem, never a traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.io as sio

from rtcalm.data import load_recording
from rtcalm.errors import RecordingError


def _cli_error(path) -> str:
    result = subprocess.run([sys.executable, "-m", "rtcalm", "info", str(path)], capture_output=True, text=True)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtcalm: error: ") and str(path) in lines[0]
    return lines[0]


def test_missing_file(tmp_path):
    assert "file not found" in _cli_error(tmp_path / "nope.mat")


def test_empty_and_unknown(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert "empty" in _cli_error(empty)
    text = tmp_path / "notes.mat"
    text.write_text("hello, not a recording\n")
    assert "unknown format" in _cli_error(text)


def test_pickle_is_refused_without_loading(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps(Evil(), protocol=4))
    assert "pickle" in _cli_error(path)
    path0 = tmp_path / "metadata.txt"
    path0.write_bytes(pickle.dumps({"a": 1}, protocol=0))
    assert "pickle" in _cli_error(path0)
    assert not marker.exists()


def test_npz_object_array_refused(tmp_path):
    path = tmp_path / "rec_data.npz"
    np.savez(path, slice_all_dff=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    assert "pickle" in _cli_error(path)


def test_npz_missing_key_and_bad_shape(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, traces=np.zeros((3, 10), np.float32))
    assert "slice_all_dff" in _cli_error(path)
    np.savez(path, slice_all_dff=np.zeros(10, np.float16))
    assert "2-D" in _cli_error(path)
    np.savez(path, slice_all_dff=np.zeros((3, 10), np.float16), cell_specimen_ids=np.arange(4.0))
    assert "cell_specimen_ids" in _cli_error(path)


def test_npz_nan_and_inf(tmp_path):
    path = tmp_path / "a.npz"
    values = np.zeros((3, 10), np.float16)
    values[1, 2] = np.nan
    values[2, 3] = np.inf
    np.savez(path, slice_all_dff=values)
    assert "2 NaN/Inf" in _cli_error(path)


def test_truncated_npz(tmp_path, real_data_dir):
    source = next(real_data_dir.glob("yueqiw_neurod-io/data/*/*/rec_data.npz"))
    path = tmp_path / "rec_data.npz"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    message = _cli_error(path)
    assert "npz" in message or "corrupt" in message


def test_corrupt_npz_member(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, slice_all_dff=np.ones((3, 50), np.float16))
    raw = bytearray(path.read_bytes())
    raw[100:140] = b"\x00" * 40  # clobber the member's data
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordingError):
        load_recording(path)


def test_truncated_mat(tmp_path, cascade_mat):
    path = tmp_path / "excerpt.mat"
    path.write_bytes(cascade_mat.read_bytes()[:5000])
    assert "MATLAB" in _cli_error(path)


def test_mat_unknown_layout_and_shapes(tmp_path):
    path = tmp_path / "x.mat"
    sio.savemat(path, {"something": np.zeros(3)})
    assert "dF_traces" in _cli_error(path)
    sio.savemat(path, {"dF_traces": np.array(["abc"])})
    assert "2-D float" in _cli_error(path)
    traces = np.zeros((4, 20))
    traces[0, 0] = np.inf
    sio.savemat(path, {"dF_traces": traces})
    assert "NaN/Inf" in _cli_error(path)


def test_grating_inconsistent_trials(tmp_path):
    path = tmp_path / "bad_grat_data.mat"
    cells = np.empty((1, 3), dtype=object)
    for k in range(3):
        cells[0, k] = np.zeros((5, 1))
    cells[0, 2] = np.zeros((4, 1))  # one trial shorter than t
    D = {"neuron1": cells}
    TE = {"direction": np.array([[0, 45, 90]], dtype=np.uint16), "nTrials": 3, "dt": 0.0625}
    sio.savemat(path, {"D": D, "TE": TE, "t": np.linspace(-1, 2, 5)[None]})
    assert "length differs" in _cli_error(path)


def test_zip_that_is_not_npz(tmp_path):
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert "slice_all_dff" in _cli_error(path)


def test_bare_npy_and_directory(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 3)))
    assert "npy" in _cli_error(path)
    assert "directory" in _cli_error(tmp_path)


def test_unknown_hdf5_layout(tmp_path):
    import h5py

    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["foo"] = np.zeros(3)
    assert "unknown layout" in _cli_error(path)


def test_no_arguments_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "rtcalm", "info"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
