"""Export Allen Brain Observatory (Visual Coding 2P) sessions into rtcalm's native recording format, with
the natural-movie templates, and build a :class:`rtcalm.data.store.SessionStore` for training.

    # NWB files a lab already has (allensdk-free; rtcalm's environment)
    python -m trainer allen-export --nwb FILE.nwb ... --out exports/allen [--store stores/allen]

    # download with allensdk (its own environment, docs/training.md; run from the repository root),
    # then build the store in rtcalm's
    allen-env/bin/python -m trainer allen-export --allensdk --manifest allen_cache/manifest.json \\
        (--experiments ID ... | --experiment-list FILE | --all [--cre-lines ...] [--areas ...]
         [--session-types ...]) --out exports/allen
    python -m trainer allen-export --native exports/allen/recordings/*.rtcalm.h5 --store stores/allen

Written under ``--out``:

    recordings/<ophys_experiment_id>.rtcalm.h5   the native layout (rtcalm.data.native, version 1): ΔF/F
        (frames x cells, float32), cell_specimen_ids, metadata (mouse = experiment container, session =
        ophys experiment, Cre line, area, depth, indicator, session type, genotype), labels running_speed
        (cm/s) and pupil_area (pixels, when the session has eye tracking), the stimulus table of every
        stimulus (one row per presentation: stimulus, start_frame, end_frame, features, onset_s), plus an
        extra float64 dataset /timestamps_s (the imaging frame times; rtcalm's reader ignores it)
    templates/<natural_movie_*>.h5               one uint8 dataset (frames, height, width) named after the
        stimulus, with its sha256; written once and checked against every later session that shows it

Both sources build a :class:`rtcalm.data.Recording` (which validates it) and write it with
:func:`rtcalm.data.save_recording`; the Allen conventions (the stimulus table's rows, the Cre line, running
speed and pupil on the imaging frames) are rtcalm's Allen NWB reader's (:mod:`rtcalm.data.readers`).

allensdk pins numpy < 1.24 and pandas 1.5.3, so the --allensdk path runs in a separate environment in
which rtcalm is not installed: run from the repository root, ``python -m trainer`` finds the ``trainer``
and ``rtcalm`` sources there, and this path imports only numpy, h5py, allensdk and pure-Python parts of
rtcalm (rtcalm.data's readers and writer; never torch, scipy or numba). Building a store needs rtcalm's
environment (predictability statistics). An experiment whose recording already exists is skipped unless
--overwrite; a failed experiment is reported and the others continue (exit status 2 if any failed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtcalm.data.native import save_recording
from rtcalm.data.readers import (
    ALLEN_PIPELINE,
    allen_presentation_rows,
    allen_trial_table,
    cre_line_from_genotype,
    on_imaging_frames,
)
from rtcalm.data.recording import Recording, RecordingMeta, checked_recording
from rtcalm.errors import RtcalmError

DFF_GROUP = f"{ALLEN_PIPELINE}/DfOverF/imaging_plane_1"
PUPIL_GROUP = f"{ALLEN_PIPELINE}/PupilTracking/pupil_size"
TEMPLATES_GROUP = "stimulus/templates"
ALLEN_ENV_HELP = ("allensdk is not installed in this Python. It pins numpy<1.24 and pandas 1.5.3, so give it "
                  "its own environment: python3.11 -m venv allen-env && allen-env/bin/pip install allensdk "
                  "'statsmodels<0.15' 'setuptools<81', then run allen-env/bin/python -m trainer allen-export "
                  "from the repository root (docs/training.md)")


class ExportError(RtcalmError, ValueError):
    pass


@dataclass
class AllenSession:
    """One ophys experiment, ready to write: the recording, its imaging frame times and its natural-movie
    templates (stimulus -> zero-argument loader of the uint8 array)."""

    experiment_id: str
    recording: Recording
    timestamps_s: np.ndarray | None = None  # float64 (frames,)
    templates: dict[str, object] = field(default_factory=dict)


def rate_from_timestamps(timestamps: np.ndarray, where: str) -> float:
    """1 / median frame interval, as rtcalm's Allen reader."""
    steps = np.diff(timestamps)
    if steps.size == 0 or not (np.isfinite(steps).all() and np.median(steps) > 0):
        raise ExportError(f"{where}: imaging timestamps are not increasing")
    return 1.0 / float(np.median(steps))


def safe_name(text: str) -> str:
    """A file-name-safe experiment id (Allen ids are digits; a lab's own files may say anything)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "session"


# --- writing ----------------------------------------------------------------------------------------------

def write_session(session: AllenSession, path: Path) -> Path:
    """The native layout (rtcalm.data.save_recording, atomic) with the timestamps beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"timestamps_s": session.timestamps_s.astype(np.float64)} if session.timestamps_s is not None else {}
    return save_recording(session.recording, path, extra_datasets=extra)


