"""Readers for the recording formats rtcalm understands, and format detection.

Every reader returns a validated :class:`~rtcalm.data.recording.Recording` or raises
:class:`~rtcalm.errors.RecordingError` naming the file and the problem. Nothing here unpickles
third-party data: ``.npz`` files are opened with ``allow_pickle=False`` and neurod-io's
``metadata.txt`` and suite2p's ``ops.npy``/``stat.npy`` go through :mod:`rtcalm.data.safe_pickle`.

Formats (detected from the file's first bytes, then its contents, never from the name alone; a folder
is a suite2p plane when it holds suite2p's files):

============== =========================================================================
format         what
============== =========================================================================
rtcalm-h5      the project's own HDF5 layout (:mod:`rtcalm.data.native`)
suite2p        suite2p plane folder (``F.npy``, ``Fneu.npy``, ``iscell.npy``, ``ops.npy``) (:mod:`rtcalm.data.suite2p`)
caiman-hdf5    CaImAn ``cnm.save`` HDF5 with ``estimates/F_dff`` or ``estimates/C`` (:mod:`rtcalm.data.caiman`)
allen-nwb      Allen Brain Observatory Visual Coding NWB 1 (HDF5), read with h5py
nwb2           NWB 2 file with a ``RoiResponseSeries`` of ΔF/F, read with pynwb
cascade-mat    MATLAB v5 file with ``dF_traces`` (neurons x frames), e.g. Cascade's Allen excerpt
neurodio-npz   neurod-io ``rec_data.npz`` Allen excerpt (+ ``metadata.txt`` beside it)
grating-mat    Park et al. drifting-grating trial file (``D``, ``TE``, ``t``), 16 Hz epochs
============== =========================================================================
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from rtcalm.data.caiman import looks_like_caiman, read_caiman
from rtcalm.data.native import read_native
from rtcalm.data.recording import Recording, RecordingMeta, TrialTable, checked_recording
from rtcalm.data.safe_pickle import looks_like_pickle, restricted_loads
from rtcalm.data.suite2p import looks_like_suite2p_plane, read_suite2p, suite2p_plane_folders
from rtcalm.errors import RecordingError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAT5_SIGNATURE = b"MATLAB 5.0 MAT-file"
ZIP_SIGNATURE = b"PK\x03\x04"
NPY_SIGNATURE = b"\x93NUMPY"

ALLEN_PIPELINE = "processing/brain_observatory_pipeline"
ALLEN_RATE_HZ = 30.0  # Allen Visual Coding 2P acquisition rate (~30 Hz); used where no timestamps exist

# Experiment-level metadata of the Cascade excerpt. The .mat file holds only the traces; these values come
# from the Allen experiment table quoted in ../shared/data/real/SOURCES.md (ophys experiment 552195520).
KNOWN_ALLEN_EXPERIMENTS = {
    "552195520": dict(mouse="551657958", cre_line="Cux2-CreERT2", area="VISl", depth_um=175.0,
                      indicator="GCaMP6f", extra={"session_type": "three_session_B"}),
}


# --- detection ---------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """Name of the reader for ``path`` (see the module docstring), or a RecordingError."""
    if not path.exists():
        raise RecordingError(path, "file not found")
    if path.is_dir():
        return _detect_folder(path)
    with open(path, "rb") as fh:
        head = fh.read(128)
    if not head:
        raise RecordingError(path, "file is empty")
    if head.startswith(HDF5_SIGNATURE):
        return _detect_hdf5_flavour(path)
    if head.startswith(MAT5_SIGNATURE):
        return "mat"  # refined by the .mat reader from the variables inside
    if head.startswith(ZIP_SIGNATURE):
        return "npz"
    if head.startswith(NPY_SIGNATURE):
        if looks_like_suite2p_plane(path.parent):
            raise RecordingError(path, f"is one file of a suite2p plane folder; pass the folder {path.parent}")
        raise RecordingError(path, "a bare .npy array has no sampling rate or neuron ids; save it with "
                                   "rtcalm.data.save_recording or as an .npz/.h5 recording")
    if looks_like_pickle(head):
        raise RecordingError(path, "looks like a Python pickle; pickles from third parties can run code "
                                   "and are never loaded")
    raise RecordingError(path, "unknown format (not HDF5 (NWB, CaImAn, rtcalm), MATLAB v5 .mat, .npz or a suite2p folder)")


def _detect_folder(path: Path) -> str:
    if looks_like_suite2p_plane(path):
        return "suite2p"
    planes = suite2p_plane_folders(path)
    if planes:
        listed = ", ".join(str(p) for p in planes[:3]) + (", ..." if len(planes) > 3 else "")
        raise RecordingError(path, f"suite2p output with {len(planes)} plane folder(s); pass one plane: {listed}")
    raise RecordingError(path, "is a directory, expected a recording file or a suite2p plane folder "
                               "(F.npy, Fneu.npy, iscell.npy, ops.npy)")


def _detect_hdf5_flavour(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") in ("rtcalm-recording", b"rtcalm-recording"):
                return "rtcalm-h5"
            if f"{ALLEN_PIPELINE}/DfOverF" in f:
                return "allen-nwb"
            if looks_like_caiman(f):
                return "caiman-hdf5"
            if "nwb_version" in f.attrs or "acquisition" in f and "processing" in f:
                return "nwb2"
            if "#refs#" in f or any(k.startswith("#") for k in f.keys()):
                raise RecordingError(path, "MATLAB v7.3 .mat files are not supported; save with -v7 or -v6")
            raise RecordingError(path, f"HDF5 file with an unknown layout (top-level keys: {sorted(f.keys())[:8]})")
    except RecordingError:
        raise
    except Exception as exc:  # truncated or corrupt HDF5
        raise RecordingError(path, f"cannot open as HDF5 ({type(exc).__name__}: {exc})") from None


# --- helpers -----------------------------------------------------------------------------------------

def _finite_or_error(path, name: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise RecordingError(path, f"{name} has {int((~np.isfinite(values)).sum())} NaN/Inf values")
    return values


def cre_line_from_genotype(genotype) -> str | None:
    """The Cre line: the genotype's first allele (Allen genotypes read "Sst-IRES-Cre/wt; Ai148(...)/wt")."""
    if not genotype:
        return None
    first = re.split(r"[;/]", str(genotype))[0].strip()
    return first or None


