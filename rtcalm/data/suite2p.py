"""suite2p plane folders: ΔF/F from ``F.npy`` and ``Fneu.npy``, cells from ``iscell.npy``, rate from ``ops.npy``.

A plane folder (``suite2p/plane0``) holds, for ``R`` ROIs and ``T`` frames:

============== =============================================================================
file           what
============== =============================================================================
F.npy          float ``(R, T)``, raw ROI fluorescence
Fneu.npy       float ``(R, T)``, neuropil fluorescence around each ROI
iscell.npy     ``(R, 2)`` [is-cell 0/1, classifier probability], or ``(R,)`` booleans / 0-1 values
ops.npy        pickled dict in a 0-d object array; ``fs`` is the plane's frame rate in Hz
stat.npy       optional, pickled array of one dict per ROI; ``med`` is the ROI's (y, x) centre
============== =============================================================================

``F``, ``Fneu`` and ``iscell`` are read with ``allow_pickle=False``; ``ops`` and ``stat`` go through
:func:`rtcalm.data.safe_pickle.load_npy_without_code`, which refuses every pickle global outside an
allow-list of plain-data constructors, so a crafted file cannot run code.

ΔF/F (:func:`sliding_percentile_dff`), per ROI:

1. neuropil subtraction ``Fc = F - neuropil_coef * Fneu`` (suite2p's coefficient, 0.7 by default);
2. baseline ``F0[t]``: the ``baseline_percentile``-th percentile of ``Fc`` over a window of
   ``baseline_window_s`` seconds centred on frame ``t`` (scipy's ``percentile_filter``: the order statistic
   of rank ``floor(w * p / 100)`` among the ``w`` window frames, no interpolation). The window is an odd
   number of frames, at most the recording's length; at the ends the trace is mirrored
   (``mode="reflect"``) so edge windows hold real samples. A low percentile over a long window tracks
   bleaching and focus drift below the transients; 8th percentile over 60 s are also the streaming
   converter's defaults (:class:`rtcalm.stats.OnlineDff`), which must be causal and smooths by block
   means first, so its ΔF/F of the same traces is close to this one, not equal;
3. ``dff = (Fc - F0) / F0``.

A ROI whose baseline is not positive somewhere (``neuropil_coef * Fneu`` at or above ``F`` over much of a
window, e.g. a dim ROI in bright neuropil) has no meaningful ΔF/F there; it is left out and listed in
``meta.extra["nonpositive_baseline_rois"]``. ``neuron_ids`` are the suite2p ROI indices (rows of ``F.npy``),
so ids stay valid after cells and such ROIs are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtcalm.data.recording import Recording, RecordingMeta, checked_recording
from rtcalm.data.safe_pickle import RefusedGlobal, load_npy_without_code
from rtcalm.errors import RecordingError

REQUIRED_FILES = ("F.npy", "Fneu.npy", "iscell.npy", "ops.npy")
NEUROPIL_COEF = 0.7  # suite2p's default ops["neucoeff"]
BASELINE_WINDOW_S = 60.0
BASELINE_PERCENTILE = 8.0
NPY_MAGIC = b"\x93NUMPY"


def looks_like_suite2p_plane(folder: Path) -> bool:
    """True when ``folder`` holds any of the plane files; the reader then names the missing ones."""
    return any((folder / name).is_file() for name in REQUIRED_FILES)


def suite2p_plane_folders(folder: Path) -> list[Path]:
    """The ``plane<k>`` folders of a suite2p output folder (``suite2p/`` or the folder above it)."""
    roots = [folder, folder / "suite2p"]
    return sorted(p for root in roots if root.is_dir() for p in root.glob("plane*")
                  if p.is_dir() and looks_like_suite2p_plane(p))


def read_suite2p(folder, *, neuropil_coef: float = NEUROPIL_COEF, baseline_window_s: float = BASELINE_WINDOW_S,
                 baseline_percentile: float = BASELINE_PERCENTILE) -> Recording:
    """Read one suite2p plane folder as a contiguous recording of its cells (see the module docstring)."""
    folder = Path(folder)
    _check_dff_parameters(folder, neuropil_coef, baseline_window_s, baseline_percentile)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise RecordingError(folder, f"not a complete suite2p plane folder: missing {', '.join(missing)}")
    f = _fluorescence(folder / "F.npy")
    fneu = _fluorescence(folder / "Fneu.npy")
    if fneu.shape != f.shape:
        raise RecordingError(folder / "Fneu.npy", f"shape {fneu.shape} differs from F.npy's {f.shape}")
    is_cell, cell_probability = _iscell(folder / "iscell.npy", f.shape[0])
    rate_hz = _frame_rate(folder / "ops.npy")
    centroids = _centroids(folder / "stat.npy", f.shape[0]) if (folder / "stat.npy").is_file() else None

    cells = np.flatnonzero(is_cell)
    if cells.size == 0:
        raise RecordingError(folder / "iscell.npy", f"none of the {f.shape[0]} ROIs is classified as a cell")
    dff, baseline_ok = sliding_percentile_dff(f[cells], fneu[cells], rate_hz, neuropil_coef=neuropil_coef,
                                              baseline_window_s=baseline_window_s,
                                              baseline_percentile=baseline_percentile)
    if not baseline_ok.any():
        raise RecordingError(folder, f"every one of the {cells.size} cells has a non-positive baseline somewhere "
                                     f"(F - {neuropil_coef:g} * Fneu); no ΔF/F can be computed")
    kept = cells[baseline_ok]
    meta = RecordingMeta(source=str(folder), format="suite2p", extra={
        "plane": folder.name,
        "rois": str(f.shape[0]),
        "dff": f"(Fc - F0) / F0, Fc = F - {neuropil_coef:g} * Fneu, F0 = {baseline_percentile:g}th percentile "
               f"over a centred {baseline_window_s:g} s window",
    })
    if not baseline_ok.all():
        meta.extra["nonpositive_baseline_rois"] = ",".join(str(i) for i in cells[~baseline_ok])
    neuron_info = {}
    if cell_probability is not None:
        neuron_info["iscell_probability"] = cell_probability[kept].astype(np.float32)
    if centroids is not None:
        neuron_info["centroid_yx_px"] = centroids[kept]
    return checked_recording(folder, dff=dff[:, baseline_ok], rate_hz=rate_hz, neuron_ids=kept, meta=meta,
                             neuron_info=neuron_info)


def sliding_percentile_dff(f: np.ndarray, fneu: np.ndarray, rate_hz: float, *, neuropil_coef: float = NEUROPIL_COEF,
                           baseline_window_s: float = BASELINE_WINDOW_S,
                           baseline_percentile: float = BASELINE_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """ΔF/F of ``f`` and ``fneu`` (ROIs x frames, as suite2p stores them) as float32 ``(frames, ROIs)``,
    and a boolean per ROI: True where its baseline is positive on every frame. Columns of ROIs with a
    False flag are not meaningful. The definition is in the module docstring."""
    n_rois, n_frames = f.shape
    window = baseline_window_frames(baseline_window_s, rate_hz, n_frames)
    dff = np.empty((n_frames, n_rois), dtype=np.float32)
    baseline_ok = np.zeros(n_rois, dtype=bool)
    # One ROI at a time: float64 copies of whole suite2p planes would need gigabytes, and scipy's 1-D
    # rank filter is orders of magnitude faster than the same filter along one axis of a 2-D array.
    for roi in range(n_rois):
        corrected = f[roi].astype(np.float64) - neuropil_coef * fneu[roi].astype(np.float64)
        baseline = sliding_percentile(corrected, window, baseline_percentile)
        baseline_ok[roi] = (baseline > 0).all()
        if baseline_ok[roi]:
            dff[:, roi] = (corrected - baseline) / baseline
        else:
            dff[:, roi] = np.nan
    return dff, baseline_ok


def baseline_window_frames(window_s: float, rate_hz: float, n_frames: int) -> int:
    """The baseline window in frames: odd, so that it is centred, and at most ``n_frames``."""
    frames = min(max(1, round(window_s * rate_hz)), n_frames)
    if frames % 2 == 0:
        frames = frames - 1 if frames == n_frames else frames + 1
    return frames


def sliding_percentile(trace: np.ndarray, window_frames: int, percentile: float) -> np.ndarray:
    """The ``percentile`` of ``trace`` over ``window_frames`` frames centred on each frame (mirrored ends)."""
    from scipy.ndimage import percentile_filter

    return percentile_filter(trace, percentile, size=window_frames, mode="reflect")


# --- the files ---------------------------------------------------------------------------------------

def _check_dff_parameters(folder: Path, neuropil_coef, window_s, percentile) -> None:
    checks = (("neuropil_coef", neuropil_coef, 0.0 <= neuropil_coef),
              ("baseline_window_s", window_s, window_s > 0),
              ("baseline_percentile", percentile, 0.0 <= percentile <= 100.0))
    for name, value, ok in checks:
        if not (np.isfinite(value) and ok):
            raise RecordingError(folder, f"{name}={value} is out of range")


def _plain_array(path: Path) -> np.ndarray:
    # np.load treats any file without the .npy magic as a pickle; check the magic first so that such a
    # file is reported as what it is.
    with open(path, "rb") as fh:
        if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise RecordingError(path, "is not a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise RecordingError(path, "holds an object array, which needs pickle to load and is refused") from None
        raise RecordingError(path, f"cannot read .npy ({exc})") from None
    except (OSError, EOFError) as exc:
        raise RecordingError(path, f"cannot read .npy ({type(exc).__name__}: {exc})") from None


def _fluorescence(path: Path) -> np.ndarray:
    values = _plain_array(path)
    if values.ndim != 2 or values.dtype.kind not in "fiu":
        raise RecordingError(path, f"must be a 2-D numeric array (ROIs x frames), got {values.dtype} {values.shape}")
    if 0 in values.shape:
        raise RecordingError(path, f"is empty (shape {values.shape})")
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise RecordingError(path, f"has {bad} NaN/Inf values")
    return values


def _iscell(path: Path, n_rois: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Cell flags (column 0 > 0.5, as suite2p writes 0/1 there) and the classifier probability (column 1)
    when the file has it."""
    values = _plain_array(path)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n_rois or values.shape[1] not in (1, 2) or values.dtype.kind not in "fiub":
        raise RecordingError(path, f"must be ({n_rois}, 2) or ({n_rois},) numbers or booleans (one row per ROI "
                                   f"of F.npy), got {values.dtype} {values.shape}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise RecordingError(path, f"has {int((~np.isfinite(values)).sum())} NaN/Inf values")
    return values[:, 0] > 0.5, (values[:, 1] if values.shape[1] == 2 else None)


def _pickled_npy(path: Path) -> np.ndarray:
    try:
        return load_npy_without_code(path)
    except RefusedGlobal as exc:
        raise RecordingError(path, f"unsafe pickle refused ({exc})") from None
    except Exception as exc:  # truncated, not .npy, or a pickle that is not the array the header announces
        raise RecordingError(path, f"cannot read ({type(exc).__name__}: {exc})") from None


def _frame_rate(path: Path) -> float:
    ops = _pickled_npy(path)
    ops = ops.item() if ops.dtype.hasobject and ops.shape == () else None
    if not isinstance(ops, dict):
        raise RecordingError(path, "must hold a dict (suite2p's ops) saved with np.save")
    if "fs" not in ops:
        raise RecordingError(path, "has no 'fs' (frame rate per plane, Hz)")
    try:
        rate_hz = float(ops["fs"])
    except (TypeError, ValueError):
        raise RecordingError(path, f"'fs' must be a number, got {ops['fs']!r}") from None
    if not (np.isfinite(rate_hz) and rate_hz > 0):
        raise RecordingError(path, f"'fs' must be a positive frame rate, got {rate_hz}")
    return rate_hz


def _centroids(path: Path, n_rois: int) -> np.ndarray:
    """Each ROI's ``med`` (y, x) in pixels, float32 ``(R, 2)``."""
    stat = _pickled_npy(path)
    if stat.ndim != 1 or stat.shape[0] != n_rois:
        raise RecordingError(path, f"must hold one entry per ROI of F.npy ({n_rois}), got shape {stat.shape}")
    centres = np.empty((n_rois, 2), dtype=np.float32)
    for k, roi in enumerate(stat):
        med = roi.get("med") if isinstance(roi, dict) else None
        try:
            centres[k] = np.asarray(med, dtype=np.float64).reshape(2)
        except (TypeError, ValueError):
            raise RecordingError(path, f"ROI {k} has no 'med' (y, x) centre") from None
    if not np.isfinite(centres).all():
        raise RecordingError(path, "has NaN/Inf ROI centres")
    return centres
