"""Export Allen Brain Observatory (Visual Coding 2P) sessions into rtcalm's native recording format, with
the natural-movie templates, and build a :class:`rtcalm.data.store.SessionStore` for training.

    # NWB files a lab already has (allensdk-free; rtcalm's environment)
    python tools/allen_export.py --nwb FILE.nwb ... --out exports/allen [--store stores/allen]

    # download with allensdk (its own environment, docs/training.md), then build the store in rtcalm's
    allen-env/bin/python tools/allen_export.py --allensdk --manifest allen_cache/manifest.json \\
        (--experiments ID ... | --experiment-list FILE | --all [--cre-lines ...] [--areas ...]
         [--session-types ...]) --out exports/allen
    python tools/allen_export.py --native exports/allen/recordings/*.rtcalm.h5 --store stores/allen

Written under ``--out``:

    recordings/<ophys_experiment_id>.rtcalm.h5   the native layout (rtcalm.data.native, version 1): ΔF/F
        (frames x cells, float32), cell_specimen_ids, metadata (mouse = experiment container, session =
        ophys experiment, Cre line, area, depth, indicator, session type, genotype), labels running_speed
        (cm/s) and pupil_area (pixels, when the session has eye tracking), the stimulus table of every
        stimulus (one row per presentation: stimulus, start_frame, end_frame, features, onset_s), plus an
        extra float64 dataset /timestamps_s (the imaging frame times; rtcalm's reader ignores it)
    templates/<natural_movie_*>.h5               one uint8 dataset (frames, height, width) named after the
        stimulus, with its sha256; written once and checked against every later session that shows it

allensdk pins numpy < 1.24 and pandas 1.5.3, so the --allensdk path runs in a separate environment in
which rtcalm is not installed: it imports only numpy, h5py and rtcalm.errors (pure Python) and writes the
native HDF5 layout itself. Building a store needs rtcalm's environment (predictability statistics).
An experiment whose recording already exists is skipped unless --overwrite; a failed experiment is
reported and the others continue (exit status 2 if any failed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    from rtcalm.errors import RtcalmError
except ImportError:  # the allensdk environment: rtcalm is not installed there, its source tree is beside us
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rtcalm.errors import RtcalmError

PIPELINE = "processing/brain_observatory_pipeline"
DFF_GROUP = f"{PIPELINE}/DfOverF/imaging_plane_1"
PUPIL_GROUP = f"{PIPELINE}/PupilTracking/pupil_size"
TEMPLATES_GROUP = "stimulus/templates"
NATIVE_FORMAT, NATIVE_VERSION = "rtcalm-recording", 1  # rtcalm.data.native.FORMAT_NAME / FORMAT_VERSION
ALLEN_ENV_HELP = ("allensdk is not installed in this Python. It pins numpy<1.24 and pandas 1.5.3, so give it "
                  "its own environment: python3.11 -m venv allen-env && allen-env/bin/pip install allensdk "
                  "'statsmodels<0.15' 'setuptools<81', then run this tool with allen-env/bin/python "
                  "(docs/training.md)")


class ExportError(RtcalmError, ValueError):
    pass


# --- one session, whatever the source ---------------------------------------------------------------------

@dataclass
class AllenSession:
    """Everything exported for one ophys experiment, in rtcalm's conventions (time-major ΔF/F)."""

    experiment_id: str
    dff: np.ndarray  # float32 (frames, cells)
    rate_hz: float
    cell_ids: np.ndarray  # int64 (cells,)
    meta: dict  # rtcalm.data.RecordingMeta.to_dict() layout
    timestamps_s: np.ndarray | None = None  # float64 (frames,)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (frames,)
    trials: dict[str, np.ndarray] | None = None  # columns of equal length, with onset_s
    templates: dict[str, object] = field(default_factory=dict)  # stimulus -> zero-argument loader of the array


