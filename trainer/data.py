"""Training data: recordings from the config's globs, normalised per neuron, split by mouse, and the
samplers that draw token windows (stage 1) and time x neuron crops (stage 2) from them.

Sessions come from a folder of recordings (loaded into memory) or from a ``SessionStore``
(``rtcalm.data.store``), whose training sessions are memory-mapped and z-scored on read. The samplers
take either and draw the whole global batch of a step with the data generator, reading only the rows
this process trains on (``rows``), so every process of a torchrun job makes the same draws.

Normalisation: each neuron is z-scored with the mean and std of its whole recording. The daemon uses
running statistics instead (``rtcalm.stats``); over a recording of minutes the two agree closely, and the
evaluation protocol (``rtcalm.eval.forecast``) normalises with past-only statistics, so any optimism from
this choice is confined to training.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtcalm.data import Recording, load_recording
from rtcalm.data.store import MANIFEST, SessionStore, WindowIndex
from rtcalm.errors import RtcalmError
from trainer.config import DataConfig, TrainConfig


class TrainDataError(RtcalmError, ValueError):
    pass


@dataclass
class Session:
    """One recording ready for training."""

    source: str  # path relative to the data root
    mouse: str
    recording: Recording  # as loaded (or resampled), ΔF/F
    epochs: list[torch.Tensor]  # contiguous pieces, each (T, N) z-scored float32

    @property
    def n_neurons(self) -> int:
        return self.recording.n_neurons

    @property
    def scale(self) -> torch.Tensor:
        """(N,) float32: the ΔF/F standard deviation each neuron's z-scores were divided by."""
        return torch.from_numpy(neuron_scale(self.recording).astype(np.float32))

    def raw_epochs(self) -> list[np.ndarray]:
        """The ΔF/F epochs before normalisation (for the curriculum's statistics)."""
        return self.recording.epochs()


def neuron_scale(recording: Recording) -> np.ndarray:
    """(N,) float64: the standard deviation :func:`zscore_recording` divides each neuron by."""
    std = recording.dff.reshape(-1, recording.n_neurons).astype(np.float64).std(axis=0)
    return np.where(std > 1e-6, std, 1.0)  # a constant neuron stays at 0 instead of dividing by ~0


def zscore_recording(recording: Recording) -> list[torch.Tensor]:
    mean = recording.dff.reshape(-1, recording.n_neurons).astype(np.float64).mean(axis=0)
    std = neuron_scale(recording)
    return [torch.from_numpy(((epoch - mean) / std).astype(np.float32)) for epoch in recording.epochs()]