# --- MATLAB v5 files ---------------------------------------------------------------------------------

def read_mat(path: Path) -> Recording:
    import scipy.io as sio

    try:
        contents = sio.loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as exc:
        raise RecordingError(path, f"cannot read MATLAB file ({type(exc).__name__}: {exc})") from None
    variables = sorted(k for k in contents if not k.startswith("__"))
    if "dF_traces" in contents:
        return _cascade_mat(path, contents)
    if {"D", "TE", "t"} <= set(variables):
        return _grating_mat(path, contents)
    raise RecordingError(path, f"MATLAB file without a known layout: expected 'dF_traces' or 'D'/'TE'/'t', "
                               f"found {variables}")


def _cascade_mat(path: Path, contents: dict) -> Recording:
    traces = contents["dF_traces"]
    if not (isinstance(traces, np.ndarray) and traces.ndim == 2 and traces.dtype.kind == "f"):
        raise RecordingError(path, f"'dF_traces' must be a 2-D float matrix (neurons x frames), got "
                                   f"{getattr(traces, 'dtype', type(traces))} {getattr(traces, 'shape', '')}")
    dff = _finite_or_error(path, "dF_traces", traces.astype(np.float32).T)  # file: neurons x frames
    match = re.search(r"Experiment_(\d+)", path.name)
    session = match.group(1) if match else None
    known = dict(KNOWN_ALLEN_EXPERIMENTS.get(session or "", {}))
    extra = known.pop("extra", {})
    meta = RecordingMeta(source=str(path), format="cascade-mat", session=session, stimulus=None,
                         extra={**extra, "note": "frame range within the session is not documented"} if known else {},
                         **known)
    return checked_recording(path, dff=dff, rate_hz=ALLEN_RATE_HZ, neuron_ids=np.arange(dff.shape[1]), meta=meta)