def check_session(session: AllenSession) -> None:
    """The checks rtcalm.data.Recording makes, so that a file the allensdk environment writes is one
    rtcalm can read."""
    where = f"experiment {session.experiment_id}"

    def fail(problem):
        raise ExportError(f"{where}: {problem}")

    if session.dff.ndim != 2 or session.dff.size == 0:
        fail(f"ΔF/F must be a non-empty (frames, cells) array, got shape {session.dff.shape}")
    if not np.isfinite(session.dff).all():
        fail(f"ΔF/F has {int((~np.isfinite(session.dff)).sum())} NaN/Inf values")
    frames, cells = session.dff.shape
    if not (np.isfinite(session.rate_hz) and session.rate_hz > 0):
        fail(f"frame rate {session.rate_hz} is not a positive number")
    if session.cell_ids.shape != (cells,) or np.unique(session.cell_ids).size != cells:
        fail(f"needs {cells} unique cell ids, got shape {session.cell_ids.shape}")
    if session.timestamps_s is not None and session.timestamps_s.shape != (frames,):
        fail(f"timestamps have shape {session.timestamps_s.shape}, expected ({frames},)")
    for name, values in session.labels.items():
        if values.shape != (frames,):
            fail(f"label {name!r} has shape {values.shape}, expected ({frames},)")
    if session.trials is not None:
        lengths = {name: len(column) for name, column in session.trials.items()}
        if "onset_s" not in session.trials or len(set(lengths.values())) != 1:
            fail(f"stimulus table needs onset_s and columns of equal length, got {lengths}")


def rate_from_timestamps(timestamps: np.ndarray, where: str) -> float:
    steps = np.diff(timestamps)
    if steps.size == 0 or not (np.isfinite(steps).all() and np.median(steps) > 0):
        raise ExportError(f"{where}: imaging timestamps are not increasing")
    return 1.0 / float(np.median(steps))


def on_imaging_frames(values, times, imaging_times, outside: str) -> np.ndarray | None:
    """A behavioural signal sampled at ``times`` onto the imaging frames by linear interpolation over its
    finite samples (Allen running speed and pupil have NaN where samples were dropped or the eye was
    closed). Imaging frames outside the signal's time range get the edge value (``outside="edge"``, what
    rtcalm's Allen reader does for running speed) or NaN (``outside="nan"``: no extrapolation). None
    when fewer than two samples are finite."""
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


def safe_name(text: str) -> str:
    """A file-name-safe experiment id (Allen ids are digits; a lab's own files may say anything)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "session"


def cre_line_from_genotype(genotype) -> str | None:
    """As rtcalm's Allen reader: the first allele of the genotype (allensdk keeps '/wt')."""
    if not genotype:
        return None
    first = re.split(r"[;/]", str(genotype))[0].strip()
    return first or None


# --- the writer (numpy + h5py only) ------------------------------------------------------------------------

def write_native(session: AllenSession, path: Path) -> Path:
    """Write the native layout (rtcalm.data.native, version 1) atomically: a temporary file renamed into
    place, so an interrupted export never leaves a half-written recording under its final name."""
    import h5py

    check_session(session)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = NATIVE_FORMAT
        f.attrs["version"] = NATIVE_VERSION
        f.attrs["rate_hz"] = float(session.rate_hz)
        f.attrs["meta_json"] = json.dumps(session.meta)
        f.create_dataset("dff", data=np.ascontiguousarray(session.dff, dtype=np.float32), chunks=True,
                         compression="gzip", compression_opts=1)
        f.create_dataset("neuron_ids", data=session.cell_ids.astype(np.int64))
        if session.timestamps_s is not None:
            f.create_dataset("timestamps_s", data=session.timestamps_s.astype(np.float64))
        labels = f.create_group("labels")
        for name, values in session.labels.items():
            labels.create_dataset(name, data=values.astype(np.float32))
        if session.trials is not None:
            trials = f.create_group("trials")
            for name, column in session.trials.items():
                column = np.asarray(column)
                if column.dtype.kind in "USO":
                    trials.create_dataset(name, data=column.astype(str).astype(object), dtype=h5py.string_dtype())
                else:
                    trials.create_dataset(name, data=column)
        f.create_group("neuron_info")
    tmp.replace(path)
    return path