def matching_files(root: Path, patterns: list[str]) -> list[Path]:
    """Files under ``root`` matched by the config's globs, in order, each once; a pattern that matches
    nothing is an error (a typo would otherwise silently train on less data)."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))
        if not matches:
            raise TrainDataError(f"{root / pattern}: the pattern matches no file")
        paths += [p for p in matches if p not in paths]
    return paths


def load_sessions(data_root, config: DataConfig, log=print) -> tuple[list[Session], list[tuple[str, str]]]:
    """All recordings matched by ``config.files`` under ``data_root``. Returns (sessions, skipped) where
    skipped lists (file, reason) for recordings that cannot be used."""
    root = Path(data_root)
    if not root.is_dir():
        raise TrainDataError(f"{root}: data root is not a directory (set --data-root)")
    paths = matching_files(root, config.files)
    sessions, skipped = [], []
    for path in paths:
        rel = str(path.relative_to(root))
        recording = load_recording(path)
        if abs(recording.rate_hz - config.rate_hz) > config.rate_tolerance * config.rate_hz:
            if not config.resample_other_rates:
                skipped.append((rel, f"{recording.rate_hz:g} Hz, model rate {config.rate_hz:g} Hz"))
                continue
            from rtcalm.data.resample import resample_recording

            recording = resample_recording(recording, config.rate_hz)
        if recording.is_trial_structured and recording.frames_per_trial < config.min_epoch_frames:
            skipped.append((rel, f"epochs of {recording.frames_per_trial} frames < min_epoch_frames "
                                 f"{config.min_epoch_frames}"))
            continue
        if recording.n_frames < config.min_epoch_frames:
            skipped.append((rel, f"{recording.n_frames} frames < min_epoch_frames {config.min_epoch_frames}"))
            continue
        mouse = recording.meta.mouse or f"file:{rel}"  # unknown mouse: its own group, never merged
        sessions.append(Session(source=rel, mouse=mouse, recording=recording, epochs=zscore_recording(recording)))
    for rel, reason in skipped:
        log(f"skipped {rel}: {reason}")
    if not sessions:
        raise TrainDataError("no usable recording (all skipped: " + "; ".join(f"{f}: {r}" for f, r in skipped) + ")")
    return sessions, skipped


def split_by_mouse(sessions: list[Session], validation_mice: list[str], test_mice: list[str]):
    """(train, validation, test) sessions. Every neuron of a held-out mouse is outside training.
    A listed mouse without any session is an error (a typo would otherwise train on it)."""
    present = {s.mouse for s in sessions}
    for mouse in [*validation_mice, *test_mice]:
        if mouse not in present:
            raise TrainDataError(f"held-out mouse {mouse!r} has no usable recording (mice found: {sorted(present)})")
    validation = [s for s in sessions if s.mouse in set(validation_mice)]
    test = [s for s in sessions if s.mouse in set(test_mice)]
    train = [s for s in sessions if s.mouse not in set(validation_mice) | set(test_mice)]
    if not train:
        raise TrainDataError("every mouse is held out: nothing left to train on")
    return train, validation, test


# --- memory-mapped store sessions ---------------------------------------------------------------------

class MappedEpoch:
    """One epoch of a memory-mapped store session, z-scored on read: only the sampled windows are paged
    in. ``(x - mean) / std`` in float64, then float32, element by element, gives bit-identical values to
    :func:`zscore_recording` on the whole recording."""

    def __init__(self, values: np.ndarray, mean: np.ndarray, std: np.ndarray):
        self.values, self.mean, self.std = values, mean, std
        self.shape = tuple(values.shape)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def windows(self, starts: torch.Tensor, neurons: torch.Tensor, width: int) -> torch.Tensor:
        frames = starts.numpy()[:, None] + np.arange(width)[None, :]
        columns = neurons.numpy()[:, None]
        raw = self.values[frames, columns]
        return torch.from_numpy(((raw - self.mean[columns]) / self.std[columns]).astype(np.float32))

    def crops(self, starts: list[int], frames: int, neurons: torch.Tensor) -> torch.Tensor:
        columns = neurons.numpy()
        raw = np.stack([self.values[s:s + frames][:, columns] for s in starts])
        return torch.from_numpy(((raw - self.mean[columns]) / self.std[columns]).astype(np.float32))


class TensorEpoch:
    """An epoch already z-scored in memory (a :class:`Session` epoch), read like a :class:`MappedEpoch`."""

    def __init__(self, values: torch.Tensor):
        self.values = values
        self.shape = tuple(values.shape)

    def windows(self, starts: torch.Tensor, neurons: torch.Tensor, width: int) -> torch.Tensor:
        return self.values[starts[:, None] + torch.arange(width)[None, :], neurons[:, None]]

    def crops(self, starts: list[int], frames: int, neurons: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.values[s:s + frames, neurons] for s in starts])


@dataclass
class MappedSession:
    """A training session read from a memory-mapped store: what the samplers and the curriculum need of
    a :class:`Session` (source, mouse, n_neurons, epochs, scale, raw_epochs), without the recording."""

    source: str
    mouse: str
    n_neurons: int
    epochs: list[MappedEpoch]
    session_id: str

    @property
    def scale(self) -> torch.Tensor:
        return torch.from_numpy(self.epochs[0].std.astype(np.float32))

    def raw_epochs(self) -> list[np.ndarray]:
        return [epoch.values for epoch in self.epochs]


def epoch_sources(session) -> list:
    """A session's epochs as samplable sources (in-memory tensors wrapped, mapped epochs as they are)."""
    return [epoch if isinstance(epoch, MappedEpoch) else TensorEpoch(epoch) for epoch in session.epochs]