def _grating_mat(path: Path, contents: dict) -> Recording:
    try:
        struct_d = contents["D"][0, 0]
        struct_te = contents["TE"][0, 0]
        trial_time = np.asarray(contents["t"], dtype=np.float64).ravel()
        names = struct_d.dtype.names or ()
        neuron_fields = sorted((n for n in names if re.fullmatch(r"neuron\d+", n)), key=lambda n: int(n[6:]))
        direction = np.asarray(struct_te["direction"], dtype=np.float64).ravel()
        dt = float(np.asarray(struct_te["dt"]).ravel()[0])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise RecordingError(path, f"grating file is missing an expected field ({type(exc).__name__}: {exc})") from None
    if not neuron_fields:
        raise RecordingError(path, "grating file has no neuron1..neuronN fields in D")
    n_trials, n_time = direction.shape[0], trial_time.shape[0]

    def per_trial_matrix(field: str) -> np.ndarray:
        cells = struct_d[field]
        if cells.size != n_trials:
            raise RecordingError(path, f"D.{field} has {cells.size} trials, TE.direction has {n_trials}")
        rows = [np.asarray(cells.flat[k], dtype=np.float64).ravel() for k in range(n_trials)]
        if any(r.shape != (n_time,) for r in rows):
            raise RecordingError(path, f"D.{field} has a trial whose length differs from t ({n_time} samples)")
        return np.stack(rows)  # (trials, frames)

    dff = np.stack([per_trial_matrix(n) for n in neuron_fields], axis=-1)  # (trials, frames, neurons)
    _finite_or_error(path, "neural data", dff)
    labels = {}
    for field, label in (("speed", "running_speed"), ("pupil_zscore", "pupil")):
        if field in names:
            labels[label] = _finite_or_error(path, field, per_trial_matrix(field))
    if not (np.isfinite(dt) and dt > 0):
        raise RecordingError(path, f"TE.dt must be a positive sampling interval, got {dt}")
    mouse = re.search(r"(mrcuts\d+)", path.name)
    trials = TrialTable({
        # Epochs were cut around onsets; the onsets' times in the session are not in the file.
        "onset_s": np.full(n_trials, np.nan),
        "direction_deg": direction,
        "orientation_deg": np.mod(direction, 180.0),
    })
    meta = RecordingMeta(source=str(path), format="grating-mat", mouse=mouse.group(1) if mouse else None,
                         session=path.stem.replace("_data", ""), area="V1", stimulus="drifting_gratings",
                         extra={"lab": "Sur lab (Park et al. 2024)"})
    return checked_recording(path, dff=dff, rate_hz=1.0 / dt, neuron_ids=np.arange(1, dff.shape[-1] + 1),
                             meta=meta, continuous_labels=labels, trials=trials, trial_time_s=trial_time)


# --- neurod-io npz -----------------------------------------------------------------------------------