def write_template(name: str, load, templates_dir: Path, log) -> Path:
    """``templates/<name>.h5`` with one uint8 dataset ``name`` (what trainer.movie.load_template reads).
    The same stimulus is shown in many sessions: it is written once, and a later session whose template
    differs (sha256) is an error rather than silently mixed."""
    import h5py

    array = np.asarray(load())
    if array.ndim != 3 or array.dtype != np.uint8 or min(array.shape) < 1:
        raise ExportError(f"template {name}: expected a (frames, height, width) uint8 array, got "
                          f"{array.dtype} {array.shape}")
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    path = templates_dir / f"{name}.h5"
    if path.exists():
        with h5py.File(path, "r") as f:
            existing = f.attrs.get("sha256")
        if existing != digest:
            raise ExportError(f"template {name}: differs from the one already in {path} (sha256 {existing} != "
                              f"{digest}); export sessions with different templates to different --out folders")
        return path
    templates_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset(name, data=array, chunks=(1, *array.shape[1:]), compression="gzip", compression_opts=1)
        f.attrs["sha256"] = digest
    tmp.replace(path)
    log(f"wrote template {path} {array.shape}")
    return path


# --- source 1: Allen NWB files (allensdk-free) ---------------------------------------------------------------

def session_from_nwb(path: Path) -> AllenSession:
    """rtcalm's Allen NWB reader (ΔF/F, ids, metadata, running speed, stimulus tables), plus the imaging
    timestamps, pupil area and natural-movie templates read with h5py."""
    import h5py

    from rtcalm.data import load_recording

    recording = load_recording(path)
    if recording.meta.format != "allen-nwb":
        raise ExportError(f"{path}: not an Allen Brain Observatory NWB file (read as {recording.meta.format})")
    experiment_id = safe_name(recording.meta.session or path.name.split(".")[0])
    meta = recording.meta.to_dict()
    meta["extra"]["exported_from"] = str(path)
    labels = dict(recording.continuous_labels)
    templates = {}
    try:
        with h5py.File(path, "r") as f:
            timestamps = f[f"{DFF_GROUP}/timestamps"][()].astype(np.float64) if f"{DFF_GROUP}/timestamps" in f else None
            if timestamps is not None and f"{PUPIL_GROUP}/data" in f and f"{PUPIL_GROUP}/timestamps" in f:
                pupil = on_imaging_frames(f[f"{PUPIL_GROUP}/data"][()], f[f"{PUPIL_GROUP}/timestamps"][()],
                                          timestamps, outside="nan")
                if pupil is not None:
                    labels["pupil_area"] = pupil
            if TEMPLATES_GROUP in f:
                for key in f[TEMPLATES_GROUP]:
                    name = key.removesuffix("_image_stack")
                    if name.startswith("natural_movie") and "data" in f[f"{TEMPLATES_GROUP}/{key}"]:
                        templates[name] = _template_loader(path, f"{TEMPLATES_GROUP}/{key}/data")
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc})") from None
    trials = None
    if recording.trials is not None:
        trials = dict(recording.trials.columns)
    return AllenSession(experiment_id=str(experiment_id), dff=recording.dff, rate_hz=recording.rate_hz,
                        cell_ids=recording.neuron_ids, meta=meta, timestamps_s=timestamps, labels=labels,
                        trials=trials, templates=templates)


def _template_loader(path: Path, key: str):
    def load():
        import h5py

        with h5py.File(path, "r") as f:
            return f[key][()]
    return load


# --- source 2: allensdk's BrainObservatoryCache ---------------------------------------------------------------

def import_allensdk():
    try:
        from allensdk.core.brain_observatory_cache import BrainObservatoryCache
    except ImportError as exc:
        raise ExportError(f"{ALLEN_ENV_HELP} ({exc})") from None
    try:
        from allensdk.brain_observatory.brain_observatory_exceptions import NoEyeTrackingException
    except ImportError:
        NoEyeTrackingException = LookupError  # noqa: N806 (older allensdk; KeyError-like absence)
    return BrainObservatoryCache, NoEyeTrackingException


