"""Allen NWB 1 (h5py), NWB 2 (pynwb) and the native format, on files built in the test."""

from __future__ import annotations

from datetime import UTC

import h5py
import numpy as np
import pytest

from rtcalm.data import Recording, RecordingMeta, TrialTable, load_recording, save_recording
from rtcalm.errors import RecordingError
from rtcalm.sim import make_synthetic


def test_allen_nwb(tmp_path, write_allen_nwb):
    path = tmp_path / "experiment.nwb"
    dff, timestamps = write_allen_nwb(path)
    rec = load_recording(path)
    assert rec.meta.format == "allen-nwb"
    assert rec.dff.shape == (300, 5) and np.array_equal(rec.dff, dff.T)
    assert rec.rate_hz == pytest.approx(30.0)
    assert list(rec.neuron_ids) == list(np.arange(5) + 517000000)
    assert rec.meta.cre_line == "Sst-IRES-Cre" and rec.meta.area == "VISp" and rec.meta.depth_um == 275.0
    assert rec.meta.mouse == "999" and rec.meta.session == "123456"
    speed = rec.continuous_labels["running_speed"]
    assert speed.shape == (300,) and np.isfinite(speed).all()
    trials = rec.trials
    assert len(trials) == 6
    assert list(trials["stimulus"][:3]) == ["drifting_gratings"] * 3
    assert list(trials["direction_deg"][:3]) == [0.0, 90.0, 270.0]
    assert trials["onset_s"][1] == pytest.approx(timestamps[100])
    assert np.isnan(trials["direction_deg"][3:]).all() and list(trials["frame"][3:]) == [0, 1, 2]


@pytest.mark.parametrize("override, problem", [
    ({"data": np.zeros(10, np.float32)}, "2-D"),
    ({"timestamps": np.arange(10.0)}, "timestamps"),
    ({"frame_duration": np.array([[10, 70], [100, 160], [200, 9999]])}, "outside"),
])
def test_allen_nwb_bad(tmp_path, write_allen_nwb, override, problem):
    path = tmp_path / "bad.nwb"
    write_allen_nwb(path, **override)
    with pytest.raises(RecordingError, match=problem):
        load_recording(path)


def test_allen_nwb_nan_and_truncated(tmp_path, write_allen_nwb):
    path = tmp_path / "nan.nwb"
    data = np.zeros((5, 300), np.float32)
    data[2, 7] = np.nan
    write_allen_nwb(path, data=data)
    with pytest.raises(RecordingError, match="NaN"):
        load_recording(path)
    good = tmp_path / "good.nwb"
    write_allen_nwb(good)
    truncated = tmp_path / "truncated.nwb"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(RecordingError, match=str(truncated)):
        load_recording(truncated)


def test_nwb2_roi_response_series(tmp_path):
    pynwb = pytest.importorskip("pynwb", reason="pynwb (the nwb extra) is not installed")
    from datetime import datetime

    from pynwb.file import Subject
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel

    nwbfile = pynwb.NWBFile(session_description="test", identifier="id-1", session_id="sess-7",
                            session_start_time=datetime(2024, 1, 1, tzinfo=UTC),
                            subject=Subject(subject_id="mouse-42", genotype="Vip-IRES-Cre; Ai148", species="Mus musculus"))
    device = nwbfile.create_device(name="scope")
    plane = nwbfile.create_imaging_plane(
        name="plane", optical_channel=OpticalChannel(name="ch", description="green", emission_lambda=510.0),
        imaging_rate=30.0, description="plane", device=device, excitation_lambda=920.0,
        indicator="GCaMP6s", location="VISl")
    ophys = nwbfile.create_processing_module(name="ophys", description="ophys")
    image_segmentation = ImageSegmentation()
    ophys.add(image_segmentation)
    segmentation = image_segmentation.create_plane_segmentation(name="rois", description="rois", imaging_plane=plane)
    for k in range(4):
        mask = np.zeros((8, 8))
        mask[k, k] = 1
        segmentation.add_roi(image_mask=mask, id=100 + k)
    region = segmentation.create_roi_table_region(region=[0, 1, 2, 3], description="all")
    values = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    # The series is created inside a DfOverF that is already part of the file: hdmf checks that the ROI
    # region and its table share an ancestor when the region gets its parent, and warns otherwise.
    dff_container = DfOverF()
    ophys.add(dff_container)
    dff_container.create_roi_response_series(name="dff", data=values, rois=region, unit="1", rate=30.0)
    path = tmp_path / "session.nwb"
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    rec = load_recording(path)
    assert rec.meta.format == "nwb2"
    assert rec.dff.shape == (120, 4) and np.allclose(rec.dff, values)
    assert rec.rate_hz == 30.0 and list(rec.neuron_ids) == [100, 101, 102, 103]
    assert rec.meta.mouse == "mouse-42" and rec.meta.cre_line == "Vip-IRES-Cre"
    assert rec.meta.area == "VISl" and rec.meta.indicator == "GCaMP6s"