def read_npz(path: Path) -> Recording:
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise RecordingError(path, f"cannot open .npz ({type(exc).__name__}: {exc})") from None
    with archive:
        if "slice_all_dff" not in archive.files:
            raise RecordingError(path, f".npz without a known layout: expected 'slice_all_dff', found {archive.files}")
        try:
            traces = archive["slice_all_dff"]
            ids = archive["cell_specimen_ids"] if "cell_specimen_ids" in archive.files else None
            centroids = archive["cell_centroids"] if "cell_centroids" in archive.files else None
        except ValueError as exc:  # object arrays need pickle: refused
            raise RecordingError(path, f"array needs pickle to load and is refused ({exc})") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise RecordingError(path, f"corrupt .npz member ({type(exc).__name__}: {exc})") from None
    if traces.ndim != 2 or traces.dtype.kind != "f":
        raise RecordingError(path, f"'slice_all_dff' must be a 2-D float array (neurons x frames), got {traces.dtype} {traces.shape}")
    dff = _finite_or_error(path, "slice_all_dff", traces.astype(np.float32).T)
    if ids is None:
        ids = np.arange(dff.shape[1])
    elif ids.shape != (dff.shape[1],):
        raise RecordingError(path, f"cell_specimen_ids has shape {ids.shape}, expected ({dff.shape[1]},)")
    neuron_info = {}
    if centroids is not None and centroids.shape == (dff.shape[1], 2):
        neuron_info["centroid_px"] = centroids.astype(np.float32)
    meta = _neurodio_meta(path)
    return checked_recording(path, dff=dff, rate_hz=ALLEN_RATE_HZ, neuron_ids=ids.astype(np.int64),
                             meta=meta, neuron_info=neuron_info)


def _neurodio_meta(path: Path) -> RecordingMeta:
    folder = path.parent.name  # e.g. natural_movie_one_70290-71191
    match = re.fullmatch(r"(.+)_(\d+)-(\d+)", folder)
    meta = RecordingMeta(source=str(path), format="neurodio-npz", session=path.parent.parent.name,
                         stimulus=match.group(1) if match else None)
    if match:
        meta.extra["allen_frames"] = f"{match.group(2)}-{match.group(3)}"
    metadata_file = path.parent / "metadata.txt"
    if not metadata_file.exists():
        return meta
    try:
        info = restricted_loads(metadata_file.read_bytes())["metadata"]
    except Exception as exc:
        raise RecordingError(metadata_file, f"cannot read metadata ({type(exc).__name__}: {exc})") from None
    meta.mouse = str(info["experiment_container_id"]) if "experiment_container_id" in info else None
    meta.session = str(info.get("ophys_experiment_id", meta.session))
    meta.cre_line = cre_line_from_genotype(info.get("genotype"))
    meta.area = info.get("targeted_structure")
    meta.depth_um = float(info["imaging_depth_um"]) if "imaging_depth_um" in info else None
    meta.indicator = info.get("indicator")
    for key in ("session_type", "genotype", "sex", "age_days", "specimen_name"):
        if key in info:
            value = info[key]
            meta.extra[key] = value.decode() if isinstance(value, bytes) else str(value)
    return meta


# --- Allen Brain Observatory NWB 1 (h5py) ------------------------------------------------------------

def read_allen_nwb(path: Path) -> Recording:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _allen_nwb_from_open_file(path, f)
    except RecordingError:
        raise
    except Exception as exc:
        raise RecordingError(path, f"cannot read Allen NWB file ({type(exc).__name__}: {exc})") from None