def table_rows(stimulus: str, table) -> list[dict]:
    """Rows of one allensdk stimulus table (a DataFrame with start/end imaging frames and feature
    columns) in the columns rtcalm's Allen reader uses: stimulus, start_frame, end_frame, features;
    drifting-grating orientation is the direction of motion and is also given as direction_deg."""
    columns = [str(c) for c in table.columns]
    if "start" not in columns or "end" not in columns:
        raise ExportError(f"stimulus table {stimulus} has no start/end columns (has {columns})")
    data = {c: table[c].to_numpy() for c in columns}
    rows = []
    for k in range(len(table)):
        row = {"stimulus": stimulus, "start_frame": int(data["start"][k]), "end_frame": int(data["end"][k])}
        for c in columns:
            if c not in ("start", "end"):
                row[c] = float(data[c][k])
        if stimulus == "drifting_gratings" and "orientation" in row:
            row["direction_deg"] = row["orientation"]
        rows.append(row)
    return rows


def trials_from_rows(rows: list[dict], timestamps: np.ndarray, n_frames: int, where: str) -> dict | None:
    if not rows:
        return None
    for row in rows:
        if not (0 <= row["start_frame"] < n_frames and 0 <= row["end_frame"] < n_frames):
            raise ExportError(f"{where}: stimulus table {row['stimulus']} refers to frames outside the recording")
    rows = sorted(rows, key=lambda r: r["start_frame"])
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        if name == "stimulus":
            columns[name] = np.array([row[name] for row in rows])
        else:
            columns[name] = np.array([row.get(name, np.nan) for row in rows], dtype=np.float64)
    columns["onset_s"] = timestamps[columns["start_frame"].astype(np.int64)]
    return columns


def session_from_allensdk(data_set, experiment_id: int, no_eye_tracking) -> AllenSession:
    """One experiment through allensdk's BrainObservatoryNwbDataSet API."""
    where = f"experiment {experiment_id}"
    timestamps, traces = data_set.get_dff_traces()
    timestamps = np.asarray(timestamps, dtype=np.float64)
    traces = np.asarray(traces)
    if traces.ndim != 2 or traces.shape[1] != timestamps.shape[0]:
        raise ExportError(f"{where}: ΔF/F of shape {traces.shape} does not match {timestamps.shape[0]} timestamps")
    dff = traces.astype(np.float32).T  # allensdk: cells x time
    metadata = data_set.get_metadata()
    stimuli = sorted(data_set.list_stimuli())
    rows = []
    for stimulus in stimuli:
        rows += table_rows(stimulus, data_set.get_stimulus_table(stimulus))
    trials = trials_from_rows(rows, timestamps, dff.shape[0], where)
    labels = {}
    speed, speed_times = data_set.get_running_speed()
    running = on_imaging_frames(speed, speed_times, timestamps, outside="edge")
    if running is not None:
        labels["running_speed"] = running
    try:
        pupil_times, pupil_area = data_set.get_pupil_size()
    except no_eye_tracking:
        pupil_times = pupil_area = None
    if pupil_area is not None:
        pupil = on_imaging_frames(pupil_area, pupil_times, timestamps, outside="nan")
        if pupil is not None:
            labels["pupil_area"] = pupil
    genotype = metadata.get("genotype")
    depth = metadata.get("imaging_depth_um")
    extra = {key: str(metadata[key]) for key in ("session_type", "genotype", "sex", "age_days", "specimen_name")
             if metadata.get(key) is not None}
    extra["exported_from"] = f"allensdk BrainObservatoryCache ophys experiment {experiment_id}"
    container = metadata.get("experiment_container_id")
    meta = {
        "source": f"allensdk BrainObservatoryCache ophys experiment {experiment_id}", "format": "allen-nwb",
        "mouse": str(container) if container is not None else None,
        "session": str(metadata.get("ophys_experiment_id") or experiment_id),
        "cre_line": cre_line_from_genotype(genotype), "area": metadata.get("targeted_structure"),
        "depth_um": float(depth) if depth is not None else None, "indicator": metadata.get("indicator"),
        "stimulus": ",".join(sorted(set(trials["stimulus"].tolist()))) if trials is not None else None,
        "extra": extra,
    }
    templates = {name: (lambda name=name: data_set.get_stimulus_template(name))
                 for name in stimuli if name.startswith("natural_movie")}
    return AllenSession(experiment_id=str(experiment_id), dff=dff, rate_hz=rate_from_timestamps(timestamps, where),
                        cell_ids=np.asarray(data_set.get_cell_specimen_ids()).astype(np.int64), meta=meta,
                        timestamps_s=timestamps, labels=labels, trials=trials, templates=templates)


