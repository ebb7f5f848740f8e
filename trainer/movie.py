"""Train and evaluate the movie decoder (POYO-CAP's skip-connection U-Net) from population activity.

    python -m trainer movie --synthetic [--seed S] [--out DIR]
    python -m trainer movie --allen-recording SESSION.nwb --allen-template natural_movie_one.h5 [--out DIR]

Data, through rtcalm.data: a :class:`~rtcalm.data.Recording` and the movie it watched. The recording's
stimulus table (``Recording.trials``) says which movie frame was on screen when, in the Allen layout: one
row per presented movie frame with ``stimulus`` (default ``natural_movie_one``), the movie frame index
``frame`` and the imaging frame ``start_frame`` in which it appeared. An Allen session is read with
:func:`rtcalm.data.load_recording` (its NWB reader builds that table) and the movie template with
:func:`rtcalm.data.read_movie_template` (the ``(900, 304, 608)`` uint8 array of allensdk's
``get_stimulus_template("natural_movie_one")``, as ``.npy`` or inside an ``.h5`` file, e.g. written by
``python -m trainer allen-export``); frames are converted to [0, 1] and resized to the model resolution by
area averaging. The simulated visual cortex (``rtcalm.sim.visual_cortex``) watching its procedural movie
gets the same table, one row per imaging frame (:func:`synthetic_movie`).

Samples. A sample pairs one movie frame with a window of ``window`` imaging frames of ΔF/F that ends
``lag`` imaging frames after the frame in which that movie frame was shown (calcium responses peak a
few frames after the stimulus), i.e. neural frames ``[t + lag - window + 1, t + lag]`` decode the movie
frame shown at ``t``. Online this is a decoder with a latency of ``lag`` frames.

Split (temporally non-overlapping, with a gap): samples are ordered by the end of their neural window;
the last ``held_out_fraction`` of them are held out, and every training window ends at least
``gap_s`` seconds before the first held-out window begins, so no imaging frame, and no calcium
transient still decaying from a training stimulus, is shared. Normalisation statistics and the
mean-frame baseline come from the training part only. Allen's movie repeats (10 times in session A), so
held-out samples show frames seen in training, as in POYO-CAP's evaluation, unlike the synthetic movie,
which never repeats.

Training: AdamW (:meth:`MovieDecodingModel.configure_optimizers`) with linear warm-up over the first
``warmup_fraction`` of the steps, then cosine decay to ``min_lr``, in the trainer's one training loop
(:class:`trainer.loop.TrainingLoop`; one step is :func:`trainer.steps.movie_step`).

Metric: mean SSIM (``rtcalm.model.movie_decoder.ssim``) over the held-out samples, for the model and
for the mean-frame baseline (the mean training target frame, predicted for every sample).

Outputs in ``--out``: the model as a checkpoint directory ``movie_decoder/`` (``config.json`` +
``model.safetensors``, :func:`rtcalm.model.save_checkpoint`; read it back with
:func:`rtcalm.model.movie_decoder.load_movie_decoder`), ``metrics.json``, ``steps.csv`` and the figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtcalm.data import Recording, TrialTable
from rtcalm.errors import RtcalmError
from rtcalm.model import save_checkpoint
from rtcalm.model.movie_decoder import (
    ActivityWindowEncoderConfig,
    MovieDecoderConfig,
    MovieDecodingModel,
    MovieLoss,
    MovieLossConfig,
    SkipUNetDecoderConfig,
    ssim,
)
from trainer.distributed import Precision, Runtime, Sharding
from trainer.loop import StepLog, TrainingLoop, lr_at
from trainer.steps import movie_step

SYNTHETIC_STIMULUS = "synthetic_movie"
CHECKPOINT_DIR = "movie_decoder"


class MovieDataError(RtcalmError, ValueError):
    """Bad input to the movie trainer: a recording, stimulus table or setting that cannot be used."""


@dataclass
class MovieTrainConfig:
    window: int = 8  # imaging frames of ΔF/F per sample
    lag: int = 4  # the window ends this many imaging frames after the decoded movie frame
    held_out_fraction: float = 0.2
    gap_s: float = 2.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 0.0  # the cosine decay's end
    warmup_fraction: float = 0.1  # linear warm-up over this fraction of the steps
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    eval_every: int = 500  # log the held-out SSIM (never used to select or stop)
    encoder: dict = field(default_factory=dict)  # overrides for ActivityWindowEncoderConfig
    decoder: dict = field(default_factory=dict)  # overrides for SkipUNetDecoderConfig
    loss: dict = field(default_factory=dict)  # overrides for MovieLossConfig

    def validate(self) -> None:
        if self.window < 1 or self.lag < 0 or self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise MovieDataError("need window >= 1, lag >= 0, steps >= 1, batch_size >= 1 and eval_every >= 1")
        if not 0 < self.held_out_fraction < 1:
            raise MovieDataError("held_out_fraction must be in (0, 1)")
        if not 0 <= self.warmup_fraction < 1:
            raise MovieDataError("warmup_fraction must be in [0, 1)")
        if self.gap_s < 0 or not self.lr > 0 or not 0 <= self.min_lr <= self.lr or self.weight_decay < 0:
            raise MovieDataError("need gap_s >= 0, lr > 0, 0 <= min_lr <= lr and weight_decay >= 0")


# --- data: a Recording and its movie -------------------------------------------------------------------


def synthetic_movie(seed: int = 0, **overrides) -> tuple[Recording, np.ndarray]:
    """The simulated visual cortex (``rtcalm.sim.visual_cortex``) watching its procedural movie: the
    recording, with a stimulus table of one ``SYNTHETIC_STIMULUS`` row per imaging frame (frame t of the
    movie is shown during imaging frame t), and the movie ``(frames, H, W)`` in [0, 1]."""
    from rtcalm.sim.visual_cortex import make_visual_cortex

    recording, movie = make_visual_cortex(seed=seed, **overrides)
    t = np.arange(movie.shape[0], dtype=np.float64)
    table = TrialTable({"onset_s": t / recording.rate_hz, "stimulus": np.full(t.size, SYNTHETIC_STIMULUS),
                        "start_frame": t, "end_frame": t + 1, "frame": t})
    meta = dataclasses.replace(recording.meta, source=f"synthetic visual cortex, seed {seed}",
                               stimulus=SYNTHETIC_STIMULUS)
    return dataclasses.replace(recording, trials=table, meta=meta), movie


def presentations(recording: Recording, n_movie_frames: int, stimulus: str) -> tuple[np.ndarray, np.ndarray]:
    """(imaging frame, movie frame) of every presentation of ``stimulus`` in the recording's stimulus
    table (see the module docstring), ordered by imaging frame; rows of other stimuli are ignored."""
    where = recording.meta.source or "recording"
    if recording.is_trial_structured:
        raise MovieDataError(f"{where}: needs a contiguous recording, not a trial-structured one")
    trials = recording.trials
    if trials is None:
        raise MovieDataError(f"{where}: has no stimulus table")
    missing = [name for name in ("start_frame", "frame") if name not in trials]
    if missing:
        raise MovieDataError(f"{where}: stimulus table lacks column(s) {', '.join(missing)} "
                             f"(has: {', '.join(trials.names)})")
    rows = np.ones(len(trials), dtype=bool)
    if "stimulus" in trials:
        rows = np.asarray(trials["stimulus"]).astype(str) == stimulus
    frame = np.asarray(trials["frame"], dtype=np.float64)[rows]
    start = np.asarray(trials["start_frame"], dtype=np.float64)[rows]
    keep = np.isfinite(frame) & np.isfinite(start)
    frame, start = frame[keep], start[keep]
    if frame.size == 0:
        raise MovieDataError(f"{where}: no {stimulus} presentations with a movie frame index")
    if np.any(frame != np.round(frame)) or frame.min() < 0 or frame.max() >= n_movie_frames:
        raise MovieDataError(f"{where}: movie frame indices must be integers in [0, {n_movie_frames}) "
                             f"(the template has {n_movie_frames} frames), got [{frame.min():g}, {frame.max():g}]")
    if np.any(start != np.round(start)) or start.min() < 0 or start.max() >= recording.n_frames:
        raise MovieDataError(f"{where}: start_frame values must be imaging frames in [0, {recording.n_frames})")
    order = np.argsort(start, kind="stable")
    return start[order].astype(np.int64), frame[order].astype(np.int64)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(F, h, w)`` -> ``(F, height, width)`` float32 by area averaging (anti-aliased when shrinking)."""
    tensor = torch.as_tensor(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
    mode = "area" if height <= frames.shape[1] and width <= frames.shape[2] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(tensor, size=(height, width), mode=mode, **kwargs)[:, 0].clamp(0, 1).numpy()


def split_samples(neural_frame: np.ndarray, n_frames: int, window: int, lag: int, held_out_fraction: float,
                  gap_frames: int, where: str = "recording") -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices; see the module docstring. Samples whose window would leave the
    recording (``n_frames`` imaging frames) are dropped."""
    end = neural_frame + lag
    start = end - window + 1
    valid = np.flatnonzero((start >= 0) & (end < n_frames))
    if valid.size < 2:
        raise MovieDataError(f"{where}: fewer than 2 samples have a full {window}-frame window")
    boundary = np.sort(end[valid])[int(np.floor((1 - held_out_fraction) * valid.size))]
    held_out = valid[start[valid] >= boundary]
    train = valid[end[valid] < boundary - gap_frames]
    if train.size == 0 or held_out.size == 0:
        raise MovieDataError(f"{where}: the split leaves {train.size} training and {held_out.size} "
                             "held-out samples; use a longer recording or a smaller gap")
    return train, held_out


def windows_ending_at(dff: torch.Tensor, ends: torch.Tensor, window: int) -> torch.Tensor:
    """``dff[end - window + 1 : end + 1]`` for every end: ``(B, window, N)``."""
    index = torch.as_tensor(ends)[:, None] - torch.arange(window - 1, -1, -1)[None, :]
    return dff[index]


# --- training ------------------------------------------------------------------------------------------


def build_model(n_neurons: int, height: int, width: int, cfg: MovieTrainConfig) -> MovieDecodingModel:
    try:
        encoder = ActivityWindowEncoderConfig(n_neurons=n_neurons, window=cfg.window, **cfg.encoder)
        decoder = SkipUNetDecoderConfig(height=height, width=width, embed_dim=encoder.embed_dim, **cfg.decoder)
        return MovieDecodingModel.from_config(MovieDecoderConfig(encoder, decoder))
    except (TypeError, ValueError) as exc:
        raise MovieDataError(f"bad model settings: {exc}") from None


@torch.no_grad()
def predict(model: MovieDecodingModel, dff: torch.Tensor, ends: np.ndarray, window: int,
            batch_size: int = 256) -> torch.Tensor:
    """Decoded frames ``(samples, H, W)`` for the windows ending at ``ends`` (eval mode; the model's
    mode is restored)."""
    was_training = model.training
    model.eval()
    ends = torch.as_tensor(ends)
    out = [model(windows_ending_at(dff, ends[i:i + batch_size], window)) for i in range(0, len(ends), batch_size)]
    model.train(was_training)
    return torch.cat(out)[:, 0]


def _log(message: str) -> None:
    print(message, flush=True)


def train_movie_decoder(recording: Recording, frames: np.ndarray, cfg: MovieTrainConfig | None = None,
                        stimulus: str = "natural_movie_one", log=_log, out_dir: Path | None = None) -> dict:
    """Train on the early part of ``recording`` watching ``frames`` (``(movie frames, H, W)`` in [0, 1],
    at the model's resolution), evaluate on the held-out later part. With ``out_dir``, the loop writes
    ``steps.csv`` there. Returns a dict with the model, the metrics and the held-out frames (true,
    decoded) and the mean frame."""
    cfg = cfg or MovieTrainConfig()
    cfg.validate()
    where = recording.meta.source or "recording"
    neural_frame, movie_frame = presentations(recording, frames.shape[0], stimulus)
    gap_frames = int(round(cfg.gap_s * recording.rate_hz))
    train, held_out = split_samples(neural_frame, recording.n_frames, cfg.window, cfg.lag, cfg.held_out_fraction,
                                    gap_frames, where)
    ends = torch.as_tensor(neural_frame + cfg.lag)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # the batches' draws

    height, width = frames.shape[1:]
    dff = torch.as_tensor(recording.dff)
    frames = torch.as_tensor(frames)
    train_neural = dff[: int(ends[train].max()) + 1]  # statistics from the training span only
    mean_frame = frames[movie_frame[train]].mean(dim=0)  # (H, W)
    model = build_model(recording.n_neurons, height, width, cfg)
    model.encoder.set_normalization(train_neural.mean(dim=0), train_neural.std(dim=0))
    model.decoder.set_frame_prior(mean_frame)
    try:
        loss_fn = MovieLoss(MovieLossConfig(**cfg.loss))
    except (TypeError, ValueError) as exc:
        raise MovieDataError(f"bad loss settings: {exc}") from None
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, cfg.betas)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"data: {where}; {recording.n_neurons} neurons, {height}x{width} frames; "
        f"{train.size} training / {held_out.size} held-out samples (gap {gap_frames} frames)")
    log(f"model: {n_params / 1e6:.2f} M parameters; {cfg.steps} steps of batch {cfg.batch_size}")

    true_held_out = frames[movie_frame[held_out]]  # (K, H, W)
    baseline_ssim = float(ssim(mean_frame.expand_as(true_held_out), true_held_out))
    train_ends, train_frames = ends[train], torch.as_tensor(movie_frame[train])

    def sample(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (b, window, N) ΔF/F windows and their (b, 1, H, W) movie frames
        return windows_ending_at(dff, train_ends[indices], cfg.window), frames[train_frames[indices]][:, None]

    runtime = Runtime()  # one CPU process, one micro-batch per step, fp32
    sharding, precision = Sharding(runtime, 1), Precision("fp32", runtime.device)
    history: list[float] = []
    started = time.perf_counter()

    def step() -> dict:
        parts = movie_step(sharding, precision, model, loss_fn, optimizer, sample, train.size, cfg.batch_size,
                           generator)
        history.append(parts["loss"])
        return parts

    def validate(parts: dict) -> dict:
        held_out_ssim = float(ssim(predict(model, dff, ends[held_out], cfg.window), true_held_out))
        log(f"step {len(history):5d}  loss {np.mean(history[-cfg.eval_every:]):.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "loss")
            + f"  held-out SSIM {held_out_ssim:.4f}  ({time.perf_counter() - started:.0f} s)")
        return {"loss": f"{parts['loss']:.4f}", "held_out_ssim": f"{held_out_ssim:.4f}"}

    step_log = StepLog(Path(out_dir) / "steps.csv", enabled=True) if out_dir is not None else None
    warmup = int(round(cfg.warmup_fraction * cfg.steps))
    model.train()
    TrainingLoop(runtime, cfg.seed, step_log).run(
        "movie", {"step": 0}, optimizer, step, total=cfg.steps,
        lr=lambda s: lr_at(s, cfg.steps, cfg.lr, warmup, cfg.min_lr), samples_per_step=cfg.batch_size,
        validate=validate, validate_every=cfg.eval_every)
    train_seconds = time.perf_counter() - started
    decoded = predict(model, dff, ends[held_out], cfg.window)
    model.eval()
    metrics = {
        "heldout_ssim_model": float(ssim(decoded, true_held_out)),
        "heldout_ssim_mean_frame": baseline_ssim,
        "heldout_l1_model": float((decoded - true_held_out).abs().mean()),
        "heldout_l1_mean_frame": float((mean_frame - true_held_out).abs().mean()),
        "n_train": int(train.size),
        "n_heldout": int(held_out.size),
        "train_seconds": round(train_seconds, 1),
        "first_loss": history[0],
        "final_loss": float(np.mean(history[-max(1, len(history) // 10):])),  # mean of the last 10 % of steps
    }
    return {"model": model, "metrics": metrics, "true": true_held_out.numpy(), "decoded": decoded.numpy(),
            "mean_frame": mean_frame.numpy(), "held_out": held_out,
            "held_out_time_s": neural_frame[held_out] / recording.rate_hz}


# --- figure --------------------------------------------------------------------------------------------


def save_figure(result: dict, path, n_examples: int = 8, title: str = "") -> None:
    """True vs decoded held-out frames (evenly spaced through the held-out part) and the mean frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, decoded, mean_frame = result["true"], result["decoded"], result["mean_frame"]
    picks = np.linspace(0, len(true) - 1, n_examples).round().astype(int)
    true_picked = torch.as_tensor(true[picks])
    per_frame = ssim(torch.as_tensor(decoded[picks]), true_picked, reduction="none").numpy()
    per_frame_mean = ssim(torch.as_tensor(mean_frame).expand_as(true_picked), true_picked, reduction="none").numpy()
    fig, axes = plt.subplots(3, n_examples, figsize=(1.9 * n_examples, 3.9), squeeze=False)
    for col, k in enumerate(picks):
        for row, (image, label) in enumerate([(true[k], "true"), (decoded[k], "decoded"), (mean_frame, "mean frame")]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
        axes[0, col].set_title(f"t = {result['held_out_time_s'][k]:.1f} s", fontsize=8)
        axes[1, col].set_title(f"SSIM {per_frame[col]:.2f}", fontsize=8)
        axes[2, col].set_title(f"SSIM {per_frame_mean[col]:.2f}", fontsize=8)
    m = result["metrics"]
    fig.suptitle(title or f"mean SSIM over {m['n_heldout']} held-out frames: decoder {m['heldout_ssim_model']:.3f}, "
                          f"mean-frame baseline {m['heldout_ssim_mean_frame']:.3f}  (examples evenly spaced in time)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ---------------------------------------------------------------------------------------


def run(args, command: str = "") -> dict:
    """``python -m trainer movie`` (trainer/__main__.py parses the arguments)."""
    from rtcalm.data import load_recording, read_movie_template

    defaults = MovieTrainConfig()
    cfg = MovieTrainConfig(**{name: getattr(args, name) if getattr(args, name) is not None else getattr(defaults, name)
                              for name in ("steps", "batch_size", "window", "lag")},
                           seed=args.seed)
    cfg = dataclasses.replace(cfg, eval_every=max(1, min(500, cfg.steps)))
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.synthetic:
        recording, frames = synthetic_movie(args.seed, n_neurons=args.neurons, n_frames=args.frames,
                                            height=args.height, width=args.width)
        stimulus = SYNTHETIC_STIMULUS
    else:
        if not args.allen_template:
            raise MovieDataError("--allen-recording needs --allen-template")
        recording = load_recording(args.allen_recording)
        frames = resize_frames(read_movie_template(args.allen_template, args.template_key), args.height, args.width)
        stimulus = args.stimulus
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = train_movie_decoder(recording, frames, cfg, stimulus, out_dir=out)
    figure = Path(args.figure) if args.figure else out / "movie_decoding.png"
    save_figure(result, figure)
    source = recording.meta.source + ("" if args.synthetic else f" ({stimulus})")
    save_checkpoint(result["model"], out / CHECKPOINT_DIR,
                    metadata={"train": asdict(cfg), "metrics": result["metrics"], "source": source})
    metrics = {**result["metrics"], "total_seconds": round(time.perf_counter() - started, 1),
               "source": source, "command": command}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    m = result["metrics"]
    print(f"held-out SSIM: decoder {m['heldout_ssim_model']:.4f}  vs  mean-frame baseline "
          f"{m['heldout_ssim_mean_frame']:.4f}  ({m['n_heldout']} held-out frames)")
    print(f"wrote {figure}, {out / CHECKPOINT_DIR}, {out / 'metrics.json'} "
          f"(total {metrics['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":  # the command moved into the trainer's command line
    raise SystemExit("trainer.movie: error: run it as python -m trainer movie (python -m trainer movie --help)")
