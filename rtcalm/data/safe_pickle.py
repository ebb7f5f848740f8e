"""A restricted unpickler for the one third-party pickle we read: neurod-io's ``metadata.txt``.

Plain ``pickle.load`` on a third-party file can execute arbitrary code. These files are Python-2
protocol-0 pickles of a dict holding strings, numbers, numpy scalars and a ``datetime``; the
unpickler below resolves exactly those three globals and refuses every other one, so a crafted file
can at most fail to load.
"""

from __future__ import annotations

import datetime
import io
import pickle

import numpy as np


def _numpy_scalar_constructor():
    # numpy 2 moved numpy.core to numpy._core; both spellings appear in pickles.
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")):
            return _numpy_scalar_constructor()
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("datetime", "datetime"):
            return datetime.datetime
        raise pickle.UnpicklingError(f"refused to load global {module}.{name} (not on the allow-list)")


def restricted_loads(data: bytes):
    """Unpickle ``data`` allowing only numpy scalars/dtypes and datetimes (latin1 for Python-2 str)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def looks_like_pickle(head: bytes) -> bool:
    """True for the usual starts of a pickle stream: a protocol 2+ header, or a protocol-0/1 dict,
    list, tuple or global opcode at offset 0."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5):
        return True
    return head[:2] in (b"(d", b"(l", b"(t", b"}q", b"]q") or head[:1] == b"c" and b"\n" in head[:80]
