"""Train and evaluate the movie decoder (POYO-CAP's skip-connection U-Net) from population activity.

Usage::

    python -m trainer.movie --synthetic [--seed S] [--out DIR]
    python -m trainer.movie --allen-recording SESSION.nwb --allen-template natural_movie_one.npy [--out DIR]

Samples. A sample pairs one movie frame with a window of ``window`` imaging frames of ΔF/F that ends
``lag`` imaging frames after the frame in which that movie frame was shown (calcium responses peak a
few frames after the stimulus), i.e. neural frames ``[t + lag - window + 1, t + lag]`` decode the movie
frame shown at ``t``. Online this is a decoder with a latency of ``lag`` frames.

Split (temporally non-overlapping, with a gap): samples are ordered by the end of their neural window;
the last ``held_out_fraction`` of them are held out, and every training window ends at least
``gap_s`` seconds before the first held-out window begins, so no imaging frame, and no calcium
transient still decaying from a training stimulus, is shared. Normalisation statistics and the
mean-frame baseline come from the training part only.

Metric: mean SSIM (``rtcalm.model.movie_decoder.ssim``) over the held-out samples, for the model and
for the mean-frame baseline (the mean training target frame, predicted for every sample).

Allen Brain Observatory ``natural_movie_one``: the stimulus table (``Recording.trials``, as the Allen NWB
reader builds it) has one row per presented movie frame with ``stimulus == "natural_movie_one"``, the
movie frame index ``frame`` (0-899) and the imaging frame ``start_frame`` in which it appeared; the
template is the ``(900, 304, 608)`` uint8 array from allensdk's
``get_stimulus_template("natural_movie_one")``, saved by the lab as ``.npy`` or inside an ``.h5`` file.
Frames are converted to [0, 1], resized to the model resolution by area averaging, and paired with the
neural frames as above. The movie repeats (10 times in session A), so held-out samples show frames seen
in training, as in POYO-CAP's evaluation, unlike the synthetic movie, which never repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtcalm.data.recording import Recording
from rtcalm.errors import RtcalmError
from rtcalm.model.movie_decoder import (
    ActivityWindowEncoder,
    ActivityWindowEncoderConfig,
    MovieDecodingModel,
    MovieLoss,
    MovieLossConfig,
    SkipUNetDecoder,
    SkipUNetDecoderConfig,
    ssim,
)


class MovieDataError(RtcalmError, ValueError):
    """Bad input to the movie trainer: a template, recording or option that cannot be used."""


# --- data --------------------------------------------------------------------------------------------


@dataclass
class AlignedMovieData:
    """ΔF/F and movie frames paired sample by sample.

    ``dff``: (imaging frames, neurons) float32. ``frames``: (movie frames, H, W) float32 in [0, 1].
    Sample k decodes ``frames[movie_frame[k]]`` shown during imaging frame ``neural_frame[k]``."""

    dff: np.ndarray
    frames: np.ndarray
    neural_frame: np.ndarray  # (samples,) int64
    movie_frame: np.ndarray  # (samples,) int64
    rate_hz: float
    source: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.neural_frame.shape[0])


def synthetic_movie_data(seed: int = 0, **overrides) -> AlignedMovieData:
    """The simulated visual cortex (``rtcalm.sim.visual_cortex``) watching its procedural movie."""
    from rtcalm.sim.visual_cortex import make_visual_cortex

    recording, movie = make_visual_cortex(seed=seed, **overrides)
    index = np.arange(movie.shape[0], dtype=np.int64)
    return AlignedMovieData(recording.dff, movie, index, index.copy(), recording.rate_hz,
                            source=f"synthetic visual cortex, seed {seed}")


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(F, h, w)`` -> ``(F, height, width)`` float32 by area averaging (anti-aliased when shrinking)."""
    tensor = torch.as_tensor(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
    mode = "area" if height <= frames.shape[1] and width <= frames.shape[2] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(tensor, size=(height, width), mode=mode, **kwargs)[:, 0].clamp(0, 1).numpy()


def load_template(path, key: str | None = None) -> np.ndarray:
    """A movie template ``(frames, H, W)`` from ``.npy`` or HDF5 (``.h5``/``.hdf5``; dataset ``key``, or
    the only dataset / one named ``natural_movie_one`` / ``data``). uint8 is scaled by 1/255; floats must
    already be in [0, 1]. Returns float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise MovieDataError(f"{path}: template file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                names: list[str] = []
                f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
                if key is None:
                    preferred = [n for n in names if n.split("/")[-1] in ("natural_movie_one", "data")]
                    if len(names) == 1:
                        key = names[0]
                    elif len(preferred) == 1:
                        key = preferred[0]
                    else:
                        raise MovieDataError(f"{path}: several datasets ({', '.join(names) or 'none'}); "
                                             "name one with --template-key")
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise MovieDataError(f"{path}: no dataset {key!r} (datasets: {', '.join(names) or 'none'})")
                array = f[key][()]
        else:
            raise MovieDataError(f"{path}: template must be .npy, .h5 or .hdf5, not {suffix or 'no suffix'!r}")
    except MovieDataError:
        raise
    except (OSError, ValueError) as exc:
        raise MovieDataError(f"{path}: cannot read template: {exc}") from None
    return _checked_template(array, path)


def _checked_template(array, path="template") -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 1:
        raise MovieDataError(f"{path}: template must be (frames, height, width) grayscale, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise MovieDataError(f"{path}: template must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise MovieDataError(f"{path}: template has NaN/Inf values")
    if array.min() < 0 or array.max() > 1:
        raise MovieDataError(f"{path}: template values must be uint8 or floats in [0, 1], "
                             f"got range [{array.min():g}, {array.max():g}]")
    return array


def allen_movie_data(recording: Recording, template: np.ndarray, height: int = 32, width: int = 64,
                     stimulus: str = "natural_movie_one") -> AlignedMovieData:
    """Pair an Allen recording's ``stimulus`` presentations with frames of ``template`` (see the module
    docstring), resized to ``height x width``."""
    where = recording.meta.source or "recording"
    template = _checked_template(template, "template")
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
    if np.any(frame != np.round(frame)) or frame.min() < 0 or frame.max() >= template.shape[0]:
        raise MovieDataError(f"{where}: movie frame indices must be integers in [0, {template.shape[0]}) "
                             f"(the template has {template.shape[0]} frames), got [{frame.min():g}, {frame.max():g}]")
    if np.any(start != np.round(start)) or start.min() < 0 or start.max() >= recording.n_frames:
        raise MovieDataError(f"{where}: start_frame values must be imaging frames in [0, {recording.n_frames})")
    order = np.argsort(start, kind="stable")
    return AlignedMovieData(recording.dff, resize_frames(template, height, width),
                            start[order].astype(np.int64), frame[order].astype(np.int64), recording.rate_hz,
                            source=f"{where} ({stimulus})")


# --- training ----------------------------------------------------------------------------------------


@dataclass
class MovieTrainConfig:
    window: int = 8  # imaging frames of ΔF/F per sample
    lag: int = 4  # the window ends this many imaging frames after the decoded movie frame
    held_out_fraction: float = 0.2
    gap_s: float = 2.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    eval_every: int = 500
    encoder: dict = field(default_factory=dict)  # overrides for ActivityWindowEncoderConfig
    decoder: dict = field(default_factory=dict)  # overrides for SkipUNetDecoderConfig
    loss: dict = field(default_factory=dict)  # overrides for MovieLossConfig

    def validate(self) -> None:
        if self.window < 1 or self.lag < 0 or self.steps < 1 or self.batch_size < 1:
            raise MovieDataError("need window >= 1, lag >= 0, steps >= 1 and batch_size >= 1")
        if not 0 < self.held_out_fraction < 1:
            raise MovieDataError("held_out_fraction must be in (0, 1)")
        if self.gap_s < 0 or not self.lr > 0 or self.weight_decay < 0:
            raise MovieDataError("need gap_s >= 0, lr > 0 and weight_decay >= 0")


def split_samples(data: AlignedMovieData, window: int, lag: int, held_out_fraction: float,
                  gap_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices; see the module docstring. Samples whose window would leave the
    recording are dropped."""
    end = data.neural_frame + lag
    start = end - window + 1
    valid = np.flatnonzero((start >= 0) & (end < data.dff.shape[0]))
    if valid.size < 2:
        raise MovieDataError(f"{data.source}: fewer than 2 samples have a full {window}-frame window")
    boundary = np.sort(end[valid])[int(np.floor((1 - held_out_fraction) * valid.size))]
    held_out = valid[start[valid] >= boundary]
    train = valid[end[valid] < boundary - gap_frames]
    if train.size == 0 or held_out.size == 0:
        raise MovieDataError(f"{data.source}: the split leaves {train.size} training and {held_out.size} "
                             "held-out samples; use a longer recording or a smaller gap")
    return train, held_out