def _allen_nwb_from_open_file(path: Path, f) -> Recording:
    dff_group = f.get(f"{ALLEN_PIPELINE}/DfOverF/imaging_plane_1")
    if dff_group is None or "data" not in dff_group:
        raise RecordingError(path, f"missing {ALLEN_PIPELINE}/DfOverF/imaging_plane_1/data")
    data = dff_group["data"][()]
    if data.ndim != 2:
        raise RecordingError(path, f"DfOverF data must be 2-D (cells x time), got shape {data.shape}")
    timestamps = dff_group["timestamps"][()] if "timestamps" in dff_group else None
    n_cells = data.shape[0]
    dff = _finite_or_error(path, "DfOverF data", data.astype(np.float32).T)  # file: cells x time
    rate = ALLEN_RATE_HZ
    if timestamps is not None:
        if timestamps.shape != (dff.shape[0],):
            raise RecordingError(path, f"DfOverF timestamps have shape {timestamps.shape}, expected ({dff.shape[0]},)")
        steps = np.diff(timestamps)
        if steps.size and not (np.isfinite(steps).all() and np.median(steps) > 0):
            raise RecordingError(path, "DfOverF timestamps are not increasing")
        if steps.size:
            rate = 1.0 / float(np.median(steps))
    ids_path = f"{ALLEN_PIPELINE}/ImageSegmentation/cell_specimen_ids"
    ids = f[ids_path][()] if ids_path in f else np.arange(n_cells)
    if ids.shape != (n_cells,):
        raise RecordingError(path, f"cell_specimen_ids has shape {ids.shape}, expected ({n_cells},)")

    labels = {}
    run_path = f"{ALLEN_PIPELINE}/BehavioralTimeSeries/running_speed"
    if f"{run_path}/data" in f:
        speed = np.asarray(f[f"{run_path}/data"][()], dtype=np.float64).ravel()
        run_t = f[f"{run_path}/timestamps"][()] if f"{run_path}/timestamps" in f else timestamps
        if timestamps is not None and run_t is not None and speed.shape == run_t.shape:
            # Allen running speed has NaN where the encoder dropped samples
            running = on_imaging_frames(speed, run_t, timestamps, outside="edge")
            if running is not None:
                labels["running_speed"] = running
        elif speed.shape == (dff.shape[0],) and np.isfinite(speed).all():
            labels["running_speed"] = speed.astype(np.float32)

    trials = _allen_stimulus_table(path, f, timestamps, dff.shape[0])

    def text(key):
        if key not in f:
            return None
        value = f[key][()]
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return str(value)

    depth = text("general/optophysiology/imaging_plane_1/imaging depth")
    depth_match = re.search(r"[\d.]+", depth or "")
    genotype = text("general/subject/genotype")
    meta = RecordingMeta(
        source=str(path), format="allen-nwb",
        mouse=text("general/experiment_container_id"), session=text("general/session_id"),
        cre_line=cre_line_from_genotype(genotype), area=text("general/optophysiology/imaging_plane_1/location"),
        depth_um=float(depth_match.group()) if depth_match else None,
        indicator=text("general/optophysiology/imaging_plane_1/indicator"),
        stimulus=",".join(sorted(set(trials["stimulus"]))) if trials is not None else None,
        extra={k: v for k, v in (("session_type", text("general/session_type")), ("genotype", genotype)) if v},
    )
    return checked_recording(path, dff=dff, rate_hz=rate, neuron_ids=ids.astype(np.int64), meta=meta,
                             continuous_labels=labels, trials=trials)


def _allen_stimulus_table(path: Path, f, timestamps, n_frames: int) -> TrialTable | None:
    """One row per stimulus presentation across all ``stimulus/presentation/*`` groups that have
    ``frame_duration`` (start/end imaging frame); see :func:`allen_trial_table`."""
    if "stimulus/presentation" not in f:
        return None
    rows: list[dict] = []
    for group_name, group in f["stimulus/presentation"].items():
        if not hasattr(group, "keys") or "frame_duration" not in group or "data" not in group:
            continue
        frames = np.asarray(group["frame_duration"][()]).reshape(-1, 2).astype(np.int64)
        data = np.asarray(group["data"][()], dtype=np.float64)
        if data.ndim == 1:
            data = data[:, None]
        if "features" in group:
            features = [x.decode() if isinstance(x, bytes) else str(x) for x in group["features"][()]]
        else:
            features = ["frame"] if data.shape[1] == 1 else [f"value{i}" for i in range(data.shape[1])]
        if data.shape[0] != frames.shape[0] or len(features) != data.shape[1]:
            raise RecordingError(path, f"stimulus table {group_name} has inconsistent data/features/frame_duration")
        rows += allen_presentation_rows(path, group_name.removesuffix("_stimulus"), frames, data, features, n_frames)
    return allen_trial_table(rows, timestamps)


