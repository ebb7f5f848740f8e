"""rtcalm's own on-disk recording format: one HDF5 file (suffix ``.rtcalm.h5`` by convention).

Layout (version 1)::

    /                       attrs: format="rtcalm-recording", version=1, rate_hz, meta_json
    /dff                    float32, (frames, neurons) or (trials, frames_per_trial, neurons)
    /neuron_ids             int64, (neurons,)
    /trial_time_s           float64, (frames_per_trial,)        trial-structured recordings only
    /labels/<name>          float32, dff.shape[:-1]             continuous labels
    /trials/<column>        one row per trial; strings as UTF-8 variable-length
    /neuron_info/<name>     (neurons, ...)
    /<other>                extra datasets a writer may add (save_recording's extra_datasets); not read

``meta_json`` is the JSON of :class:`~rtcalm.data.recording.RecordingMeta`. Nothing is pickled; the
reader validates everything through the ``Recording`` constructor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rtcalm.data.recording import Recording, RecordingMeta, TrialTable, checked_recording
from rtcalm.errors import RecordingError

FORMAT_NAME = "rtcalm-recording"
FORMAT_VERSION = 1


def save_recording(recording: Recording, path, compress: bool = True,
                   extra_datasets: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``recording`` to ``path`` atomically (a temporary file renamed into place), so a crash
    mid-write never leaves a half-written file under the final name. ``compress=False`` writes ``/dff``
    contiguous and uncompressed, so it can be memory-mapped (see :mod:`rtcalm.data.store`).
    ``extra_datasets``: more root datasets, which :func:`read_native` ignores (the trainer's Allen export
    keeps the imaging timestamps as ``/timestamps_s``)."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["rate_hz"] = recording.rate_hz
        f.attrs["meta_json"] = json.dumps(recording.meta.to_dict())
        if compress:
            f.create_dataset("dff", data=recording.dff, chunks=True, compression="gzip", compression_opts=1)
        else:
            f.create_dataset("dff", data=recording.dff)
        f.create_dataset("neuron_ids", data=recording.neuron_ids)
        if recording.trial_time_s is not None:
            f.create_dataset("trial_time_s", data=recording.trial_time_s)
        labels = f.create_group("labels")
        for name, values in recording.continuous_labels.items():
            labels.create_dataset(name, data=values)
        if recording.trials is not None:
            trials = f.create_group("trials")
            for name, column in recording.trials.columns.items():
                if column.dtype.kind in "US":
                    trials.create_dataset(name, data=column.astype(object), dtype=h5py.string_dtype())
                else:
                    trials.create_dataset(name, data=column)
        info = f.create_group("neuron_info")
        for name, values in recording.neuron_info.items():
            info.create_dataset(name, data=np.asarray(values))
        for name, values in (extra_datasets or {}).items():
            if name in f:
                raise ValueError(f"extra dataset {name!r} would overwrite the recording's own /{name}")
            f.create_dataset(name, data=np.asarray(values))
    tmp.replace(path)
    return path


def read_native(path) -> Recording:
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") not in (FORMAT_NAME, FORMAT_NAME.encode()):
                raise RecordingError(path, "not an rtcalm recording (missing format attribute)")
            version = int(f.attrs.get("version", -1))
            if version != FORMAT_VERSION:
                raise RecordingError(path, f"rtcalm recording version {version} is not supported (expected {FORMAT_VERSION})")
            for key in ("dff", "neuron_ids"):
                if key not in f:
                    raise RecordingError(path, f"missing dataset /{key}")
            meta = RecordingMeta.from_dict(json.loads(f.attrs.get("meta_json", "{}")))
            meta.source = str(path)
            meta.format = "rtcalm-h5"
            kwargs = dict(
                dff=f["dff"][()],
                rate_hz=float(f.attrs["rate_hz"]),
                neuron_ids=f["neuron_ids"][()],
                meta=meta,
                trial_time_s=f["trial_time_s"][()] if "trial_time_s" in f else None,
                continuous_labels={k: v[()] for k, v in f.get("labels", {}).items()},
                neuron_info={k: v[()] for k, v in f.get("neuron_info", {}).items()},
            )
            if "trials" in f:
                columns = {}
                for name, ds in f["trials"].items():
                    values = ds[()]
                    if values.dtype == object:
                        values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
                    columns[name] = values
                kwargs["trials"] = TrialTable(columns)
    except RecordingError:
        raise
    except Exception as exc:
        raise RecordingError(path, f"cannot read rtcalm recording ({type(exc).__name__}: {exc})") from None
    if kwargs["dff"].dtype != np.float32:
        raise RecordingError(path, f"/dff must be float32, got {kwargs['dff'].dtype}")
    return checked_recording(path, **kwargs)
