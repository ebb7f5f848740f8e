"""A dataset store for many sessions, read without loading everything into RAM.

Layout of a store directory::

    manifest.json           {"format": "rtcalm-store", "version": 1, "sessions": [...]}
    sessions/<id>.rtcalm.h5 one native recording per session, written uncompressed and contiguous

Each manifest entry holds the session's metadata (mouse, session, Cre line, area, depth, rate, neuron
and frame counts, whether it is trial-structured) and its predictability statistics (per-session
fraction of predictable neurons under POYO-CAP's thresholds and the mean skewness/kurtosis); the
per-neuron statistics are stored in the session file's ``neuron_info`` (``skewness``, ``kurtosis``,
``predictable``).

Because session files are uncompressed with a contiguous ``/dff`` dataset, :meth:`SessionStore.dff`
maps it straight from disk with ``numpy.memmap`` (HDF5 reports the dataset's byte offset): drawing a
window reads only that window's pages, and the operating system, not the process, holds the cache.

Splits by mouse are first-class: :meth:`SessionStore.split_by_mouse` and the ``mice`` filter of
:class:`WindowSampler`. The sampler draws ``(session, start)`` windows uniformly over all valid
windows of the selected sessions and shards them across distributed ranks. Its numbering of the valid
windows, :class:`WindowIndex`, is also what the trainer's token-window sampler draws from
(``trainer.data``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtcalm.data.native import save_recording
from rtcalm.data.recording import Recording
from rtcalm.errors import RecordingError

STORE_FORMAT = "rtcalm-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"


def _session_id(recording: Recording, index: int) -> str:
    base = recording.meta.session or f"session{index}"
    stimulus = recording.meta.stimulus or ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{base}_{stimulus}".strip("_"))


class SessionStore:
    def __init__(self, root):
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise RecordingError(path, "no store manifest here") from None
        except (OSError, ValueError) as exc:
            raise RecordingError(path, f"cannot read store manifest ({exc})") from None
        if document.get("format") != STORE_FORMAT or document.get("version") != STORE_VERSION:
            raise RecordingError(path, f"not an {STORE_FORMAT} v{STORE_VERSION} manifest")
        self.sessions: list[dict] = document["sessions"]
        self._maps: dict[str, np.ndarray] = {}

    # --- building ---
    @classmethod
    def build(cls, recordings, root, thresholds=None) -> SessionStore:
        """Write ``recordings`` (an iterable, consumed one at a time) into a new store at ``root``."""
        from rtcalm.stats import POYO_CAP, is_predictable, stats_of_recording

        thresholds = thresholds or POYO_CAP
        root = Path(root)
        (root / "sessions").mkdir(parents=True, exist_ok=True)
        entries = []
        for index, recording in enumerate(recordings):
            stats = stats_of_recording(recording)
            predictable = is_predictable(stats.skewness, stats.kurtosis, thresholds)
            recording.neuron_info.update(skewness=stats.skewness, kurtosis=stats.kurtosis, predictable=predictable)
            session_id = _session_id(recording, index)
            if any(e["id"] == session_id for e in entries):
                session_id = f"{session_id}_{index}"
            relative = f"sessions/{session_id}.rtcalm.h5"
            save_recording(recording, root / relative, compress=False)
            meta = recording.meta
            entries.append({
                "id": session_id, "path": relative, "source": meta.source, "mouse": meta.mouse or session_id,
                "session": meta.session, "cre_line": meta.cre_line, "area": meta.area, "depth_um": meta.depth_um,
                "rate_hz": recording.rate_hz, "neurons": recording.n_neurons,
                "frames": int(recording.dff.shape[-2]),
                "trials": recording.n_trials, "trial_structured": recording.is_trial_structured,
                "fraction_predictable": float(predictable.mean()),
                "mean_skewness": float(np.nanmean(stats.skewness)), "mean_kurtosis": float(np.nanmean(stats.kurtosis)),
            })
        document = {"format": STORE_FORMAT, "version": STORE_VERSION, "sessions": entries}
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        tmp.replace(root / MANIFEST)
        return cls(root)

    # --- reading ---
    def __len__(self) -> int:
        return len(self.sessions)

    def entry(self, session_id: str) -> dict:
        for entry in self.sessions:
            if entry["id"] == session_id:
                return entry
        raise KeyError(session_id)

    def dff(self, session_id: str) -> np.ndarray:
        """The session's ΔF/F as a read-only memory map, shaped like ``Recording.dff``."""
        if session_id not in self._maps:
            import h5py

            path = self.root / self.entry(session_id)["path"]
            with h5py.File(path, "r") as f:
                dataset = f["dff"]
                offset = dataset.id.get_offset()
                if offset is None or dataset.chunks is not None or dataset.compression is not None:
                    raise RecordingError(path, "store sessions must be contiguous and uncompressed to be mapped")
                shape, dtype = dataset.shape, dataset.dtype
            self._maps[session_id] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        return self._maps[session_id]

    def load(self, session_id: str) -> Recording:
        from rtcalm.data.native import read_native

        return read_native(self.root / self.entry(session_id)["path"])

    def mice(self) -> list[str]:
        return sorted({e["mouse"] for e in self.sessions})

    def split_by_mouse(self, held_out_mice) -> tuple[list[str], list[str]]:
        """(training session ids, held-out session ids); no mouse is in both."""
        held_out = set(held_out_mice)
        unknown = held_out - set(self.mice())
        if unknown:
            raise ValueError(f"mice not in the store: {sorted(unknown)}")
        train = [e["id"] for e in self.sessions if e["mouse"] not in held_out]
        test = [e["id"] for e in self.sessions if e["mouse"] in held_out]
        return train, test