def allen_presentation_rows(where, stimulus: str, frames: np.ndarray, data: np.ndarray, features: list[str],
                            n_frames: int) -> list[dict]:
    """The rows of one Allen stimulus table: ``frames`` (K, 2) start/end imaging frames, ``data`` (K, F)
    the feature values named by ``features``. Allen's drifting-grating "orientation" is the direction of
    motion, so it is also given as ``direction_deg``. Shared by the NWB reader and the trainer's Allen
    export (allensdk's tables)."""
    if (frames < 0).any() or (frames >= n_frames).any():
        raise RecordingError(where, f"stimulus table {stimulus} refers to frames outside the recording")
    rows = []
    for k in range(frames.shape[0]):
        row = {"stimulus": stimulus, "start_frame": frames[k, 0], "end_frame": frames[k, 1]}
        row.update({name: data[k, i] for i, name in enumerate(features)})
        if stimulus == "drifting_gratings" and "orientation" in row:
            row["direction_deg"] = row["orientation"]
        rows.append(row)
    return rows


def allen_trial_table(rows: list[dict], timestamps: np.ndarray | None) -> TrialTable | None:
    """One table of the presentation rows of every stimulus, ordered by start frame, with ``onset_s``
    from the imaging timestamps. Feature columns (orientation, temporal frequency, movie frame, ...) are
    NaN for stimuli that lack them."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["start_frame"])
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        if name == "stimulus":
            columns[name] = np.array([row[name] for row in rows])
        else:
            columns[name] = np.array([row.get(name, np.nan) for row in rows], dtype=np.float64)
    start = columns["start_frame"].astype(np.int64)
    columns["onset_s"] = timestamps[start] if timestamps is not None else start / ALLEN_RATE_HZ
    return TrialTable(columns)


def on_imaging_frames(values, times, imaging_times: np.ndarray, outside: str = "edge") -> np.ndarray | None:
    """A behavioural signal sampled at ``times`` onto the imaging frames (float32) by linear interpolation
    over its finite samples (Allen running speed and pupil have NaN where samples were dropped or the eye
    was closed). Imaging frames outside the signal's time range get the edge value (``outside="edge"``,
    running speed) or NaN (``outside="nan"``: no extrapolation). None when the shapes differ or fewer
    than two samples are finite."""
    values, times = np.asarray(values, np.float64).ravel(), np.asarray(times, np.float64).ravel()
    if values.shape != times.shape:
        return None
    valid = np.isfinite(values) & np.isfinite(times)
    if valid.sum() < 2:
        return None
    t, v = times[valid], values[valid]
    out = np.interp(imaging_times, t, v)
    if outside == "nan":
        out[(imaging_times < t.min()) | (imaging_times > t.max())] = np.nan
    return out.astype(np.float32)


# --- stimulus movie templates ------------------------------------------------------------------------

def read_movie_template(path, key: str | None = None) -> np.ndarray:
    """A movie template ``(frames, H, W)`` from ``.npy`` (read without pickle) or HDF5 (``.h5``/``.hdf5``;
    dataset ``key``, or the only dataset, or one named ``natural_movie_one`` / ``data``), e.g. allensdk's
    ``get_stimulus_template("natural_movie_one")`` or the trainer's Allen export. uint8 is scaled by
    1/255; floats must already be in [0, 1]. Returns float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(path, "template file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                names: list[str] = []
                f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
                if key is None:
                    preferred = [n for n in names if n.split("/")[-1] in ("natural_movie_one", "data")]
                    if len(names) == 1:
                        key = names[0]
                    elif len(preferred) == 1:
                        key = preferred[0]
                    else:
                        raise RecordingError(path, f"several datasets ({', '.join(names) or 'none'}); name one "
                                                   "(--template-key)")
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise RecordingError(path, f"no dataset {key!r} (datasets: {', '.join(names) or 'none'})")
                array = f[key][()]
        else:
            raise RecordingError(path, f"template must be .npy, .h5 or .hdf5, not {suffix or 'no suffix'!r}")
    except RecordingError:
        raise
    except (OSError, ValueError) as exc:
        raise RecordingError(path, f"cannot read template: {exc}") from None
    return checked_movie_template(array, path)


def checked_movie_template(array, where="template") -> np.ndarray:
    """``array`` as a float32 ``(frames, H, W)`` movie in [0, 1] (uint8 scaled by 1/255), or a
    RecordingError naming ``where``."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 1:
        raise RecordingError(where, f"template must be (frames, height, width) grayscale, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise RecordingError(where, f"template must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise RecordingError(where, "template has NaN/Inf values")
    if array.min() < 0 or array.max() > 1:
        raise RecordingError(where, f"template values must be uint8 or floats in [0, 1], "
                                    f"got range [{array.min():g}, {array.max():g}]")
    return array


# --- NWB 2 (pynwb) -----------------------------------------------------------------------------------

def read_nwb2(path: Path) -> Recording:
    try:
        from pynwb import NWBHDF5IO
        from pynwb.ophys import RoiResponseSeries
    except ImportError:
        raise RecordingError(path, "NWB 2 files need pynwb: pip install 'rtcalm[nwb]'") from None
    try:
        with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
            nwbfile = io.read()
            series = [obj for obj in nwbfile.objects.values() if isinstance(obj, RoiResponseSeries)]
            if not series:
                raise RecordingError(path, "NWB file has no RoiResponseSeries")
            # Prefer ΔF/F (a series inside a DfOverF container) over raw fluorescence.
            dff_series = [s for s in series if type(s.parent).__name__ == "DfOverF"] or series
            chosen = dff_series[0]
            data = np.asarray(chosen.data[()], dtype=np.float32)
            if data.ndim == 1:
                data = data[:, None]
            if data.ndim != 2:
                raise RecordingError(path, f"RoiResponseSeries {chosen.name} must be 2-D (time x rois), got {data.shape}")
            if chosen.rate is not None:
                rate = float(chosen.rate)
            elif chosen.timestamps is not None and len(chosen.timestamps) > 1:
                rate = 1.0 / float(np.median(np.diff(np.asarray(chosen.timestamps[()]))))
            else:
                raise RecordingError(path, f"RoiResponseSeries {chosen.name} has neither rate nor timestamps")
            try:
                roi_ids = np.asarray(chosen.rois.table.id[()])[np.asarray(chosen.rois.data[()])]
            except Exception:
                roi_ids = np.arange(data.shape[1])
            subject = nwbfile.subject
            meta = RecordingMeta(
                source=str(path), format="nwb2",
                mouse=getattr(subject, "subject_id", None) if subject else None,
                session=nwbfile.session_id or nwbfile.identifier,
                cre_line=cre_line_from_genotype(getattr(subject, "genotype", None)) if subject else None,
                extra={"series": chosen.name, "description": nwbfile.session_description or ""},
            )
            plane = getattr(chosen.rois.table, "imaging_plane", None)
            if plane is not None:
                meta.area, meta.indicator = plane.location, plane.indicator
    except RecordingError:
        raise
    except Exception as exc:
        raise RecordingError(path, f"cannot read NWB 2 file ({type(exc).__name__}: {exc})") from None
    _finite_or_error(path, f"RoiResponseSeries {meta.extra['series']}", data)
    if roi_ids.shape != (data.shape[1],):
        roi_ids = np.arange(data.shape[1])
    return checked_recording(path, dff=data, rate_hz=rate, neuron_ids=roi_ids, meta=meta)


# --- entry point -------------------------------------------------------------------------------------

def load_recording(path) -> Recording:
    """Read any supported recording (a file, or a suite2p plane folder) with each reader's defaults.
    The format comes from the contents, not the name. For non-default suite2p ΔF/F parameters or a
    CaImAn file without a frame rate, call :func:`read_suite2p` / :func:`read_caiman` directly."""
    path = Path(path)
    fmt = detect_format(path)
    reader = _READERS.get(fmt)
    if reader is None:
        raise AssertionError(f"unhandled format {fmt}")
    return reader(path)


_READERS = {"suite2p": read_suite2p, "caiman-hdf5": read_caiman, "mat": read_mat, "npz": read_npz,
            "allen-nwb": read_allen_nwb, "nwb2": read_nwb2, "rtcalm-h5": read_native}
