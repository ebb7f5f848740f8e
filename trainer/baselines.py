"""Fit the learned forecasting baselines (rtcalm.model.baselines) on a training config's recordings.

    python -m trainer baselines --config configs/pretrain_default.json --out runs/baselines [--kinds mlp,poco]

Same data and the same split by mouse as the model the config trains (``trainer.data``), so model and
baselines are compared on equal terms. The recipe is the anchors' of the forecasting issue: Adam 1e-3 (no
weight decay) with cosine decay; every step draws ``windows_per_step`` windows of context + horizon frames
(all neurons, at most ``max_neurons``) from one training recording; loss = mean over horizon steps of the
batch MSE over the batch copy-last MSE in ΔF/F units (:func:`rtcalm.model.encoder.copy_last_ratio_loss`).
The steps are the trainer's one loop's (trainer.loop; the step is trainer.steps.baseline_step).
Each baseline is written to ``<out>/<kind>/`` (config.json + model.safetensors) and, with ``--ship``, to
``rtcalm/models/baselines/<kind>/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rtcalm.model.baselines import SHIPPED_BASELINES_DIR, BaselineConfig, BaselineForecaster, save_baseline
from trainer.config import TrainConfig
from trainer.data import CropSampler, Session, load_sessions, split_by_mouse
from trainer.loop import TrainingLoop, lr_at
from trainer.steps import baseline_step


@dataclass
class BaselineRecipe:
    steps: int = 4000
    windows_per_step: int = 16
    max_neurons: int = 256
    lr: float = 1e-3
    seed: int = 0


def fit_baseline(kind: str, train: list[Session], recipe: BaselineRecipe, horizon: int = 30,
                 progress: bool = True, **config) -> tuple[BaselineForecaster, dict]:
    """``config``: further BaselineConfig fields (e.g. context_frames, hidden)."""
    torch.manual_seed(recipe.seed)
    model = BaselineForecaster(BaselineConfig(kind=kind, forecast_horizon_frames=horizon, **config))
    context = model.config.context_frames
    sampler = CropSampler(train, context + horizon, recipe.max_neurons)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    optimizer = model.configure_optimizers(weight_decay=0.0, lr=recipe.lr, betas=(0.9, 0.999))
    curve, start, state = [], time.time(), {"step": 0}

    def step() -> dict:
        parts = baseline_step(model, optimizer, sampler, generator, context, recipe.windows_per_step)
        if state["step"] % 100 == 0 or state["step"] == recipe.steps - 1:
            curve.append({"step": state["step"], "loss": parts["loss"]})
        return parts

    model.train()
    TrainingLoop(progress=progress).run(f"baseline {kind}", state, optimizer, step, total=recipe.steps,
                                        lr=lambda s: lr_at(s, recipe.steps, recipe.lr, 0, 0.0),
                                        samples_per_step=recipe.windows_per_step)
    model.eval()
    info = {"kind": kind, "parameters": model.n_parameters(), "recipe": asdict(recipe),
            "train_files": [s.source for s in train], "train_mice": sorted({s.mouse for s in train}),
            "wall_time_s": time.time() - start, "curve": curve}
    return model, info


def fit_baselines(config: TrainConfig, data_root, out_dir, kinds=("mlp", "poco"), recipe: BaselineRecipe | None = None,
                  ship: bool = False, progress: bool = True, log=print) -> dict:
    recipe = recipe or BaselineRecipe(seed=config.seed)
    torch.set_num_threads(config.threads or 1)
    sessions, _ = load_sessions(data_root, config.data, log=log)
    train, _, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    results = {}
    for kind in kinds:
        model, info = fit_baseline(kind, train, recipe, config.model.forecast_horizon_frames, progress)
        metadata = {"training_config": config.name, **info}
        save_baseline(model, Path(out_dir) / kind, metadata)
        if ship:
            save_baseline(model, SHIPPED_BASELINES_DIR / kind, {k: v for k, v in metadata.items() if k != "curve"})
        log(f"baseline {kind}: {info['parameters']} parameters, {info['wall_time_s']:.0f} s, "
            f"final loss {info['curve'][-1]['loss']:.3f}")
        results[kind] = info
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