def allensdk_experiment_ids(cache, args) -> list[int]:
    if args.all:
        found = cache.get_ophys_experiments(cre_lines=args.cre_lines, targeted_structures=args.areas,
                                            session_types=args.session_types)
        return sorted(int(e["id"]) for e in found)
    ids = list(args.experiments or [])
    if args.experiment_list:
        path = Path(args.experiment_list)
        if not path.is_file():
            raise ExportError(f"{path}: experiment list not found")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#")[0].strip()
            if line:
                if not line.isdigit():
                    raise ExportError(f"{path}:{number}: expected an ophys experiment id, got {line!r}")
                ids.append(int(line))
    return list(dict.fromkeys(ids))


# --- driver -------------------------------------------------------------------------------------------------

def export_sessions(sources, out: Path, overwrite: bool, log) -> tuple[list[Path], list[tuple[str, str]]]:
    """``sources``: (name, existing output path or None, zero-argument session loader) triples. Returns
    (recordings written or already present, failures as (name, message))."""
    written, failures = [], []
    for name, known_path, load in sources:
        if known_path is not None and known_path.exists() and not overwrite:
            log(f"{name}: {known_path} exists, skipped (--overwrite to redo)")
            written.append(known_path)
            continue
        try:
            session = load()
            path = out / "recordings" / f"{session.experiment_id}.rtcalm.h5"
            if path.exists() and not overwrite:
                log(f"{name}: {path} exists, skipped (--overwrite to redo)")
                written.append(path)
                continue
            write_native(session, path)
            for stimulus, load_template in session.templates.items():
                write_template(stimulus, load_template, out / "templates", log)
            log(f"{name}: wrote {path} ({session.dff.shape[1]} cells x {session.dff.shape[0]} frames, "
                f"labels {sorted(session.labels) or 'none'}, templates {sorted(session.templates) or 'none'})")
            written.append(path)
        except RtcalmError as exc:
            failures.append((name, str(exc)))
            log(f"{name}: FAILED: {exc}")
    return written, failures


def store_builder(store: Path):
    """SessionStore.build, checked before any export starts: it needs rtcalm's environment (the
    predictability statistics use numba), which the allensdk environment is not."""
    try:
        from rtcalm.data import read_native
        from rtcalm.data.store import SessionStore
    except ImportError as exc:
        raise ExportError(f"building a store needs rtcalm's environment ({exc}); export first, then run with "
                          f"rtcalm's Python: python tools/allen_export.py --native OUT/recordings/*.rtcalm.h5 "
                          f"--store {store}") from None
    if (store / "manifest.json").exists():
        raise ExportError(f"{store}: already holds a store; choose another --store folder")
    return lambda recordings: SessionStore.build((read_native(p) for p in recordings), store)


