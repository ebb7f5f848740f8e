"""Restricted unpicklers for the few third-party pickles we read.

Plain ``pickle.load`` on a third-party file can execute arbitrary code: a pickle names globals
(``module.name``) and calls them. The unpicklers below resolve only the globals on an allow-list, each a
constructor of plain data, and refuse every other one, so a crafted file can at most fail to load.

- :func:`restricted_loads`: neurod-io's ``metadata.txt``, a Python-2 protocol-0 pickle of a dict of
  strings, numbers, numpy scalars and a ``datetime``.
- :func:`load_npy_without_code`: a ``.npy`` file holding a pickled object array, as suite2p writes
  ``ops.npy`` (a dict in a 0-d array) and ``stat.npy`` (one dict per ROI) with
  ``np.save(allow_pickle=True)``. The header is parsed by numpy; the pickle after it goes through an
  unpickler that additionally allows numpy arrays, sets, complex numbers and paths.
"""

from __future__ import annotations

import datetime
import io
import pathlib
import pickle
from pathlib import Path

import numpy as np


def _numpy_core(submodule: str, name: str):
    # numpy 2 moved numpy.core to numpy._core; pickles written by either version name their own.
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except ImportError:  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


def _both_numpy_spellings(submodule: str, name: str) -> dict:
    return {(f"numpy.core.{submodule}", name): lambda: _numpy_core(submodule, name),
            (f"numpy._core.{submodule}", name): lambda: _numpy_core(submodule, name)}


# (module, name) -> a function returning the object to use. Every entry builds plain data from plain
# arguments; none can reach the file system, the network or the interpreter.
METADATA_GLOBALS = {
    **_both_numpy_spellings("multiarray", "scalar"),
    ("numpy", "dtype"): lambda: np.dtype,
    ("datetime", "datetime"): lambda: datetime.datetime,
}

ARRAY_GLOBALS = {
    **METADATA_GLOBALS,
    # ndarray.__reduce__ (pickle protocols 2-4) and its protocol-5 form
    **_both_numpy_spellings("multiarray", "_reconstruct"),
    **_both_numpy_spellings("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("datetime", "date"): lambda: datetime.date,
    ("datetime", "timedelta"): lambda: datetime.timedelta,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "complex"): lambda: complex,
    # Paths come back as pure paths, which never touch the file system (a WindowsPath could not even be
    # built here). pathlib._local is where Python 3.13 defines them.
    **{(module, name): (lambda pure=pure: pure)
       for module in ("pathlib", "pathlib._local")
       for name, pure in (("PosixPath", pathlib.PurePosixPath), ("PurePosixPath", pathlib.PurePosixPath),
                          ("WindowsPath", pathlib.PureWindowsPath), ("PureWindowsPath", pathlib.PureWindowsPath))},
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (as opposed to being truncated or corrupt)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``allowed`` (default: :data:`METADATA_GLOBALS`)."""

    def __init__(self, file, *, allowed: dict = METADATA_GLOBALS, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]()
        raise RefusedGlobal(f"refused to load global {module}.{name} (not on the allow-list)")


def restricted_loads(data: bytes):
    """Unpickle ``data`` allowing only numpy scalars/dtypes and datetimes (latin1 for Python-2 str)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_npy_without_code(path: Path) -> np.ndarray:
    """Read a ``.npy`` file; an object array is unpickled with :data:`ARRAY_GLOBALS` only.

    Raises ``ValueError`` for a file that is not a version 1/2 ``.npy`` file or whose pickle is not an
    array of the header's shape, and :class:`RefusedGlobal` for a global outside the allow-list (other unpickling errors for a truncated or
    corrupt pickle). A plain
    (non-object) array is read by numpy with ``allow_pickle=False``."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        # np.save writes an object array as one pickle of the whole array right after the header.
        array = RestrictedUnpickler(fh, allowed=ARRAY_GLOBALS, encoding="latin1").load()
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"the pickle after the header is not an array of shape {shape}")
    return array


def looks_like_pickle(head: bytes) -> bool:
    """True for the usual starts of a pickle stream: a protocol 2+ header, or a protocol-0/1 dict,
    list, tuple or global opcode at offset 0."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5):
        return True
    return head[:2] in (b"(d", b"(l", b"(t", b"}q", b"]q") or head[:1] == b"c" and b"\n" in head[:80]