def test_native_round_trip_contiguous(tmp_path):
    rec = make_synthetic(n_neurons=20, n_frames=300, seed=3)
    path = save_recording(rec, tmp_path / "rec.rtcalm.h5")
    back = load_recording(path)
    assert back.meta.format == "rtcalm-h5"
    assert np.array_equal(back.dff, rec.dff) and np.array_equal(back.neuron_ids, rec.neuron_ids)
    assert back.rate_hz == rec.rate_hz
    for name in rec.continuous_labels:
        assert np.array_equal(back.continuous_labels[name], rec.continuous_labels[name])
    for name in rec.trials.names:
        assert np.array_equal(back.trials[name], rec.trials[name])
    for name in rec.neuron_info:
        assert np.array_equal(back.neuron_info[name], rec.neuron_info[name], equal_nan=True)
    assert back.meta.mouse == rec.meta.mouse and back.meta.extra == rec.meta.extra


def test_native_round_trip_trials_with_strings(tmp_path):
    dff = np.random.default_rng(0).standard_normal((6, 10, 3)).astype(np.float32)
    trials = TrialTable({"onset_s": np.full(6, np.nan), "direction_deg": np.arange(6) * 45.0,
                         "stimulus": np.array(["dg"] * 6)})
    rec = Recording(dff=dff, rate_hz=16.0, neuron_ids=[1, 2, 3], trials=trials, trial_time_s=np.linspace(-1, 2, 10),
                    continuous_labels={"pupil": np.ones((6, 10))},
                    meta=RecordingMeta(mouse="m1", cre_line="Sst", depth_um=175.0))
    back = load_recording(save_recording(rec, tmp_path / "t.rtcalm.h5"))
    assert back.is_trial_structured and back.dff.shape == (6, 10, 3)
    assert list(back.trials["stimulus"]) == ["dg"] * 6
    assert np.array_equal(back.trial_time_s, rec.trial_time_s)
    assert back.meta.cre_line == "Sst" and back.meta.depth_um == 175.0


def test_native_bad_files(tmp_path):
    rec = make_synthetic(n_neurons=4, n_frames=50)
    path = save_recording(rec, tmp_path / "r.rtcalm.h5")
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(RecordingError, match="version 99"):
        load_recording(path)
    path = save_recording(rec, tmp_path / "r2.rtcalm.h5")
    with h5py.File(path, "a") as f:
        del f["neuron_ids"]
    with pytest.raises(RecordingError, match="neuron_ids"):
        load_recording(path)
    path = save_recording(rec, tmp_path / "r3.rtcalm.h5")
    with h5py.File(path, "a") as f:
        del f["dff"]
        f["dff"] = np.full((50, 4), np.nan, np.float32)
    with pytest.raises(RecordingError, match="NaN"):
        load_recording(path)


def test_recording_validation():
    with pytest.raises(ValueError, match="neuron ids"):
        Recording(dff=np.zeros((5, 3)), rate_hz=30, neuron_ids=[1, 2])
    with pytest.raises(ValueError, match="rate_hz"):
        Recording(dff=np.zeros((5, 3)), rate_hz=0, neuron_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="not unique"):
        Recording(dff=np.zeros((5, 3)), rate_hz=30, neuron_ids=[1, 1, 3])
    with pytest.raises(ValueError, match="trial table"):
        Recording(dff=np.zeros((2, 5, 3)), rate_hz=30, neuron_ids=[1, 2, 3], trial_time_s=np.arange(5))
    with pytest.raises(ValueError, match="label"):
        Recording(dff=np.zeros((5, 3)), rate_hz=30, neuron_ids=[1, 2, 3], continuous_labels={"speed": np.zeros(4)})