def build_store(build, recordings: list[Path], store: Path, log) -> None:
    built = build(recordings)
    log(f"store {store}: {len(built)} sessions of {len(built.mice())} mice")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/allen_export.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--nwb", nargs="+", metavar="FILE", help="Allen Visual Coding NWB files (no allensdk needed)")
    source.add_argument("--allensdk", action="store_true", help="download with allensdk's BrainObservatoryCache")
    source.add_argument("--native", nargs="+", metavar="FILE",
                        help="recordings exported earlier (.rtcalm.h5): only build --store from them")
    parser.add_argument("--out", help="export folder (recordings/, templates/); needed with --nwb and --allensdk")
    parser.add_argument("--store", help="also build a SessionStore here from the exported recordings (rtcalm's "
                                        "environment)")
    parser.add_argument("--overwrite", action="store_true", help="re-export experiments whose recording exists")
    sdk = parser.add_argument_group("--allensdk")
    sdk.add_argument("--manifest", help="BrainObservatoryCache manifest file (the download cache lives beside it)")
    sdk.add_argument("--experiments", nargs="+", type=int, metavar="ID", help="ophys experiment ids")
    sdk.add_argument("--experiment-list", metavar="FILE", help="a file of ophys experiment ids, one per line")
    sdk.add_argument("--all", action="store_true", help="every experiment passing the filters below")
    sdk.add_argument("--cre-lines", nargs="+", help="with --all: e.g. Cux2-CreERT2 Sst-IRES-Cre")
    sdk.add_argument("--areas", nargs="+", help="with --all: targeted structures, e.g. VISp VISl")
    sdk.add_argument("--session-types", nargs="+", help="with --all: e.g. three_session_A")
    return parser


def main(argv: list[str] | None = None, log=print) -> int:
    args = build_parser().parse_args(argv)
    try:
        failures = run(args, log)
    except RtcalmError as exc:
        print(f"allen_export: error: {exc}", file=sys.stderr)
        return 2
    if failures:
        print(f"allen_export: error: {len(failures)} experiment(s) failed: "
              + "; ".join(f"{name}: {message}" for name, message in failures), file=sys.stderr)
        return 2
    return 0


def run(args, log) -> list[tuple[str, str]]:
    sdk_only = [flag for flag, value in (("--manifest", args.manifest), ("--experiments", args.experiments),
                                         ("--experiment-list", args.experiment_list), ("--all", args.all),
                                         ("--cre-lines", args.cre_lines), ("--areas", args.areas),
                                         ("--session-types", args.session_types)) if value]
    if not args.allensdk and sdk_only:
        raise ExportError(f"{', '.join(sdk_only)} only apply with --allensdk")
    if args.native:
        if not args.store:
            raise ExportError("--native only builds a store: give --store")
        paths = [Path(p) for p in args.native]
        for path in paths:
            if not path.is_file():
                raise ExportError(f"{path}: file not found")
        build_store(store_builder(Path(args.store)), paths, Path(args.store), log)
        return []
    if not args.out:
        raise ExportError("give --out (the export folder)")
    build = store_builder(Path(args.store)) if args.store else None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if args.nwb:
        paths = [Path(p) for p in args.nwb]
        for path in paths:
            if not path.is_file():
                raise ExportError(f"{path}: file not found")
        sources = [(str(p), None, lambda p=p: session_from_nwb(p)) for p in paths]
    else:
        sources = allensdk_sources(args, out)
    written, failures = export_sessions(sources, out, args.overwrite, log)
    if build is not None and written:
        build_store(build, written, Path(args.store), log)
    return failures


def allensdk_sources(args, out: Path) -> list:
    if not args.manifest:
        raise ExportError("--allensdk needs --manifest (where BrainObservatoryCache keeps its downloads)")
    if not (args.experiments or args.experiment_list or args.all):
        raise ExportError("--allensdk needs --experiments ID..., --experiment-list FILE or --all")
    if (args.cre_lines or args.areas or args.session_types) and not args.all:
        raise ExportError("--cre-lines / --areas / --session-types filter --all")
    cache_class, no_eye_tracking = import_allensdk()
    cache = cache_class(manifest_file=str(args.manifest))
    ids = allensdk_experiment_ids(cache, args)
    if not ids:
        raise ExportError("no ophys experiment selected")
    def load(experiment_id: int) -> AllenSession:
        try:
            data_set = cache.get_ophys_experiment_data(experiment_id)
            return session_from_allensdk(data_set, experiment_id, no_eye_tracking)
        except RtcalmError:
            raise
        except Exception as exc:  # download or allensdk failure of one experiment: report it, go on
            raise ExportError(f"experiment {experiment_id}: allensdk failed ({type(exc).__name__}: {exc})") from None

    return [(f"experiment {i}", out / "recordings" / f"{i}.rtcalm.h5", lambda i=i: load(i)) for i in ids]


if __name__ == "__main__":
    sys.exit(main())
