"""Training data: recordings from the config's globs, normalised per neuron, split by mouse, and the
samplers that draw token windows (stage 1) and time x neuron crops (stage 2) from them.

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
from rtcalm.errors import RtcalmError
from trainer.config import DataConfig


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


# --- stage 1: token windows ----------------------------------------------------------------------------

class WindowSampler:
    """Random (window of W frames, one neuron) samples, uniformly over all such windows of the sessions."""

    def __init__(self, sessions: list[Session], window_frames: int):
        self.window = window_frames
        self.epochs = [e for s in sessions for e in s.epochs if e.shape[0] >= window_frames]
        counts = torch.tensor([(e.shape[0] - window_frames + 1) * e.shape[1] for e in self.epochs], dtype=torch.float64)
        if counts.sum() == 0:
            raise TrainDataError(f"no epoch has {window_frames} frames for the tokenizer")
        self.weights = counts / counts.sum()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, W) clean normalised windows, oldest first."""
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        out = torch.empty(n, self.window)
        offsets = torch.arange(self.window)
        for index in which.unique().tolist():
            rows = (which == index).nonzero().squeeze(1)
            epoch = self.epochs[index]
            starts = torch.randint(0, epoch.shape[0] - self.window + 1, (rows.numel(),), generator=generator)
            neurons = torch.randint(0, epoch.shape[1], (rows.numel(),), generator=generator)
            out[rows] = epoch[starts[:, None] + offsets[None, :], neurons[:, None]]
        return out


def interleave(values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """(n, W) values and (n, W) 0/1 missing flags -> (n, 2W) tokenizer input [v0, m0, v1, m1, ...],
    with missing values zeroed exactly as the model does."""
    return torch.stack([values * (1 - missing), missing], dim=-1).reshape(values.shape[0], -1)


def tokenizer_batch(values: torch.Tensor, generator: torch.Generator, missing_probability: float,
                    stream_start_probability: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment clean windows (n, W) with missing frames: scattered ones, and with some probability a
    stream start (the first k frames do not exist yet). Returns (encoder input (n, 2W), missing (n, W))."""
    n, W = values.shape
    missing = (torch.rand(n, W, generator=generator) < missing_probability).float()
    starts = torch.rand(n, generator=generator) < stream_start_probability
    if W > 1 and bool(starts.any()):
        k = torch.randint(1, W, (n,), generator=generator)
        before = torch.arange(W)[None, :] < k[:, None]
        missing = torch.where(starts[:, None] & before, 1.0, missing)
    return interleave(values, missing), missing


# --- stage 2: crops ----------------------------------------------------------------------------------

class CropSampler:
    """Random crops of ``crop_frames`` consecutive frames x (a random subset of at most ``max_neurons``)
    neurons, all crops of a batch from one epoch so that they share N. ``neurons`` (one index array per
    session) restricts the neurons a session's crops may use (the curriculum's phases, trainer.curriculum);
    sessions left with none are skipped."""

    def __init__(self, sessions: list[Session], crop_frames: int, max_neurons: int,
                 neurons: list[np.ndarray] | None = None):
        self.crop_frames, self.max_neurons = crop_frames, max_neurons
        # (epoch (T, N), usable neuron indices, the session's per-neuron scale (N,))
        self.epochs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for i, session in enumerate(sessions):
            usable = torch.arange(session.n_neurons) if neurons is None else torch.as_tensor(neurons[i], dtype=torch.long)
            if usable.numel():
                self.epochs += [(e, usable, session.scale) for e in session.epochs if e.shape[0] >= crop_frames]
        if not self.epochs:
            raise TrainDataError(f"no training epoch has {crop_frames} frames (context + horizon) and usable neurons")
        counts = torch.tensor([(e.shape[0] - crop_frames + 1) * min(len(usable), max_neurons)
                               for e, usable, _ in self.epochs], dtype=torch.float64)
        self.weights = counts / counts.sum()

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, crop_frames, n) with n = min(usable neurons, max_neurons)."""
        return self.sample_with_scale(batch, generator)[0]

    def sample_with_scale(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample` and the per-neuron ΔF/F scale (n,) of the crop's neurons."""
        epoch, usable, scale = self.epochs[int(torch.multinomial(self.weights, 1, generator=generator))]
        neurons = usable[torch.randperm(len(usable), generator=generator)[:self.max_neurons]]
        starts = torch.randint(0, epoch.shape[0] - self.crop_frames + 1, (batch,), generator=generator)
        return torch.stack([epoch[s:s + self.crop_frames, neurons] for s in starts.tolist()]), scale[neurons]


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