def _windows(dff: torch.Tensor, ends: np.ndarray, window: int) -> torch.Tensor:
    """``dff[end - window + 1 : end + 1]`` for every end: ``(B, window, N)``."""
    index = torch.as_tensor(ends)[:, None] - torch.arange(window - 1, -1, -1)[None, :]
    return dff[index]


def build_model(n_neurons: int, height: int, width: int, cfg: MovieTrainConfig) -> MovieDecodingModel:
    try:
        enc_cfg = ActivityWindowEncoderConfig(n_neurons=n_neurons, window=cfg.window, **cfg.encoder)
        dec_cfg = SkipUNetDecoderConfig(height=height, width=width, embed_dim=enc_cfg.embed_dim, **cfg.decoder)
        return MovieDecodingModel(ActivityWindowEncoder(enc_cfg), SkipUNetDecoder(dec_cfg))
    except (TypeError, ValueError) as exc:
        raise MovieDataError(f"bad model settings: {exc}") from None


@torch.no_grad()
def predict(model: MovieDecodingModel, dff: torch.Tensor, ends: np.ndarray, window: int,
            batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = [model(_windows(dff, ends[i:i + batch_size], window)) for i in range(0, len(ends), batch_size)]
    return torch.cat(out)[:, 0]  # (samples, H, W)


def _log(message: str) -> None:
    print(message, flush=True)


def train_movie_decoder(data: AlignedMovieData, cfg: MovieTrainConfig | None = None, log=_log) -> dict:
    """Train on the early part of ``data``, evaluate on the held-out later part. Returns a dict with the
    model, the metrics and the held-out frames (true, decoded) and the mean frame."""
    cfg = cfg or MovieTrainConfig()
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    height, width = data.frames.shape[1:]
    gap_frames = int(round(cfg.gap_s * data.rate_hz))
    train, held_out = split_samples(data, cfg.window, cfg.lag, cfg.held_out_fraction, gap_frames)
    ends = data.neural_frame + cfg.lag

    dff = torch.as_tensor(data.dff)
    frames = torch.as_tensor(data.frames)
    train_neural = dff[: int(ends[train].max()) + 1]  # statistics from the training span only
    mean_frame = frames[data.movie_frame[train]].mean(dim=0)  # (H, W)
    model = build_model(data.dff.shape[1], height, width, cfg)
    model.encoder.set_normalization(train_neural.mean(dim=0), train_neural.std(dim=0))
    model.decoder.set_frame_prior(mean_frame)
    try:
        loss_fn = MovieLoss(MovieLossConfig(**cfg.loss))
    except (TypeError, ValueError) as exc:
        raise MovieDataError(f"bad loss settings: {exc}") from None
    # weight decay on weight matrices and kernels only, not on biases, norms or the frame prior
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2 and not name.endswith("frame_prior")]
    no_decay = [p for name, p in model.named_parameters() if not (p.dim() >= 2 and not name.endswith("frame_prior"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps,
                                                   pct_start=0.1)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"data: {data.source}; {data.dff.shape[1]} neurons, {height}x{width} frames; "
        f"{train.size} training / {held_out.size} held-out samples (gap {gap_frames} frames)")
    log(f"model: {n_params / 1e6:.2f} M parameters; {cfg.steps} steps of batch {cfg.batch_size}")

    true_held_out = frames[data.movie_frame[held_out]]  # (K, H, W)
    baseline_ssim = float(ssim(mean_frame.expand_as(true_held_out), true_held_out))
    history = []
    started = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        batch = rng.choice(train, size=cfg.batch_size)
        pred = model(_windows(dff, ends[batch], cfg.window))  # (B, 1, H, W)
        loss, parts = loss_fn(pred, frames[data.movie_frame[batch]][:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            decoded = predict(model, dff, ends[held_out], cfg.window)
            held_out_ssim = float(ssim(decoded, true_held_out))
            log(f"step {step:5d}  loss {np.mean(history[-cfg.eval_every:]):.4f}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in parts.items())
                + f"  held-out SSIM {held_out_ssim:.4f}  ({time.perf_counter() - started:.0f} s)")
    train_seconds = time.perf_counter() - started
    decoded = predict(model, dff, ends[held_out], cfg.window)
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
            "held_out_time_s": data.neural_frame[held_out] / data.rate_hz}


# --- figure and checkpoint ---------------------------------------------------------------------------


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


def save_checkpoint(result: dict, cfg: MovieTrainConfig, path) -> None:
    """Weights as safetensors (nothing pickled), configs and metrics in its metadata."""
    from safetensors.torch import save_file

    model = result["model"]
    metadata = {"encoder": json.dumps(asdict(model.encoder.cfg)), "decoder": json.dumps(asdict(model.decoder.cfg)),
                "train": json.dumps(asdict(cfg)), "metrics": json.dumps(result["metrics"])}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def load_checkpoint(path) -> MovieDecodingModel:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        encoder = ActivityWindowEncoder(ActivityWindowEncoderConfig(**json.loads(metadata["encoder"])))
        decoder = SkipUNetDecoder(SkipUNetDecoderConfig(**json.loads(metadata["decoder"])))
        model = MovieDecodingModel(encoder, decoder)
        model.load_state_dict(load_file(str(path)))
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise MovieDataError(f"{path}: not a movie decoder checkpoint ({exc})") from None
    return model.eval()


# --- command line ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.movie", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="simulated visual cortex watching a procedural movie")
    source.add_argument("--allen-recording", metavar="FILE", help="Allen session (NWB or any rtcalm-readable file) "
                        "with a natural_movie_one stimulus table")
    parser.add_argument("--allen-template", metavar="FILE", help="movie template (.npy or .h5), needed with --allen-recording")
    parser.add_argument("--template-key", help="dataset name inside an .h5 template")
    parser.add_argument("--stimulus", default="natural_movie_one", help="stimulus name in the table (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/movie", help="output folder (default: %(default)s)")
    parser.add_argument("--figure", help="figure path (default: OUT/movie_decoding.png)")
    parser.add_argument("--steps", type=int, default=MovieTrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=MovieTrainConfig.batch_size)
    parser.add_argument("--window", type=int, default=MovieTrainConfig.window)
    parser.add_argument("--lag", type=int, default=MovieTrainConfig.lag)
    parser.add_argument("--height", type=int, default=32, help="model frame height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=64, help="model frame width (default: %(default)s)")
    parser.add_argument("--neurons", type=int, default=1024, help="synthetic only (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=27000, help="synthetic only (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, command=" ".join(["python -m trainer.movie", *argv]))
    except RtcalmError as exc:
        print(f"trainer.movie: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args, command: str = "") -> dict:
    for name in ("steps", "batch_size", "window", "height", "width", "neurons", "frames", "threads"):
        if getattr(args, name) < 1:
            raise MovieDataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lag < 0:
        raise MovieDataError(f"--lag must be >= 0, got {args.lag}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.synthetic:
        data = synthetic_movie_data(args.seed, n_neurons=args.neurons, n_frames=args.frames,
                                    height=args.height, width=args.width)
    else:
        if not args.allen_template:
            raise MovieDataError("--allen-recording needs --allen-template")
        from rtcalm.data import load_recording

        recording = load_recording(args.allen_recording)
        template = load_template(args.allen_template, args.template_key)
        data = allen_movie_data(recording, template, args.height, args.width, args.stimulus)
    cfg = MovieTrainConfig(window=args.window, lag=args.lag, steps=args.steps, batch_size=args.batch_size,
                           seed=args.seed, eval_every=max(1, min(500, args.steps)))
    result = train_movie_decoder(data, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = Path(args.figure) if args.figure else out / "movie_decoding.png"
    save_figure(result, figure)
    save_checkpoint(result, cfg, out / "movie_decoder.safetensors")
    metrics = {**result["metrics"], "total_seconds": round(time.perf_counter() - started, 1),
               "source": data.source, "command": command}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    m = result["metrics"]
    print(f"held-out SSIM: decoder {m['heldout_ssim_model']:.4f}  vs  mean-frame baseline "
          f"{m['heldout_ssim_mean_frame']:.4f}  ({m['n_heldout']} held-out frames)")
    print(f"wrote {figure}, {out / 'movie_decoder.safetensors'}, {out / 'metrics.json'} "
          f"(total {metrics['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    sys.exit(main())