def is_store(data_root) -> bool:
    return (Path(data_root) / MANIFEST).is_file()


@dataclass
class StoreSelection:
    """A store session chosen by the config's globs (before loading anything)."""

    source: str  # path relative to the store root
    mouse: str
    entry: dict


def select_store_sessions(root: Path, config: DataConfig) -> tuple[list[StoreSelection], list[tuple[str, str]]]:
    """The config's globs over a store, with :func:`load_sessions`'s order and filters, from the
    manifest alone."""
    if config.resample_other_rates:
        raise TrainDataError("data.resample_other_rates needs whole recordings in memory; a memory-mapped store "
                             f"({root}) must already hold every session at {config.rate_hz:g} Hz (resample before "
                             "building it)")
    store = SessionStore(root)
    by_path = {entry["path"]: entry for entry in store.sessions}
    chosen, skipped = [], []
    for path in matching_files(root, config.files):
        rel = path.relative_to(root).as_posix()
        entry = by_path.get(rel)
        if entry is None:
            raise TrainDataError(f"{path}: not a session of the store at {root} (the manifest does not list it); "
                                 "point the config's files at sessions/*.rtcalm.h5 or rebuild the store")
        rate = float(entry["rate_hz"])
        if abs(rate - config.rate_hz) > config.rate_tolerance * config.rate_hz:
            skipped.append((rel, f"{rate:g} Hz, model rate {config.rate_hz:g} Hz"))
            continue
        frames_per_epoch = int(entry["frames"])
        n_frames = frames_per_epoch * (int(entry["trials"]) if entry["trial_structured"] else 1)
        if entry["trial_structured"] and frames_per_epoch < config.min_epoch_frames:
            skipped.append((rel, f"epochs of {frames_per_epoch} frames < min_epoch_frames {config.min_epoch_frames}"))
            continue
        if n_frames < config.min_epoch_frames:
            skipped.append((rel, f"{n_frames} frames < min_epoch_frames {config.min_epoch_frames}"))
            continue
        chosen.append(StoreSelection(source=rel, mouse=str(entry["mouse"]), entry=entry))
    if not chosen:
        raise TrainDataError("no usable recording (all skipped: " + "; ".join(f"{f}: {r}" for f, r in skipped) + ")")
    return chosen, skipped


def map_training_sessions(runtime, root: Path, selections: list[StoreSelection]) -> list[MappedSession]:
    """Memory-map the training sessions and compute each neuron's mean and std exactly as
    :func:`zscore_recording` does. Processes share the work (``runtime``: a trainer.distributed.Runtime):
    rank ``i % world_size`` computes session i, and one all-reduce of a buffer that is zero elsewhere
    hands everyone every result."""
    store = SessionStore(root)
    maps = [store.dff(s.entry["id"]) for s in selections]
    sizes = [m.shape[-1] for m in maps]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    moments = torch.zeros(2, int(offsets[-1]), dtype=torch.float64)
    for index, mapped in enumerate(maps):
        if index % runtime.world_size != runtime.rank:
            continue
        dff = np.asarray(mapped).reshape(-1, sizes[index]).astype(np.float64)
        mean, std = dff.mean(axis=0), dff.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)  # as neuron_scale: a constant neuron stays at 0
        moments[0, offsets[index]:offsets[index + 1]] = torch.from_numpy(mean)
        moments[1, offsets[index]:offsets[index + 1]] = torch.from_numpy(std)
        del dff
    moments = runtime.all_reduce_sum(moments.to(runtime.device)).cpu().numpy()
    sessions = []
    for index, (selection, mapped) in enumerate(zip(selections, maps, strict=True)):
        mean, std = moments[0, offsets[index]:offsets[index + 1]], moments[1, offsets[index]:offsets[index + 1]]
        epochs = [mapped] if mapped.ndim == 2 else [mapped[k] for k in range(mapped.shape[0])]
        sessions.append(MappedSession(source=selection.source, mouse=selection.mouse, n_neurons=sizes[index],
                                      epochs=[MappedEpoch(e, mean, std) for e in epochs],
                                      session_id=selection.entry["id"]))
    return sessions


