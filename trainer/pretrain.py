"""Self-supervised pretraining: stage 1 trains the tokenizer, stage 2 the transformer on frozen tokens.

    python -m trainer pretrain --config configs/pretrain_default.json [--data-root ../shared/data/real]
                               [--out runs/<name>] [--resume]

Stage 1 (tokenizer): random single-neuron windows of all training recordings, with missing-frame and
stream-start augmentation; masked reconstruction MSE + commitment loss; the codebook follows EMA updates
and restarts dead codes (rtcalm.model.tokenizer). Validation: reconstruction R² and codebook perplexity on
the validation mice.

Stage 2 (transformer): random crops (context + horizon frames x up to max_neurons neurons) of one
recording per step; loss = forecast MSE over every position and horizon step + next_code_weight x
next-token cross-entropy; AdamW, linear warm-up then cosine decay, gradient clipping. Validation: the
same losses on fixed crops of the validation mice, next to the copy-last and mean forecasts on the same
crops; the best validation forecast MSE is kept as ``checkpoints/best``.

Finally the best model is scored with the project's forecast protocol (rtcalm.eval.forecast) on the
validation and test mice, next to copy-last, context-mean and a pooled AR model fitted on the training
recordings, and everything is written to ``metrics.json`` and a model card in ``checkpoints/best``.

Everything is seeded (``seed``); ``--resume`` continues from ``checkpoints/last`` (weights, optimizer,
RNG states, step) and gives the same result as an uninterrupted run.

Both stages take their steps in the trainer's one training loop (:class:`trainer.loop.TrainingLoop`, which
the learned baselines and the movie decoder use too). In a plain process it runs alone; launched by
torchrun, every rank runs this same loop on its share of each step's global batch, and the gradients are
summed over the ranks before each optimizer step (trainer.distributed: the process group; trainer.steps:
one optimizer step of each stage). One process is the degenerate case: no process group, every collective
the identity. Rank 0 validates, keeps ``checkpoints/best``, writes the logs, the checkpoints and the final
report; a checkpoint resumes with any world size whose split of the global batch comes out even.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from rtcalm.errors import RtcalmError
from rtcalm.model import Calm, codebook_perplexity, load_checkpoint, save_checkpoint
from rtcalm.model.objectives import crop_losses, future_targets
from trainer.config import TrainConfig, TransformerStage
from trainer.curriculum import phase_at, total_steps, training_phases
from trainer.data import CropSampler, Session, TokenWindowSampler, fixed_crops, interleave, prepare_data
from trainer.distributed import (
    DistributedSettings,
    Precision,
    Runtime,
    Sharding,
    broadcast_parameters,
    rank_seed,
    resolve_precision,
)
from trainer.loop import StepLog, TrainingLoop, lr_at
from trainer.state import load_training_state, read_rank_rng_state, read_trainer_state, save_training_state
from trainer.steps import TransformerObjective, next_code_weight, tokenizer_step, transformer_step


class TrainingError(RtcalmError):
    pass


# --- stage 1 ---------------------------------------------------------------------------------------------

@torch.no_grad()
def tokenizer_metrics(model: Calm, windows: torch.Tensor) -> dict:
    """Reconstruction R² (pooled over all values) and codebook usage on clean windows (n, W)."""
    if windows.numel() == 0:
        return {}
    was_training = model.tokenizer.training
    model.tokenizer.eval()
    codes = model.tokenizer.encode(interleave(windows, torch.zeros_like(windows)))
    recon = model.tokenizer.decode(codes)
    model.tokenizer.train(was_training)
    sse = float((recon - windows).double().square().sum())
    sst = float((windows.double() - windows.double().mean()).square().sum())
    used = int(torch.bincount(codes, minlength=model.config.codebook_size).gt(0).sum())
    return {"reconstruction_r2": 1.0 - sse / sst, "perplexity": codebook_perplexity(codes, model.config.codebook_size),
            "codes_used": used, "codebook_size": model.config.codebook_size, "windows": int(windows.shape[0])}


def validation_windows(sessions: list[Session], window: int, n: int, seed: int) -> torch.Tensor:
    if not sessions:
        return torch.empty(0, window)
    return TokenWindowSampler(sessions, window).sample(n, torch.Generator().manual_seed(seed))


# --- stage 2 ---------------------------------------------------------------------------------------------

def has_tokenizer(model: Calm) -> bool:
    return model.config.input_mode != "encoder"


def freeze_tokenizer(model: Calm) -> None:
    """Stage 2 never trains the tokenizer (where there is one)."""
    if has_tokenizer(model):
        model.tokenizer.requires_grad_(False)
        model.tokenizer.eval()


@torch.no_grad()
def fit_autoregressive_skip(model: Calm, sample_crops, n_batches: int, context: int, ridge: float = 1.0) -> dict:
    """Start stage 2 from the best linear forecaster: set the autoregressive skip to the ridge
    least-squares fit of the next horizon frames on the last ``autoregressive_order`` [value, missing]
    pairs (the pooled AR model of the evaluation protocol, on the model's own inputs), and zero the
    transformer's forecast head, so training begins exactly at that AR forecast and the transformer only
    learns what it can add. ``sample_crops()`` returns one batch of training crops (B, context + horizon, N)
    as the training loop draws them. Returns the fit's mean squared error and sample count."""
    horizon, order = model.config.forecast_horizon_frames, model.config.autoregressive_order
    n_features = 2 * order + 1
    gram = torch.zeros(n_features, n_features, dtype=torch.float64)
    cross = torch.zeros(n_features, horizon, dtype=torch.float64)
    target_power, n_rows = torch.zeros(horizon, dtype=torch.float64), 0
    for _ in range(n_batches):
        crop = sample_crops()
        windows, _ = model.raw_windows(crop[:, :context], order)  # (B, context, N, 2 order)
        targets, mask = future_targets(crop, context, horizon)  # (B, context, N, horizon)
        complete = mask.all(-1)  # rows whose every target frame exists
        x = torch.cat([windows[complete], windows.new_ones(int(complete.sum()), 1)], dim=1).double().cpu()
        y = targets[complete].double().cpu()
        gram += x.t() @ x
        cross += x.t() @ y
        target_power += (y * y).sum(0)
        n_rows += x.shape[0]
    if n_rows < n_features:
        raise TrainingError(f"too few complete training windows ({n_rows}) to fit the autoregressive skip")
    penalty = torch.eye(n_features, dtype=torch.float64) * ridge
    penalty[-1, -1] = 0.0  # no penalty on the intercept
    coef = torch.linalg.solve(gram + penalty, cross)  # (n_features, horizon)
    residual = target_power - 2 * (coef * cross).sum(0) + (coef * (gram @ coef)).sum(0)
    model.forecast_skip.weight.copy_(coef[:-1].t())
    model.forecast_skip.bias.copy_(coef[-1])
    model.forecast_head.weight.zero_()
    model.forecast_head.bias.zero_()
    return {"rows": n_rows, "train_mse": float(residual.sum() / (n_rows * horizon))}


def start_from_least_squares(model: Calm, config: TrainConfig, state: dict, sample_crops, log) -> None:
    """Stage 2's start (:func:`fit_autoregressive_skip`), once per run: the trainer state records it, and
    is saved with the weights, so a resumed run never fits twice."""
    scfg = config.transformer
    if state.get("skip_initialised") or not config.model.autoregressive_skip or scfg.skip_init_batches == 0:
        return
    fit = fit_autoregressive_skip(model, sample_crops, scfg.skip_init_batches, scfg.context_frames)
    state["skip_initialised"] = True
    log(f"autoregressive skip: least-squares start on {fit['rows']} windows, train MSE {fit['train_mse']:.4f}")


PER_NEURON_PREFIXES = ("temporal_encoder.", "forecast_head.")


def per_neuron_parameters(model: Calm) -> list:
    """The encoder mode's per-neuron path: what the model is with its population pathway off."""
    return [p for name, p in model.named_parameters() if name.startswith(PER_NEURON_PREFIXES)]


@torch.no_grad()
def warm_start_per_neuron(model: Calm, train: list[Session], scfg: TransformerStage, seed: int, log,
                          progress: bool = False) -> dict:
    """Fit the per-neuron MLP baseline with the encoder's width and window on the training sessions
    (trainer.baselines, the anchors' recipe) and copy it into the model's per-neuron path. The baseline
    reads no missing flags, so their input columns start at zero."""
    from trainer.baselines import BaselineRecipe, fit_baseline

    cfg = model.config
    recipe = BaselineRecipe(steps=scfg.per_neuron_steps, seed=seed)
    with torch.enable_grad():
        baseline, info = fit_baseline("mlp", train, recipe, cfg.forecast_horizon_frames, progress=progress,
                                      context_frames=cfg.token_window_frames, hidden=cfg.encoder_hidden)
    Wt = cfg.token_window_frames
    model.temporal_encoder.fc_in.weight.zero_()
    model.temporal_encoder.fc_in.weight[:, :Wt].copy_(baseline.encoder.fc_in.weight)
    model.temporal_encoder.fc_in.bias.copy_(baseline.encoder.fc_in.bias)
    model.temporal_encoder.fc_residual.load_state_dict(baseline.encoder.fc_residual.state_dict())
    model.forecast_head.load_state_dict(baseline.head.state_dict())
    log(f"per-neuron path: warm start from the MLP recipe ({scfg.per_neuron_steps} steps, "
        f"{info['wall_time_s']:.0f} s, final loss {info['curve'][-1]['loss']:.3f})")
    return {"steps": scfg.per_neuron_steps, "wall_time_s": info["wall_time_s"], "curve": info["curve"]}


@torch.no_grad()
def forecast_validation(model: Calm, crops: list[torch.Tensor], context: int, next_code_weight: float,
                        first_scored_frame: int = 0) -> dict:
    """Losses on fixed crops (the positions from ``first_scored_frame`` on), next to the copy-last and
    mean (zero in normalised units) forecasts."""
    model.eval()
    horizon = model.config.forecast_horizon_frames
    sums = {"forecast_mse": 0.0, "copy_last_mse": 0.0, "mean_mse": 0.0, "next_code_ce": 0.0}
    total = 0.0
    for crop in crops:
        _, parts, out = crop_losses(model, crop, context, next_code_weight, first_scored_frame=first_scored_frame)
        targets, mask = future_targets(crop, context, horizon)
        targets, mask = targets[:, first_scored_frame:], mask[:, first_scored_frame:]
        count = float(mask.sum())
        last = crop[:, first_scored_frame:context].unsqueeze(-1)  # (B, scored, N, 1): x(t) for every horizon step
        sums["copy_last_mse"] += float(((last - targets).square() * mask).sum())
        sums["mean_mse"] += float((targets.square() * mask).sum())
        sums["forecast_mse"] += parts["forecast_mse"] * count
        sums["next_code_ce"] += parts.get("next_code_ce", float("nan")) * count
        total += count
    model.train()
    if total == 0:
        return {}
    result = {k: v / total for k, v in sums.items() if k != "next_code_ce" or next_code_weight > 0}
    result["mse_ratio_vs_copy_last"] = result["forecast_mse"] / result["copy_last_mse"]
    result["r2_vs_mean"] = 1.0 - result["forecast_mse"] / result["mean_mse"]
    return result


# --- final report ----------------------------------------------------------------------------------------


def validate_transformer(model: Calm, val_crops, context: int, next_code_weight: float, train_parts: dict,
                         state: dict, out_dir: Path, best_dir: Path, metadata: dict, first_scored_frame: int = 0) -> dict:
    """Stage-2 validation (shared by the single-process and distributed trainers): score the validation
    crops, log the record, and save the model as ``best`` when its validation forecast MSE is the lowest
    so far. Returns the validation metrics."""
    metrics = forecast_validation(model, val_crops, context, next_code_weight, first_scored_frame)
    record = {"stage": "transformer", "step": state["step"], **{f"train_{k}": v for k, v in train_parts.items()},
              **{f"validation_{k}": v for k, v in metrics.items()}}
    state["history"].append(record)
    _append_log(out_dir, record)
    best = state["best_validation_forecast_mse"]
    if best is None or metrics["forecast_mse"] < best:
        state["best_validation_forecast_mse"], state["best_step"] = metrics["forecast_mse"], state["step"]
        save_checkpoint(model, best_dir, metadata={**metadata, "validation": metrics})
    return metrics

def protocol_scores(model: Calm, sessions: list[Session], pooled_ar, horizons: list[int]) -> dict | None:
    """rtcalm.eval.forecast on whole held-out recordings (contiguous ones), model vs baselines."""
    from rtcalm.eval.forecast import baseline_forecasters, evaluate, model_forecaster

    recordings = [s.recording for s in sessions if not s.recording.is_trial_structured]
    if not recordings:
        return None
    forecasters = {"model": model_forecaster(model),
                   **baseline_forecasters(pooled_ar, model.config.forecast_horizon_frames)}
    return evaluate(recordings, forecasters, horizons, model.config.receptive_field_frames)


def describe_split(sessions: list[Session]) -> dict:
    return {"mice": sorted({s.mouse for s in sessions}), "files": [s.source for s in sessions],
            "neurons": sum(s.n_neurons for s in sessions),
            "neuron_frames": sum(int(e.numel()) for s in sessions for e in s.epochs)}


def model_card(config: TrainConfig, metrics: dict, size_bytes: int) -> str:
    cfg = config.model
    lines = [
        f"# CalM streaming model `{config.name}`",
        "",
        "Forecasts every neuron's next "
        f"{cfg.forecast_horizon_frames} frames ({cfg.forecast_horizon_frames / cfg.rate_hz:g} s at {cfg.rate_hz:g} Hz) "
        "from per-neuron z-scored ΔF/F, one frame at a time (`Calm.step`).",
        "",
        "## Inputs and outputs",
        "- Input: one frame per step, `(x - running_mean) / running_std` per neuron, NaN = missing; any number of neurons.",
        "- Output: point forecasts in the same normalised units (multiply by std, add mean for ΔF/F)"
        + (f", and optionally next-token logits over {cfg.codebook_size} codes." if cfg.input_mode == "tokens" else "."),
        f"- Only valid at {cfg.rate_hz:g} Hz (resample other rates first).",
        "",
        "## Architecture",
        (f"- Tokenizer: windows of {cfg.token_window_frames} frames -> {cfg.codebook_size}-code VQ codebook (EMA, "
         "dead-code restarts)." if cfg.input_mode == "tokens" else
         f"- Per-neuron temporal encoder: the last {cfg.token_window_frames} frames normalised by their own mean and std "
         f"-> MLP ({cfg.encoder_hidden} wide) -> token; the forecast is that MLP's, FiLM-modulated by the population "
         "state, mapped back with the window's mean and std." if cfg.input_mode == "encoder" else
         f"- Continuous inputs: a linear projection of the last {cfg.token_window_frames} frames (no tokenizer)."),
        f"- Input mode: {cfg.input_mode}. Transformer: d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"causal temporal attention over {cfg.attention_window_frames} frames, cross-neuron attention through "
        f"{cfg.n_latents} latents; linear autoregressive skip "
        f"{f'on (order {cfg.autoregressive_order}, least-squares start)' if cfg.autoregressive_skip else 'off'}. "
        f"Receptive field {cfg.receptive_field_frames} frames.",
        f"- Checkpoint size {size_bytes / 1e6:.2f} MB (safetensors + JSON).",
        "",
        "## Training data (split by mouse)",
    ]
    for split in ("train", "validation", "test"):
        d = metrics["data"][split]
        lines.append(f"- {split}: mice {', '.join(d['mice']) or '-'}; {len(d['files'])} recordings, {d['neurons']} neurons")
    if metrics["data"]["skipped"]:
        lines.append("- skipped: " + "; ".join(f"{f} ({r})" for f, r in metrics["data"]["skipped"]))
    lines += ["", "## Results on held-out mice"]
    for split in ("validation", "test"):
        tok = metrics["tokenizer"].get(split) or {}
        if tok:
            lines.append(f"- {split} tokenizer: reconstruction R² {tok['reconstruction_r2']:.3f}, "
                         f"perplexity {tok['perplexity']:.1f} of {tok['codebook_size']} codes")
        scores = (metrics.get("forecast_protocol") or {}).get(split)
        if scores:
            lines.append(f"- {split} forecast (rtcalm forecast-eval protocol; mse_ratio vs copy-last / Pearson):")
            names = ["model", *scores["baselines"]]
            for h in map(str, scores["horizons"]):
                cells = [f"{name} {((scores['model'] if name == 'model' else scores['baselines'][name])[h]['mse_ratio']):.3f}"
                         f" / {((scores['model'] if name == 'model' else scores['baselines'][name])[h]['pearson']):.3f}"
                         for name in names]
                lines.append(f"  - h={h}: " + ", ".join(cells))
    lines += ["", "## Limitations",
              "- Trained on a small public set of Allen Brain Observatory excerpts (GCaMP6f, mouse visual cortex); "
              "other indicators, areas, species or frame rates are out of distribution.",
              "- Normalisation in training used whole-recording statistics; the daemon uses running statistics.",
              "", f"Trained with `python -m trainer pretrain --config` ({config.name}), seed {config.seed}, "
              f"on {platform.machine()} / torch {torch.__version__}."]
    return "\n".join(lines) + "\n"


# --- driver ----------------------------------------------------------------------------------------------

def pretrain(config: TrainConfig, data_root, out_dir, resume: bool = False, progress: bool = True,
             stop_after_steps: int | None = None, log=print, settings: DistributedSettings | None = None,
             runtime: Runtime | None = None) -> dict:
    """Run (or continue) pretraining: alone (``runtime`` None: a single CPU process) or as one rank of a
    torchrun job (``runtime`` from :func:`trainer.distributed.start_runtime`). Returns the final metrics
    on rank 0 and ``{}`` on the other ranks, or ``{"stopped_at": ...}`` everywhere when
    ``stop_after_steps`` optimizer steps were taken in this call (for time-limited jobs and to test
    resuming)."""
    start_time = time.time()
    settings = settings or DistributedSettings()
    rt = runtime or Runtime()
    precision = Precision(resolve_precision(settings.precision, rt.device), rt.device)
    sharding = Sharding(rt, settings.accumulation_steps)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    main_log = log if rt.is_main else (lambda *_: None)
    tcfg, scfg, W = config.tokenizer, config.transformer, config.model.token_window_frames
    horizon = config.model.forecast_horizon_frames
    # Fail on every rank alike, before any work, when a global batch cannot be split.
    if config.model.input_mode != "encoder" and tcfg.steps:
        sharding.micro_batch(tcfg.batch_windows, "tokenizer.batch_windows")
    sharding.micro_batch(scfg.batch_crops, "transformer.batch_crops")

    out_dir = Path(out_dir)
    last_dir, best_dir = out_dir / "checkpoints" / "last", out_dir / "checkpoints" / "best"
    existing_run = last_dir.exists()
    rt.barrier()  # every rank has looked before rank 0 writes anything
    if existing_run and not resume:
        raise TrainingError(f"{out_dir} already holds a training run; pass --resume to continue it or choose "
                            "another --out")
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    data = prepare_data(rt, data_root, config, main_log)
    train, validation, test = data.train, data.validation, data.test
    main_log(f"train: {len(train)} recordings ({sum(s.n_neurons for s in train)} neurons) of mice "
             f"{sorted({s.mouse for s in train})}; validation mice {config.data.validation_mice}; "
             f"test mice {config.data.test_mice}"
             + (f"; world size {rt.world_size} ({rt.backend}, {rt.device})" if rt.distributed else "")
             + (f"; accumulation {settings.accumulation_steps}" if settings.accumulation_steps > 1 else "")
             + (f"; precision {precision.name}" if precision.name != "fp32" else ""))

    torch.manual_seed(config.seed)
    model = Calm(config.model).to(rt.device)
    generator = torch.Generator().manual_seed(config.seed + 1)  # the data draws: the same on every rank
    state = {"stage": "tokenizer", "step": 0, "config_fingerprint": config.fingerprint(), "history": [],
             "best_validation_forecast_mse": None, "best_step": None, "tokenizer_metrics": {},
             "elapsed_s": 0.0}
    resume_from_checkpoint = False
    elapsed_before = 0.0  # wall time of earlier invocations of this run
    if resume and existing_run:
        state = read_trainer_state(last_dir)
        if state["config_fingerprint"] != config.fingerprint():
            raise TrainingError(f"{last_dir}: was trained with a different config (fingerprint "
                                f"{state['config_fingerprint']} != {config.fingerprint()}); resume with the same config")
        resume_from_checkpoint = True
        elapsed_before = float(state.get("elapsed_s", 0.0))
        main_log(f"resuming from {last_dir}: stage {state['stage']}, step {state['step']} (world size "
                 f"{state.get('distributed', {}).get('world_size', 1)} -> {rt.world_size})")

    def model_metadata() -> dict:
        return {"training_config": config.to_dict(), "stage": state["stage"], "step": state["step"]}

    def save_last(optimizer) -> None:
        # Every rank calls this at the same steps: the other ranks' dropout RNG states are saved too.
        rng_states = rt.all_gather(torch.get_rng_state())
        if not rt.is_main:
            return
        state["elapsed_s"] = elapsed_before + (time.time() - start_time)
        state["distributed"] = {"world_size": rt.world_size, "accumulation_steps": settings.accumulation_steps,
                                "precision": precision.name, "backend": rt.backend}
        if precision.state() is not None:
            state["grad_scaler"] = precision.state()
        save_training_state(last_dir, model, optimizer, generator,
                            {k: v for k, v in state.items() if k != "optimizer_param_groups"}, model_metadata(),
                            rank_rng_states=rng_states[1:])

    def restore(optimizer) -> None:
        # CPU tensors from the checkpoint: load_state_dict copies weights onto the model's device and
        # Optimizer.load_state_dict moves each state tensor to its parameter's device.
        load_training_state(last_dir, model, optimizer, generator, state)
        precision.load_state(state.get("grad_scaler"))

    def stopped() -> dict:
        return {"stopped_at": {"stage": state["stage"], "step": state["step"]}}

    loop = TrainingLoop(rt, config.seed, StepLog(out_dir / "steps.csv", rt.is_main), settings.log_every, progress,
                        stop_after_steps, elapsed=lambda: elapsed_before + time.time() - start_time,
                        save_last=save_last)

    # ---- stage 1: tokenizer (encoder mode has none) ----
    if state["stage"] == "tokenizer" and not has_tokenizer(model):
        state["stage"] = "transformer"
    if state["stage"] == "tokenizer":
        optimizer = model.tokenizer.configure_optimizers(weight_decay=0.0, lr=tcfg.lr, betas=(0.9, 0.999))
        if resume_from_checkpoint:
            restore(optimizer)
        val_windows = (validation_windows(validation, W, tcfg.validation_windows, config.seed + 2).to(rt.device)
                       if rt.is_main else None)
        sampler = TokenWindowSampler(train, W)
        broadcast_parameters(rt, model)
        model.tokenizer.train()

        def validate_tokenizer(parts: dict) -> dict:
            metrics = tokenizer_metrics(model, val_windows)
            state["history"].append({"stage": "tokenizer", "step": state["step"], "train_mse": parts["mse"],
                                     **{f"validation_{k}": v for k, v in metrics.items()}})
            _append_log(out_dir, state["history"][-1])
            return {"mse": f"{parts['mse']:.3f}", "val_r2": f"{metrics.get('reconstruction_r2', float('nan')):.3f}",
                    "ppl": f"{metrics.get('perplexity', float('nan')):.0f}"}

        # every rank draws the dead-code restarts alike: rank 0's CUDA stream
        finished = loop.run(
            "tokenizer", state, optimizer,
            lambda: tokenizer_step(sharding, precision, model, optimizer, sampler, generator, tcfg.batch_windows,
                                   tcfg.missing_probability, tcfg.stream_start_probability),
            total=tcfg.steps, lr=lambda step: lr_at(step, tcfg.steps, tcfg.lr, tcfg.warmup_steps, tcfg.lr * 0.1),
            samples_per_step=tcfg.batch_windows, validate=validate_tokenizer, validate_every=tcfg.validate_every,
            cuda_seed_rank=0)
        if not finished:
            return stopped()
        model.tokenizer.eval()
        if rt.is_main:
            test_windows = validation_windows(test, W, tcfg.validation_windows, config.seed + 3).to(rt.device)
            state["tokenizer_metrics"] = {"validation": tokenizer_metrics(model, val_windows),
                                          "test": tokenizer_metrics(model, test_windows)}
            main_log(f"tokenizer: {json.dumps(state['tokenizer_metrics'])}")
        state["stage"], state["step"] = "transformer", 0
        resume_from_checkpoint = False

    # ---- stage 2: transformer ----
    freeze_tokenizer(model)
    if scfg.freeze_per_neuron:
        for p in per_neuron_parameters(model):
            p.requires_grad_(False)
    optimizer = model.configure_optimizers(scfg.weight_decay, scfg.lr, betas=(0.9, 0.95))
    if state["stage"] == "transformer":
        if resume_from_checkpoint:
            restore(optimizer)
        # Dropout draws from torch's global RNG: rank 0 continues the stream a single process uses (saved
        # in the checkpoint); every other rank has its own, saved beside it, or a fresh one from
        # (seed, step, rank) when the checkpoint has none (a new stage, or fewer ranks before).
        saved_stream = read_rank_rng_state(last_dir, rt.rank) if resume_from_checkpoint and rt.rank > 0 else None
        if saved_stream is not None:
            torch.set_rng_state(saved_stream)
        elif rt.rank > 0:
            torch.manual_seed(rank_seed(config.seed, state["step"], rt.rank))
        if not resume_from_checkpoint:
            save_last(optimizer)  # the tokenizer is done: never train it again after a crash
        context = scfg.context_frames
        crop_frames = context + horizon
        phases, split = training_phases(train, scfg)
        if split is not None:
            main_log(f"neuron curriculum {scfg.neuron_curriculum}: {json.dumps(split)}; phases "
                     + ", ".join(f"{p.name} from step {p.first_step}" for p in phases))
        samplers = [CropSampler(train, crop_frames, scfg.max_neurons, phase.neurons) for phase in phases]
        steps = total_steps(scfg)
        if data.longest_validation_epoch < crop_frames:
            raise TrainingError(f"no validation recording has {crop_frames} frames (context + horizon)")
        val_crops = ([c.to(rt.device) for c in fixed_crops(validation, crop_frames, scfg.validation_crops_per_epoch)]
                     if rt.is_main else [])
        # every rank draws the same whole batches (the generator is shared), so all fit the same skip
        start_from_least_squares(model, config, state, lambda: samplers[0].sample(scfg.batch_crops, generator)[0],
                                 main_log)
        if scfg.per_neuron_steps and not state.get("per_neuron_initialised"):
            if rt.is_main:  # the others wait for its weights in broadcast_parameters below
                state["per_neuron_warm_start"] = warm_start_per_neuron(model, train, scfg, config.seed, log, progress)
            state["per_neuron_initialised"] = True
            broadcast_parameters(rt, model)
            save_last(optimizer)
        broadcast_parameters(rt, model)
        code_weight = next_code_weight(scfg, model)
        model.train()
        freeze_tokenizer(model)
        objective = TransformerObjective(model, scfg)

        def validate(parts: dict) -> dict:
            metrics = validate_transformer(model, val_crops, context, code_weight, parts, state,
                                           out_dir, best_dir, model_metadata(), scfg.first_scored_frame)
            freeze_tokenizer(model)  # validation put the model (and so the tokenizer) back in train mode
            return {"loss": f"{parts['loss']:.3f}", "val": f"{metrics['forecast_mse']:.3f}",
                    "vs_copy": f"{metrics['mse_ratio_vs_copy_last']:.3f}"}

        finished = loop.run(
            "transformer", state, optimizer,
            lambda: transformer_step(sharding, precision, objective, optimizer,
                                     samplers[phase_at(phases, state["step"])], generator),
            total=steps, lr=lambda step: lr_at(step, steps, scfg.lr, scfg.warmup_steps, scfg.min_lr),
            samples_per_step=scfg.batch_crops, validate=validate, validate_every=scfg.validate_every,
            checkpoint_every=scfg.checkpoint_every)
        if not finished:
            return stopped()
        state["stage"] = "done"
        save_last(optimizer)

    # ---- final report (rank 0; the other ranks are done) ----
    if not rt.is_main:
        return {}
    model.cpu()
    return final_report(config, out_dir, train, validation, test, data.skipped, state, log,
                        pooled_ar_traces=data.pooled_ar_traces)


def _append_log(out_dir: Path, record: dict) -> None:
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def final_report(config: TrainConfig, out_dir: Path, train, validation, test, skipped, state, log,
                 pooled_ar_traces=None) -> dict:
    """``pooled_ar_traces``: raw ΔF/F epochs to fit the pooled AR baseline on, instead of every training
    recording (the distributed trainer passes a bounded sample of a memory-mapped store)."""
    from rtcalm.eval.forecast import fit_pooled_ar

    best_dir = out_dir / "checkpoints" / "best"
    if not best_dir.exists():  # zero transformer steps: ship the current weights
        save_checkpoint(load_checkpoint(out_dir / "checkpoints" / "last"), best_dir)
    model = load_checkpoint(best_dir)
    horizon = config.model.forecast_horizon_frames
    if pooled_ar_traces is None:
        pooled_ar_traces = [epoch for s in train for epoch in s.recording.epochs()]
    train_traces = [epoch for epoch in pooled_ar_traces if epoch.shape[0] > 16 + horizon]
    pooled_ar = fit_pooled_ar(train_traces, order=16, horizon=horizon, seed=config.seed) if train_traces else None
    metrics = {
        "name": config.name,
        "data": {"train": describe_split(train), "validation": describe_split(validation),
                 "test": describe_split(test), "skipped": [list(s) for s in skipped]},
        "tokenizer": state.get("tokenizer_metrics", {}),
        "transformer": {"best_step": state.get("best_step"),
                        "best_validation_forecast_mse": state.get("best_validation_forecast_mse"),
                        "steps": total_steps(config.transformer)},
        "forecast_protocol": {"validation": protocol_scores(model, validation, pooled_ar, config.eval_horizons),
                              "test": protocol_scores(model, test, pooled_ar, config.eval_horizons)},
        "model": {"parameters": model.n_parameters(), "config": config.model.to_dict()},
        "training_wall_time_s": state.get("elapsed_s"),
    }
    _, metadata = _read_metadata(best_dir)
    metadata.update({"training_config": config.to_dict(), "metrics": metrics})
    if pooled_ar is not None:
        metadata["pooled_ar"] = pooled_ar.to_dict()
    save_checkpoint(model, best_dir, metadata=metadata)
    size = sum(p.stat().st_size for p in best_dir.iterdir() if p.is_file())
    metrics["model"]["checkpoint_bytes"] = size
    (best_dir / "README.md").write_text(model_card(config, metrics, size))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for split in ("validation", "test"):
        scores = metrics["forecast_protocol"][split]
        if scores:
            for h in map(str, scores["horizons"]):
                log(f"{split} h={h}: model mse_ratio {scores['model'][h]['mse_ratio']:.3f} pearson "
                    f"{scores['model'][h]['pearson']:.3f} | copy_last pearson {scores['baselines']['copy_last'][h]['pearson']:.3f}"
                    + (f" | pooled_ar mse_ratio {scores['baselines']['pooled_ar'][h]['mse_ratio']:.3f}"
                       if "pooled_ar" in scores["baselines"] else ""))
    log(f"wrote {out_dir / 'metrics.json'} and {best_dir}")
    return metrics


def _read_metadata(directory):
    from rtcalm.model import read_checkpoint_config

    return read_checkpoint_config(directory)