def write_template(name: str, load, templates_dir: Path, log) -> Path:
    """``templates/<name>.h5`` with one uint8 dataset ``name`` (what rtcalm.data.read_movie_template, and so
    ``python -m trainer movie --allen-template``, reads). The same stimulus is shown in many sessions: it is
    written once, and a later session whose template differs (sha256) is an error rather than silently
    mixed."""
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
    timestamps, pupil area and natural-movie templates, which the reader does not keep."""
    import h5py

    from rtcalm.data import load_recording

    recording = load_recording(path)
    if recording.meta.format != "allen-nwb":
        raise ExportError(f"{path}: not an Allen Brain Observatory NWB file (read as {recording.meta.format})")
    experiment_id = safe_name(recording.meta.session or path.name.split(".")[0])
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
    meta = dataclasses.replace(recording.meta, extra={**recording.meta.extra, "exported_from": str(path)})
    recording = dataclasses.replace(recording, meta=meta, continuous_labels=labels)
    return AllenSession(str(experiment_id), recording, timestamps, templates)


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


def table_rows(where: str, stimulus: str, table, n_frames: int) -> list[dict]:
    """The rows of one allensdk stimulus table (a DataFrame with start/end imaging frames and feature
    columns), as rtcalm's Allen reader makes them from the NWB file."""
    columns = [str(c) for c in table.columns]
    if "start" not in columns or "end" not in columns:
        raise ExportError(f"{where}: stimulus table {stimulus} has no start/end columns (has {columns})")
    features = [c for c in columns if c not in ("start", "end")]
    frames = np.stack([table["start"].to_numpy(), table["end"].to_numpy()], axis=1).astype(np.int64)
    data = np.stack([table[c].to_numpy(dtype=np.float64) for c in features], axis=1) if features else \
        np.empty((len(table), 0))
    return allen_presentation_rows(where, stimulus, frames, data, features, n_frames)


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
        rows += table_rows(where, stimulus, data_set.get_stimulus_table(stimulus), dff.shape[0])
    trials = allen_trial_table(rows, timestamps)
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
    meta = RecordingMeta(
        source=f"allensdk BrainObservatoryCache ophys experiment {experiment_id}", format="allen-nwb",
        mouse=str(container) if container is not None else None,
        session=str(metadata.get("ophys_experiment_id") or experiment_id),
        cre_line=cre_line_from_genotype(genotype), area=metadata.get("targeted_structure"),
        depth_um=float(depth) if depth is not None else None, indicator=metadata.get("indicator"),
        stimulus=",".join(sorted(set(trials["stimulus"].tolist()))) if trials is not None else None,
        extra=extra,
    )
    recording = checked_recording(where, dff=dff, rate_hz=rate_from_timestamps(timestamps, where),
                                  neuron_ids=np.asarray(data_set.get_cell_specimen_ids()), meta=meta,
                                  continuous_labels=labels, trials=trials)
    templates = {name: (lambda name=name: data_set.get_stimulus_template(name))
                 for name in stimuli if name.startswith("natural_movie")}
    return AllenSession(str(experiment_id), recording, timestamps, templates)


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
            write_session(session, path)
            for stimulus, load_template in session.templates.items():
                write_template(stimulus, load_template, out / "templates", log)
            recording = session.recording
            log(f"{name}: wrote {path} ({recording.n_neurons} cells x {recording.n_frames} frames, "
                f"labels {sorted(recording.continuous_labels) or 'none'}, "
                f"templates {sorted(session.templates) or 'none'})")
            written.append(path)
        except RtcalmError as exc:
            failures.append((name, str(exc)))
            log(f"{name}: FAILED: {exc}")
    return written, failures


def store_builder(store: Path):
    """SessionStore.build, checked before any export starts: it needs rtcalm's environment (the
    predictability statistics use numba), which the allensdk environment is not."""
    try:
        import numba  # noqa: F401  (what the allensdk environment lacks)

        from rtcalm.data import read_native
        from rtcalm.data.store import SessionStore
    except ImportError as exc:
        raise ExportError(f"building a store needs rtcalm's environment ({exc}); export first, then run with "
                          f"rtcalm's Python: python -m trainer allen-export --native OUT/recordings/*.rtcalm.h5 "
                          f"--store {store}") from None
    if (store / "manifest.json").exists():
        raise ExportError(f"{store}: already holds a store; choose another --store folder")
    return lambda recordings: SessionStore.build((read_native(p) for p in recordings), store)


def build_store(build, recordings: list[Path], store: Path, log) -> None:
    built = build(recordings)
    log(f"store {store}: {len(built)} sessions of {len(built.mice())} mice")


def run(args, log=print) -> None:
    """``python -m trainer allen-export`` (trainer/__main__.py parses the arguments). Raises ExportError
    naming every failed experiment, after exporting the others."""
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
        return
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
    if failures:
        raise ExportError(f"{len(failures)} experiment(s) failed: "
                          + "; ".join(f"{name}: {message}" for name, message in failures))
