"""CaImAn results saved with ``cnm.save("file.hdf5")`` (CaImAn's ``save_dict_to_hdf5`` layout), read with h5py.

What is read (CaImAn stores traces components x frames; they are transposed to frames x components):

- traces: ``estimates/F_dff`` (ΔF/F from ``cnm.estimates.detrend_df_f``) when the file has it, else
  ``estimates/C`` (denoised calcium traces in the movie's raw units, *not* ΔF/F; ``meta.extra["trace"]``
  says which one was read, and the rest of rtcalm treats it as ΔF/F, so prefer files with ``F_dff``);
- components: those listed in ``estimates/idx_components`` (the ones ``evaluate_components`` accepted)
  when the file lists them, else all; ``neuron_ids`` are the component indices (rows of the traces);
- frame rate: ``params/data/fr``. A file without it is refused unless the caller passes ``rate_hz``;
  CaImAn's own default (30 Hz) is not assumed, because a wrong rate silently rescales every time
  constant the model learned. When the file has a rate, ``rate_hz`` must agree with it.

CaImAn writes ``None`` values as the string ``"NoneType"``; such a dataset counts as absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtcalm.data.recording import Recording, RecordingMeta, checked_recording
from rtcalm.errors import RecordingError

TRACE_KEYS = ("estimates/F_dff", "estimates/C")
ACCEPTED_KEY = "estimates/idx_components"
RATE_KEY = "params/data/fr"


def looks_like_caiman(f) -> bool:
    """True for an open h5py file with CaImAn's top-level ``estimates`` group."""
    import h5py

    return isinstance(f.get("estimates"), h5py.Group)


def read_caiman(path, *, rate_hz: float | None = None) -> Recording:
    """Read a CaImAn HDF5 file (see the module docstring). ``rate_hz`` is needed only when the file has
    no ``params/data/fr``."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            trace_key, traces = _traces(path, f)
            accepted = _accepted_components(path, f, traces.shape[0])
            file_rate = _scalar(path, f, RATE_KEY)
    except RecordingError:
        raise
    except Exception as exc:  # truncated or corrupt HDF5
        raise RecordingError(path, f"cannot read CaImAn file ({type(exc).__name__}: {exc})") from None
    rate = _frame_rate(path, file_rate, rate_hz)
    dff = traces[accepted].T.astype(np.float32)
    bad = int((~np.isfinite(dff)).sum())
    if bad:
        raise RecordingError(path, f"{trace_key} has {bad} NaN/Inf values in the accepted components")
    extra = {"trace": trace_key if trace_key.endswith("F_dff") else f"{trace_key} (raw units, not ΔF/F)",
             "components": str(traces.shape[0])}
    if accepted.size != traces.shape[0]:
        extra["accepted_by"] = ACCEPTED_KEY
    meta = RecordingMeta(source=str(path), format="caiman-hdf5", extra=extra)
    return checked_recording(path, dff=dff, rate_hz=rate, neuron_ids=accepted, meta=meta)


def _dataset(path: Path, f, key: str) -> np.ndarray | None:
    """The dataset at ``key``, or None when it is absent or CaImAn's ``"NoneType"`` placeholder."""
    import h5py

    if key not in f:
        return None
    node = f[key]
    if not isinstance(node, h5py.Dataset):
        raise RecordingError(path, f"{key} is a group, expected a dataset")
    value = np.asarray(node[()])
    if value.dtype.kind in "OSU":
        text = value.reshape(-1)[0] if value.size == 1 else None
        if text in (b"NoneType", "NoneType"):
            return None
        raise RecordingError(path, f"{key} must be numeric, got {value.dtype} {value.shape}")
    return value


def _traces(path: Path, f) -> tuple[str, np.ndarray]:
    for key in TRACE_KEYS:
        values = _dataset(path, f, key)
        if values is None:
            continue
        if values.ndim != 2 or values.dtype.kind not in "fiu" or 0 in values.shape:
            raise RecordingError(path, f"{key} must be a non-empty 2-D numeric array (components x frames), "
                                       f"got {values.dtype} {values.shape}")
        return key, values
    raise RecordingError(path, f"CaImAn file has no traces: neither {' nor '.join(TRACE_KEYS)} holds an array")


def _accepted_components(path: Path, f, n_components: int) -> np.ndarray:
    indices = _dataset(path, f, ACCEPTED_KEY)
    if indices is None:
        return np.arange(n_components)
    indices = indices.reshape(-1)
    if indices.dtype.kind not in "iu":
        raise RecordingError(path, f"{ACCEPTED_KEY} must hold integer component indices, got {indices.dtype}")
    if indices.size == 0:
        raise RecordingError(path, f"{ACCEPTED_KEY} is empty: no component was accepted")
    if indices.min() < 0 or indices.max() >= n_components:
        raise RecordingError(path, f"{ACCEPTED_KEY} has indices outside 0..{n_components - 1}")
    if np.unique(indices).size != indices.size:
        raise RecordingError(path, f"{ACCEPTED_KEY} lists a component twice")
    return np.sort(indices).astype(np.int64)


def _scalar(path: Path, f, key: str) -> float | None:
    value = _dataset(path, f, key)
    if value is None:
        return None
    if value.size != 1 or value.dtype.kind not in "fiu":
        raise RecordingError(path, f"{key} must be one number, got {value.dtype} {value.shape}")
    return float(value.reshape(-1)[0])


def _frame_rate(path: Path, file_rate: float | None, rate_hz: float | None) -> float:
    if file_rate is not None and not (np.isfinite(file_rate) and file_rate > 0):
        raise RecordingError(path, f"{RATE_KEY} must be a positive frame rate, got {file_rate}")
    if rate_hz is not None and not (np.isfinite(rate_hz) and rate_hz > 0):
        raise RecordingError(path, f"rate_hz must be a positive frame rate, got {rate_hz}")
    if file_rate is None and rate_hz is None:
        raise RecordingError(path, f"no frame rate in the file ({RATE_KEY}); read it with "
                                   "rtcalm.data.read_caiman(path, rate_hz=...)")
    if file_rate is not None and rate_hz is not None and not np.isclose(file_rate, rate_hz, rtol=1e-6, atol=0):
        raise RecordingError(path, f"rate_hz={rate_hz:g} contradicts the file's {RATE_KEY}={file_rate:g}")
    return file_rate if file_rate is not None else float(rate_hz)