def load_held_out(root: Path, selections: list[StoreSelection]) -> list[Session]:
    store = SessionStore(root)
    sessions = []
    for selection in selections:
        recording = store.load(selection.entry["id"])
        sessions.append(Session(source=selection.source, mouse=selection.mouse, recording=recording,
                                epochs=zscore_recording(recording)))
    return sessions


# The final report's pooled AR baseline on a memory-mapped store is fitted on a bounded sample of the
# training sessions (fit_pooled_ar builds the whole lag matrix in memory before subsampling).
POOLED_AR_SESSIONS, POOLED_AR_FRAMES, POOLED_AR_NEURONS = 16, 4000, 64


@dataclass
class TrainingData:
    train: list  # Session (in memory) or MappedSession
    validation: list[Session]  # from a store: loaded on rank 0 only (empty elsewhere)
    test: list[Session]  # from a store: loaded on rank 0 only (empty elsewhere)
    skipped: list[tuple[str, str]]
    longest_validation_epoch: int  # known on every rank (to fail alike everywhere)
    pooled_ar_traces: list[np.ndarray] | None = None  # None: the final report uses every training recording


def prepare_data(runtime, data_root, config: TrainConfig, log) -> TrainingData:
    """The run's sessions: a folder of recordings is loaded into memory; a SessionStore's training
    sessions are memory-mapped and its held-out sessions loaded on rank 0 only (the only one that
    validates)."""
    root = Path(data_root)
    if not root.is_dir():
        raise TrainDataError(f"{root}: data root is not a directory (set --data-root)")
    if not is_store(root):
        sessions, skipped = load_sessions(root, config.data, log=log)
        train, validation, test = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
        longest = max((e.shape[0] for s in validation for e in s.epochs), default=0)
        return TrainingData(train, validation, test, skipped, longest)
    selections, skipped = select_store_sessions(root, config.data)
    for rel, reason in skipped:
        log(f"skipped {rel}: {reason}")
    train_sel, validation_sel, test_sel = split_by_mouse(selections, config.data.validation_mice, config.data.test_mice)
    longest = max((int(s.entry["frames"]) for s in validation_sel), default=0)
    train = map_training_sessions(runtime, root, train_sel)
    log(f"memory-mapped {len(train)} training sessions of the store at {root}")
    validation = load_held_out(root, validation_sel) if runtime.is_main else []
    test = load_held_out(root, test_sel) if runtime.is_main else []
    pooled = None
    if runtime.is_main:
        picks = np.unique(np.linspace(0, len(train) - 1, num=min(POOLED_AR_SESSIONS, len(train))).round().astype(int))
        pooled = [np.array(train[i].epochs[0].values[:POOLED_AR_FRAMES, :POOLED_AR_NEURONS]) for i in picks]
    return TrainingData(train, validation, test, skipped, longest, pooled_ar_traces=pooled)


# --- stage 1: token windows ----------------------------------------------------------------------------