class WindowIndex:
    """Every valid window of a list of sources, numbered 0 .. n_windows - 1 source after source. A flat
    number drawn uniformly and :meth:`locate`-d gives every window the same chance, whatever the sources'
    sizes."""

    def __init__(self, windows_per_source):
        self.windows_per_source = np.asarray(windows_per_source, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.windows_per_source)])

    @property
    def n_windows(self) -> int:
        return int(self.offsets[-1])

    def locate(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat window numbers -> (source index, window number within that source)."""
        source = np.searchsorted(self.offsets, flat, side="right") - 1
        return source, flat - self.offsets[source]


@dataclass
class WindowSampler:
    """Draws windows of ``window_frames`` consecutive frames, uniformly over every valid window start of
    the chosen contiguous sessions (``mice`` / ``session_ids`` filter; trial-structured sessions are
    skipped because their epochs are not contiguous). With ``world_size > 1`` every rank gets a disjoint
    shard of each epoch's draws, so DDP ranks never train on the same window in the same epoch."""

    store: SessionStore
    window_frames: int
    mice: list[str] | None = None
    session_ids: list[str] | None = None
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        chosen = [e for e in self.store.sessions
                  if not e["trial_structured"] and e["frames"] >= self.window_frames
                  and (self.mice is None or e["mouse"] in self.mice)
                  and (self.session_ids is None or e["id"] in self.session_ids)]
        if not chosen:
            raise ValueError("no contiguous session is long enough for the requested windows")
        self.ids = [e["id"] for e in chosen]
        self.index = WindowIndex([e["frames"] - self.window_frames + 1 for e in chosen])

    @property
    def n_windows(self) -> int:
        return self.index.n_windows

    def epoch(self, epoch: int, n_draws: int | None = None):
        """Yield ``(session_id, start, window (window_frames, neurons) float32)`` for this rank."""
        rng = np.random.default_rng([self.seed, epoch])
        n_draws = n_draws or self.n_windows
        flat = rng.integers(0, self.n_windows, size=n_draws)
        sessions, starts = self.index.locate(flat[self.rank::self.world_size])
        for session, start in zip(sessions.tolist(), starts.tolist(), strict=True):
            session_id = self.ids[session]
            window = np.array(self.store.dff(session_id)[start:start + self.window_frames])
            yield session_id, start, window
