"""The pretraining config: one JSON file, read strictly (an unknown or misspelt key is an error, never
silently ignored). See configs/pretrain_default.json and docs/model.md."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rtcalm.errors import RtcalmError
from rtcalm.model import CalmConfig


class TrainConfigError(RtcalmError, ValueError):
    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


@dataclass
class DataConfig:
    files: list[str]  # globs relative to --data-root
    validation_mice: list[str]  # held out from training; model selection (best checkpoint)
    test_mice: list[str]  # held out from training and selection; the final report
    rate_hz: float = 30.0  # recordings at another rate are skipped (or resampled, see below)
    resample_other_rates: bool = False  # resample off-rate recordings to rate_hz instead of skipping them
    rate_tolerance: float = 0.02  # relative difference still counted as "the same rate"
    min_epoch_frames: int = 64  # shorter contiguous epochs are not used at all


@dataclass
class TokenizerStage:
    steps: int = 3000
    batch_windows: int = 4096
    lr: float = 2e-3
    warmup_steps: int = 100
    missing_probability: float = 0.02  # per frame of a window, as augmentation
    stream_start_probability: float = 0.05  # window whose first 1..W-1 frames are before the stream start
    validate_every: int = 500
    validation_windows: int = 50000


OBJECTIVES = ("autoregressive", "latent_masked")
FORECAST_LOSSES = ("mse", "copy_last_ratio")
NEURON_CURRICULA = ("mixed", "curriculum", "reverse", "unpredictable_only")


@dataclass
class TransformerStage:
    steps: int = 4000
    batch_crops: int = 4  # crops per step, all from one recording (so they share N)
    context_frames: int = 96  # frames the model reads per crop; targets reach horizon frames further
    max_neurons: int = 128  # random subset of a recording's neurons per step (speed; N-agnostic model)
    lr: float = 1.5e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    next_code_weight: float = 0.1  # weight of the next-token cross-entropy next to the forecast MSE
    missing_probability: float = 0.01  # per (frame, neuron) of the input, as augmentation
    validate_every: int = 250
    checkpoint_every: int = 250
    validation_crops_per_epoch: int = 8
    # batches of training crops for the least-squares start of the autoregressive skip
    # (trainer.pretrain.fit_autoregressive_skip); 0 keeps the random initialisation
    skip_init_batches: int = 200
    # Self-supervised objective next to the forecast MSE (docs/training.md, "Objectives"):
    # "autoregressive": next_code_weight x next-token cross-entropy (CalM);
    # "latent_masked": latent_weight x L1 from a twin pass whose later masked_fraction of the context is
    # masked onto the full pass's hidden states (POYO-CAP's latent masked modelling).
    objective: str = "autoregressive"
    latent_weight: float = 1.0
    masked_fraction: float = 0.5
    # Which neurons the crops draw from (POYO-CAP's curriculum; trainer.curriculum): "mixed" (all, always),
    # "curriculum" (predictable neurons for the first first_phase_fraction of the steps, then the
    # unpredictable ones), "reverse" (unpredictable first), "unpredictable_only" (the second phase alone,
    # from scratch: the same steps as the curriculum's second phase and nothing before).
    neuron_curriculum: str = "mixed"
    # Forecast loss: "mse" (normalised units, every position) or "copy_last_ratio" (per horizon step, the
    # batch MSE over the batch copy-last MSE in ΔF/F units, rtcalm.model.encoder.copy_last_ratio_loss: the
    # evaluation's mse_ratio), scored from position first_scored_frame of the context on (the positions
    # before it see a window reaching before the crop start, which the evaluation's last position never does).
    forecast_loss: str = "mse"
    first_scored_frame: int = 0
    # Encoder mode: before stage 2, fit the per-neuron path (temporal encoder + forecast head, i.e. the
    # model with its population pathway off) with the per-neuron MLP baseline's recipe for this many
    # steps (trainer.baselines; 0 = no warm start), and with freeze_per_neuron keep it fixed in stage 2,
    # which then trains only what the population adds (FiLM starts at zero: step 0 is that MLP exactly).
    per_neuron_steps: int = 0
    freeze_per_neuron: bool = False
    first_phase_fraction: float = 0.5
    predictable_thresholds: str = "knee"  # rtcalm.stats thresholds over all training neurons: knee | poyo-cap


@dataclass
class TrainConfig:
    name: str
    data: DataConfig
    model: CalmConfig
    tokenizer: TokenizerStage = field(default_factory=TokenizerStage)
    transformer: TransformerStage = field(default_factory=TransformerStage)
    seed: int = 0
    threads: int | None = 2  # torch.set_num_threads; null leaves torch's default
    eval_horizons: list[int] = field(default_factory=lambda: [1, 5, 15, 30])

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the result (resuming under a different config is refused)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _strict(cls, d, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {unknown}")
    return cls(**d)


def parse_train_config(d: dict, path="<config>") -> TrainConfig:
    try:
        if not isinstance(d, dict):
            raise ValueError("the config must be a JSON object")
        top = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise ValueError(f"unknown top-level keys: {unknown}")
        for required in ("name", "data", "model"):
            if required not in d:
                raise ValueError(f"missing required key {required!r}")
        config = TrainConfig(
            name=str(d["name"]),
            data=_strict(DataConfig, d["data"], "data"),
            model=CalmConfig.from_dict(d["model"]),
            tokenizer=_strict(TokenizerStage, d.get("tokenizer", {}), "tokenizer"),
            transformer=_strict(TransformerStage, d.get("transformer", {}), "transformer"),
            seed=int(d.get("seed", 0)),
            threads=d.get("threads", 2),
            eval_horizons=[int(h) for h in d.get("eval_horizons", [1, 5, 15, 30])],
        )
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(path, str(exc)) from None
    _validate(config, path)
    return config


def _validate(config: TrainConfig, path) -> None:
    def fail(problem):
        raise TrainConfigError(path, problem)

    if not config.data.files:
        fail("data.files is empty")
    overlap = set(config.data.validation_mice) & set(config.data.test_mice)
    if overlap:
        fail(f"mice {sorted(overlap)} are in both validation_mice and test_mice")
    if not config.data.validation_mice:
        fail("data.validation_mice is empty: validation must be on mice not seen in training")
    t, s = config.tokenizer, config.transformer
    if t.steps < 0 or s.steps < 0 or t.batch_windows < 1 or s.batch_crops < 1:
        fail("steps must be >= 0 and batch sizes >= 1")
    if s.context_frames < 2 or s.max_neurons < 1:
        fail("transformer.context_frames must be >= 2 and max_neurons >= 1")
    if s.objective not in OBJECTIVES:
        fail(f"transformer.objective must be one of {list(OBJECTIVES)}, got {s.objective!r}")
    if s.neuron_curriculum not in NEURON_CURRICULA:
        fail(f"transformer.neuron_curriculum must be one of {list(NEURON_CURRICULA)}, got {s.neuron_curriculum!r}")
    if s.forecast_loss not in FORECAST_LOSSES:
        fail(f"transformer.forecast_loss must be one of {list(FORECAST_LOSSES)}, got {s.forecast_loss!r}")
    if not isinstance(s.first_scored_frame, int) or isinstance(s.first_scored_frame, bool) \
            or not 0 <= s.first_scored_frame < s.context_frames:
        fail(f"transformer.first_scored_frame must be a whole number in [0, context_frames), got {s.first_scored_frame!r}")
    if not isinstance(s.per_neuron_steps, int) or isinstance(s.per_neuron_steps, bool) or s.per_neuron_steps < 0:
        fail(f"transformer.per_neuron_steps must be a whole number >= 0, got {s.per_neuron_steps!r}")
    if (s.per_neuron_steps or s.freeze_per_neuron) and config.model.input_mode != "encoder":
        fail("transformer.per_neuron_steps / freeze_per_neuron apply to input_mode 'encoder' only")
    if s.forecast_loss == "copy_last_ratio" and s.objective != "autoregressive":
        fail("transformer.forecast_loss 'copy_last_ratio' is implemented for the autoregressive objective only")
    if s.predictable_thresholds not in ("knee", "poyo-cap"):
        fail(f"transformer.predictable_thresholds must be 'knee' or 'poyo-cap', got {s.predictable_thresholds!r}")
    for name in ("first_phase_fraction", "masked_fraction"):
        value = getattr(s, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 < value < 1.0:
            fail(f"transformer.{name} must be a number strictly between 0 and 1, got {value!r}")
    if not isinstance(s.latent_weight, int | float) or isinstance(s.latent_weight, bool) or not s.latent_weight >= 0:
        fail(f"transformer.latent_weight must be a number >= 0, got {s.latent_weight!r}")
    if not isinstance(s.skip_init_batches, int) or isinstance(s.skip_init_batches, bool) or s.skip_init_batches < 0:
        fail(f"transformer.skip_init_batches must be a whole number >= 0, got {s.skip_init_batches!r}")
    if min(t.validate_every, s.validate_every, s.checkpoint_every) < 1:
        fail("validate_every / checkpoint_every must be >= 1")
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        fail("threads must be a positive integer or null")
    if not config.eval_horizons or min(config.eval_horizons) < 1 or max(config.eval_horizons) > config.model.forecast_horizon_frames:
        fail(f"eval_horizons must be within 1..forecast_horizon_frames ({config.model.forecast_horizon_frames})")


def load_train_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(path, "config file not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainConfigError(path, f"not valid JSON: {exc}") from None
    return parse_train_config(document, path)