class TokenWindowSampler:
    """Random (window of W frames, one neuron) samples, uniformly over all such windows of the sessions:
    every (epoch, start, neuron) is one window of a :class:`rtcalm.data.store.WindowIndex`."""

    def __init__(self, sessions, window_frames: int):
        self.window = window_frames
        self.epochs = [e for s in sessions for e in epoch_sources(s) if e.shape[0] >= window_frames]
        self.index = WindowIndex([(e.shape[0] - window_frames + 1) * e.shape[1] for e in self.epochs])
        if self.index.n_windows == 0:
            raise TrainDataError(f"no epoch has {window_frames} frames for the tokenizer")

    def sample(self, n: int, generator: torch.Generator, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(len(rows), W) clean normalised windows, oldest first: rows ``rows`` (default all) of the n
        windows drawn. The draws do not depend on ``rows``, and only those rows are read."""
        flat = torch.randint(0, self.index.n_windows, (n,), generator=generator)
        if rows is not None:
            flat = flat[rows]
        epoch_of, offset = self.index.locate(flat.numpy())
        out = torch.empty(len(flat), self.window)
        for index in np.unique(epoch_of).tolist():
            picked = np.flatnonzero(epoch_of == index)
            epoch = self.epochs[index]
            start, neuron = np.divmod(offset[picked], epoch.shape[1])
            out[picked] = epoch.windows(torch.from_numpy(start), torch.from_numpy(neuron), self.window)
        return out


def interleave(values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """(n, W) values and (n, W) 0/1 missing flags -> (n, 2W) tokenizer input [v0, m0, v1, m1, ...],
    with missing values zeroed exactly as the model does."""
    return torch.stack([values * (1 - missing), missing], dim=-1).reshape(values.shape[0], -1)


def missing_frames(n: int, window: int, generator: torch.Generator, missing_probability: float,
                   stream_start_probability: float) -> torch.Tensor:
    """The tokenizer's missing-frame augmentation for n windows, (n, W) 0/1: scattered missing frames,
    and with some probability a stream start (the first k frames do not exist yet)."""
    missing = (torch.rand(n, window, generator=generator) < missing_probability).float()
    starts = torch.rand(n, generator=generator) < stream_start_probability
    if window > 1 and bool(starts.any()):
        k = torch.randint(1, window, (n,), generator=generator)
        before = torch.arange(window)[None, :] < k[:, None]
        missing = torch.where(starts[:, None] & before, 1.0, missing)
    return missing


# --- stage 2: crops ----------------------------------------------------------------------------------

class CropSampler:
    """Random crops of ``crop_frames`` consecutive frames x (a random subset of at most ``max_neurons``)
    neurons, all crops of a batch from one epoch so that they share N. ``neurons`` (one index array per
    session) restricts the neurons a session's crops may use (the curriculum's phases, trainer.curriculum);
    sessions left with none are skipped."""

    def __init__(self, sessions, crop_frames: int, max_neurons: int, neurons: list[np.ndarray] | None = None):
        self.crop_frames, self.max_neurons = crop_frames, max_neurons
        # (epoch source, usable neuron indices, the session's per-neuron scale (N,))
        self.epochs: list[tuple] = []
        for i, session in enumerate(sessions):
            usable = torch.arange(session.n_neurons) if neurons is None else torch.as_tensor(neurons[i], dtype=torch.long)
            long_enough = [e for e in epoch_sources(session) if e.shape[0] >= crop_frames]
            if usable.numel() and long_enough:
                scale = session.scale
                self.epochs += [(e, usable, scale) for e in long_enough]
        if not self.epochs:
            raise TrainDataError(f"no training epoch has {crop_frames} frames (context + horizon) and usable neurons")
        counts = torch.tensor([(e.shape[0] - crop_frames + 1) * min(len(usable), max_neurons)
                               for e, usable, _ in self.epochs], dtype=torch.float64)
        self.weights = counts / counts.sum()

    def sample(self, batch: int, generator: torch.Generator,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops (len(rows), crop_frames, n), scale (n,)) with n = min(usable neurons, max_neurons): rows
        ``rows`` (default all) of the batch drawn, and the ΔF/F scale of the crop's neurons. The draws do
        not depend on ``rows``, and only those crops are read."""
        epoch, usable, scale = self.epochs[int(torch.multinomial(self.weights, 1, generator=generator))]
        neurons = usable[torch.randperm(len(usable), generator=generator)[:self.max_neurons]]
        starts = torch.randint(0, epoch.shape[0] - self.crop_frames + 1, (batch,), generator=generator)
        if rows is not None:
            starts = starts[rows]
        return epoch.crops(starts.tolist(), self.crop_frames, neurons), scale[neurons]


def fixed_crops(sessions: list[Session], crop_frames: int, per_epoch: int) -> list[torch.Tensor]:
    """A deterministic validation set: ``per_epoch`` evenly spaced crops (all neurons) of every epoch
    long enough, one tensor (k, crop_frames, N) per epoch."""
    out = []
    for session in sessions:
        for epoch in session.epochs:
            T = epoch.shape[0]
            if T < crop_frames:
                continue
            starts = np.linspace(0, T - crop_frames, num=min(per_epoch, T - crop_frames + 1)).round().astype(int)
            out.append(torch.stack([epoch[s:s + crop_frames] for s in np.unique(starts)]))
    return out
