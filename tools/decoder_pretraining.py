"""Cross-mouse pretraining of a direction decoder against per-mouse LDA (issue 22, item 6).

    OMP_NUM_THREADS=1 python tools/decoder_pretraining.py [--seeds 0 1] \\
        [--result docs/results/decoder_pretraining.json] [--data-root ../shared/data/real]

POYO+ / POYO-CAP claim that pretraining on other sessions makes decoding a new one more data-efficient.
This checks it on the six grating mice (surlab_Park_et_al: 8 directions x 16 trials, epochs -1..+2 s at
16 Hz, 18-74 neurons), leaving each mouse out in turn.

Model (``PoyoLite``, below): each neuron's ΔF/F in the response window (0-2 s, 32 frames), z-scored per
neuron with the statistics of the training (or calibration) trials and averaged in 8 time bins, goes
through a shared MLP to a token of width 32, plus a learned per-(mouse, neuron) embedding; 4 learned
latent queries cross-attend over the neuron tokens (permutation-invariant, any neuron count), one
self-attention block over the latents, mean over latents, a shared linear readout to the 8 directions.

Protocol, per left-out mouse and pretraining seed:

1. Pretraining: all 128 trials of the 5 other mice; cross-entropy, AdamW, dropout, unit dropout (each
   batch keeps a random 50-100 % of its mouse's neurons); batches of trials from one mouse at a time.
2. Outer 5-fold stratified CV over the left-out mouse's 128 trials (``StratifiedKFold``, shuffled, seed 0,
   as decode-eval's folds). In each fold, calibration sets of 16, 32 and 64 trials (2 / 4 / 8 per
   direction, nested, drawn from the fold's training trials with a seed fixed per mouse and fold, the
   same for every decoder and pretraining seed) and ``all`` (the whole training fold, 102-103 trials).
3. On exactly the same calibration trials, three decoders, scored on the fold's test trials:

   - ``pretrained``: the pretrained model with a fresh embedding per neuron of the new mouse; only those
     embeddings and the readout (initialised from the pretrained readout) are trained, the shared trunk
     is frozen;
   - ``scratch``: the same architecture trained from scratch on the calibration trials only (every
     parameter; the control that separates pretraining from the architecture);
   - ``lda``: decode-eval's ``lda_binned`` (:class:`rtcalm.eval.decode.BinnedDecoder`: Ledoit-Wolf
     shrinkage LDA on the ΔF/F of the response window in 1/2/4/8 time bins, the count chosen by inner CV
     on the calibration trials). On 16 calibration trials (2 per direction) its inner CV leaves one trial
     out (:func:`rtcalm.eval.linear.inner_splits`) and the LDA pools the classes' residuals for its
     shrinkage (:class:`rtcalm.model.heads.linear.ShrinkageLDA`: per class it is undefined on so few).
     The bins chosen per fold are stored (``lda_bins``).

Scores: accuracy per mouse and calibration size as the mean over the 5 outer folds, with the standard
error over folds (std / sqrt(5)); the mean over mice with sqrt(sum se²) / mice; per pretraining seed and
averaged over seeds (``scratch`` also depends on the seed: its initialisation and dropout). Chance 0.125.

Hyperparameters (``DecoderConfig``, ``Recipe``) were fixed a priori, before any run on real data, from
the sizes of the problem (a few hundred trials; width 32, one attention layer each) and not tuned on any
mouse; the only real-data check during development was that pretraining reaches a low training loss.
A diagnostic on the pretraining mice alone (``within_pretraining_mice``, first seed): the same pretraining
on 4/5 of each pretraining mouse's trials, scored on the other 1/5 with the mouse's own embeddings, against
``lda_binned`` on the same split (:func:`within_mouse_check`).

The result, with the command, commit and machine, goes to ``--result``; ``python docs/render.py``
writes the decoder-pretraining block of docs/results.md from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "docs" / "results" / "decoder_pretraining.json"
GRATING_GLOB = "surlab_Park_et_al/sample-data/glm/*_data.mat"
SIZES = ("16", "32", "64", "all")
DECODERS = ("pretrained", "scratch", "lda")
FOLDS = 5
FOLD_SEED = 0


@dataclass
class DecoderConfig:
    bins: int = 8  # time bins of each neuron's response window
    d_model: int = 32
    n_latents: int = 4
    n_heads: int = 2
    mlp_ratio: int = 2
    dropout: float = 0.1
    n_classes: int = 8


@dataclass
class Recipe:
    pretrain_steps: int = 1500
    pretrain_batch: int = 64  # trials of one mouse per step
    pretrain_lr: float = 3e-3
    weight_decay: float = 0.01
    keep_min: float = 0.5  # unit dropout: each pretraining batch keeps a random 50-100 % of the neurons
    adapt_steps: int = 200  # full batch on the calibration trials
    adapt_lr: float = 1e-2
    scratch_steps: int = 300  # full batch on the calibration trials
    scratch_lr: float = 5e-3


# --- data --------------------------------------------------------------------------------------------------
@dataclass
class Mouse:
    name: str
    responses: np.ndarray  # (trials, frames, neurons) ΔF/F in the response window, float32
    targets: np.ndarray  # (trials,) direction index 0..7


def load_mice(data_root: Path) -> list[Mouse]:
    from rtcalm.data import load_recording
    from rtcalm.eval.decode import task_data

    files = sorted(data_root.glob(GRATING_GLOB))
    if len(files) != 6:
        raise SystemExit(f"expected the 6 grating files under {data_root}, found {len(files)}")
    mice = []
    for path in files:
        recording = load_recording(path)
        data = task_data(recording, "direction")
        mice.append(Mouse(recording.meta.mouse, recording.dff[:, data.response_frames, :].astype(np.float32),
                          data.targets.astype(np.int64)))
    return mice


def features(responses: np.ndarray, reference: np.ndarray, bins: int) -> torch.Tensor:
    """(trials, frames, N) -> (trials, N, bins): z-scored per neuron with the mean and std over the
    ``reference`` trials' frames (the training or calibration trials), then averaged in time bins."""
    mean = reference.mean(axis=(0, 1))
    std = reference.std(axis=(0, 1))
    z = (responses - mean) / np.where(std > 1e-6, std, 1.0)
    binned = np.stack([chunk.mean(axis=1) for chunk in np.array_split(z, bins, axis=1)], axis=2)  # (T, N, bins)
    return torch.from_numpy(np.ascontiguousarray(binned, dtype=np.float32))


# --- model -------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        d = config.d_model
        self.net = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d),
                                 nn.Dropout(config.dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention of queries (B, Q, d) over keys/values (B, K, d) -> (B, Q, d)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        d = config.d_model
        self.n_heads, self.dropout = config.n_heads, config.dropout
        self.query, self.key_value, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        (b, q, d), k, h = queries.shape, keys.shape[1], self.n_heads
        query = self.query(queries).view(b, q, h, d // h).transpose(1, 2)  # (B, h, Q, d/h)
        key, value = self.key_value(keys).view(b, k, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, h, K, d/h)
        mixed = F.scaled_dot_product_attention(query, key, value, dropout_p=self.dropout if self.training else 0.0)
        return self.out(mixed.transpose(1, 2).reshape(b, q, d))


class PoyoLite(nn.Module):
    """Neuron tokens (shared response MLP + per-(mouse, neuron) embedding) read by latent queries."""

    def __init__(self, config: DecoderConfig, neurons: dict[str, int]):
        super().__init__()
        d = config.d_model
        self.config = config
        self.response = nn.Sequential(nn.Linear(config.bins, d), nn.GELU(), nn.Linear(d, d))
        self.units = nn.ParameterDict()
        for mouse, n in neurons.items():
            self.add_mouse(mouse, n)
        self.ln_token = nn.LayerNorm(d)
        self.token_mlp = MLP(config)
        self.latents = nn.Parameter(0.02 * torch.randn(config.n_latents, d))
        self.ln_query, self.ln_key = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross = Attention(config)
        self.ln_cross_mlp = nn.LayerNorm(d)
        self.cross_mlp = MLP(config)
        self.ln_self = nn.LayerNorm(d)
        self.self_attention = Attention(config)
        self.ln_self_mlp = nn.LayerNorm(d)
        self.self_mlp = MLP(config)
        self.ln_final = nn.LayerNorm(d)
        self.readout = nn.Linear(d, config.n_classes)

    def add_mouse(self, mouse: str, n: int) -> None:
        self.units[mouse] = nn.Parameter(0.02 * torch.randn(n, self.config.d_model))

    def trunk_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter but the per-mouse embeddings and the readout: what adaptation must not change."""
        return {name: p for name, p in self.named_parameters()
                if not name.startswith("units.") and not name.startswith("readout.")}

    def forward(self, x: torch.Tensor, mouse: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, N, bins); keep (N',) indices of the neurons present (unit dropout), default all
        units = self.units[mouse] if keep is None else self.units[mouse][keep]  # (N, d)
        if keep is not None:
            x = x[:, keep]
        tokens = self.response(x) + units  # (B, N, d)
        tokens = tokens + self.token_mlp(self.ln_token(tokens))  # (B, N, d)
        keys = self.ln_key(tokens)
        query = self.latents.expand(x.shape[0], -1, -1)  # (B, L, d)
        query = query + self.cross(self.ln_query(query), keys)  # (B, L, d)
        query = query + self.cross_mlp(self.ln_cross_mlp(query))
        normed = self.ln_self(query)
        query = query + self.self_attention(normed, normed)  # (B, L, d)
        query = query + self.self_mlp(self.ln_self_mlp(query))
        return self.readout(self.ln_final(query).mean(dim=1))  # (B, classes)


# --- training ----------------------------------------------------------------------------------------------
def pretrain(mice: list[Mouse], config: DecoderConfig, recipe: Recipe, seed: int) -> tuple[PoyoLite, dict]:
    """The model trained on every trial of ``mice``; and its final training loss and accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PoyoLite(config, {m.name: m.responses.shape[2] for m in mice})
    inputs = {m.name: features(m.responses, m.responses, config.bins) for m in mice}
    targets = {m.name: torch.from_numpy(m.targets) for m in mice}
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.pretrain_lr, weight_decay=recipe.weight_decay)
    warmup = max(1, recipe.pretrain_steps // 10)  # linear warm-up over 10 % of the steps, then cosine to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + np.cos(np.pi * min(1.0, step / recipe.pretrain_steps)))))
    model.train()
    for _ in range(recipe.pretrain_steps):
        mouse = mice[rng.integers(len(mice))]
        trials = rng.choice(mouse.targets.shape[0], size=min(recipe.pretrain_batch, mouse.targets.shape[0]),
                            replace=False)
        n = mouse.responses.shape[2]
        keep = np.sort(rng.choice(n, size=max(1, int(round(n * rng.uniform(recipe.keep_min, 1.0)))), replace=False))
        logits = model(inputs[mouse.name][trials], mouse.name, torch.from_numpy(keep))
        loss = F.cross_entropy(logits, targets[mouse.name][trials])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        losses, correct, total = [], 0, 0
        for m in mice:
            logits = model(inputs[m.name], m.name)
            losses.append(float(F.cross_entropy(logits, targets[m.name])) * m.targets.shape[0])
            correct += int((logits.argmax(1) == targets[m.name]).sum())
            total += m.targets.shape[0]
    return model, {"train_loss": sum(losses) / total, "train_accuracy": correct / total}


def fit_full_batch(model: PoyoLite, parameters: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, mouse: str,
                   steps: int, lr: float, weight_decay: float) -> float:
    """Trains ``parameters`` on every trial of (x, y) at once; returns the last step's training loss."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x, mouse), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    model.fit_loss = float(loss.detach())
    return model.fit_loss


def adapt(pretrained: PoyoLite, mouse: str, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
          seed: int) -> PoyoLite:
    """A copy of ``pretrained`` with new embeddings for ``mouse``'s neurons (x: (trials, N, bins)); only
    those and the readout are trained, on (x, y); the shared trunk is frozen."""
    import copy

    torch.manual_seed(seed)
    model = copy.deepcopy(pretrained)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.add_mouse(mouse, x.shape[1])
    trainable = [model.units[mouse], *model.readout.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    fit_full_batch(model, trainable, x, y, mouse, recipe.adapt_steps, recipe.adapt_lr, recipe.weight_decay)
    return model


def from_scratch(config: DecoderConfig, mouse: str, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                 seed: int) -> PoyoLite:
    torch.manual_seed(seed)
    model = PoyoLite(config, {mouse: x.shape[1]})
    fit_full_batch(model, list(model.parameters()), x, y, mouse, recipe.scratch_steps, recipe.scratch_lr,
                   recipe.weight_decay)
    return model


def predict(model: PoyoLite, x: torch.Tensor, mouse: str) -> np.ndarray:
    with torch.no_grad():
        return model(x, mouse).argmax(dim=1).numpy()


# --- protocol ----------------------------------------------------------------------------------------------
def outer_folds(targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from rtcalm.eval.decode import fold_indices

    return fold_indices(targets, "accuracy", FOLDS, FOLD_SEED)


def calibration_sets(targets: np.ndarray, train: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Nested, class-balanced calibration trials drawn from ``train``: 2 / 4 / 8 per class for 16 / 32 / 64
    trials (fewer when a class has fewer training trials), and ``all`` = ``train``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    shuffled = {c: rng.permutation(train[targets[train] == c]) for c in classes}
    sets = {}
    for size in SIZES[:-1]:
        per_class = int(size) // len(classes)
        sets[size] = np.sort(np.concatenate([shuffled[c][:per_class] for c in classes]))
    sets["all"] = np.sort(train)
    return sets


def lda_binned(recording, data):
    """decode-eval's ``lda_binned`` (:class:`rtcalm.eval.decode.BinnedDecoder`) on the mouse's trials."""
    from rtcalm.eval.decode import binned_baselines

    return binned_baselines(recording, data)["lda_binned"]


def lda_inputs(mouse: Mouse):
    """(recording, task data) for decode-eval's ``lda_binned`` on ``mouse``: a Recording of the response
    window alone, so ``binned_baselines`` reads exactly ``mouse.responses``."""
    from rtcalm.data import Recording, RecordingMeta, TrialTable
    from rtcalm.eval.decode import task_data

    frames = mouse.responses.shape[1]
    recording = Recording(dff=mouse.responses, rate_hz=16.0, neuron_ids=np.arange(mouse.responses.shape[2]),
                          trial_time_s=np.arange(frames) / 16.0,
                          trials=TrialTable({"onset_s": np.full(mouse.targets.shape[0], np.nan),
                                             "direction_deg": 45.0 * mouse.targets}),
                          meta=RecordingMeta(source=mouse.name, mouse=mouse.name))
    data = task_data(recording, "direction")
    assert np.array_equal(data.targets, mouse.targets) and data.response_frames.all()
    return recording, data


def within_mouse_check(mice: list[Mouse], config: DecoderConfig, recipe: Recipe, seed: int) -> dict:
    """A diagnostic on the pretraining mice alone (no left-out mouse): the same pretraining on each mouse's
    training trials of its first outer fold (4/5), scored on that fold's test trials (1/5) with the mouse's
    own learned embeddings; and ``lda_binned`` on the same split. Does the pretrained network decode new
    trials of the mice it was trained on?"""
    train_mice, held_out, lda = [], {}, {}
    for mouse in mice:
        train, test = outer_folds(mouse.targets)[0]
        train_mice.append(Mouse(mouse.name, mouse.responses[train], mouse.targets[train]))
        held_out[mouse.name] = (features(mouse.responses[test], mouse.responses[train], config.bins), mouse.targets[test])
        recording, data = lda_inputs(mouse)
        lda[mouse.name] = float(np.mean(lda_binned(recording, data)(train, test) == mouse.targets[test]))
    model, fit = pretrain(train_mice, config, recipe, seed)
    accuracy = {name: float(np.mean(predict(model, x, name) == y)) for name, (x, y) in held_out.items()}
    return {"seed": seed, "train_accuracy": fit["train_accuracy"], "held_out_accuracy": accuracy,
            "lda_held_out_accuracy": lda}


def summary(folds: list[float]) -> dict:
    values = np.asarray(folds, dtype=np.float64)
    return {"mean": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(values.size)),
            "folds": [float(v) for v in values]}


def evaluate_left_out(mouse: Mouse, models: dict[int, PoyoLite], config: DecoderConfig, recipe: Recipe,
                      mouse_index: int) -> dict:
    """Fold accuracies of every decoder at every calibration size on one left-out mouse; ``models``: the
    pretrained model of each seed (pretrained without this mouse)."""
    seeds = sorted(models)
    accuracy = {d: {s: {size: [] for size in SIZES} for s in (seeds if d != "lda" else [None])} for d in DECODERS}
    calibration_trials = {size: [] for size in SIZES}
    fit_losses = {d: {size: [] for size in SIZES} for d in ("pretrained", "scratch")}
    lda_bins = {size: [] for size in SIZES}  # the time bins each fold's inner CV chose
    recording, data = lda_inputs(mouse)  # decode-eval's lda_binned on exactly these trials
    y_all = torch.from_numpy(mouse.targets)
    for fold, (train, test) in enumerate(outer_folds(mouse.targets)):
        sets = calibration_sets(mouse.targets, train, seed=1000 * mouse_index + fold)
        for size, calibration in sets.items():
            assert not np.intersect1d(calibration, test).size
            calibration_trials[size].append(int(calibration.size))
            x = features(mouse.responses, mouse.responses[calibration], config.bins)
            lda = lda_binned(recording, data)
            accuracy["lda"][None][size].append(float(np.mean(lda(calibration, test) == mouse.targets[test])))
            lda_bins[size].append(lda.selected[-1]["bins"])
            for seed in seeds:
                adapted = adapt(models[seed], mouse.name, x[calibration], y_all[calibration], recipe, seed)
                accuracy["pretrained"][seed][size].append(
                    float(np.mean(predict(adapted, x[test], mouse.name) == mouse.targets[test])))
                scratch = from_scratch(config, mouse.name, x[calibration], y_all[calibration], recipe, seed)
                accuracy["scratch"][seed][size].append(
                    float(np.mean(predict(scratch, x[test], mouse.name) == mouse.targets[test])))
                fit_losses["pretrained"][size].append(adapted.fit_loss)
                fit_losses["scratch"][size].append(scratch.fit_loss)
    # the last training step's loss on the calibration trials (dropout on), mean over folds and seeds
    result = {"neurons": int(mouse.responses.shape[2]), "calibration_trials": calibration_trials,
              "lda_bins": lda_bins,
              "calibration_loss": {d: {size: float(np.mean(v)) for size, v in losses.items()}
                                   for d, losses in fit_losses.items()}}
    for decoder in DECODERS:
        per_seed = accuracy[decoder]
        if decoder == "lda":
            result[decoder] = {size: summary(per_seed[None][size]) for size in SIZES}
            continue
        # the seed mean per fold, then mean and SE over folds
        result[decoder] = {size: summary(np.mean([per_seed[s][size] for s in seeds], axis=0)) for size in SIZES}
        result[decoder + "_per_seed"] = {str(s): {size: summary(per_seed[s][size]) for size in SIZES} for s in seeds}
    return result


def mean_over_mice(per_mouse: dict, key: str) -> dict:
    """{size: {mean, se}} over mice of ``per_mouse[mouse][key]`` (se: sqrt(sum se²) / mice)."""
    rows = [per_mouse[m][key] for m in per_mouse]
    return {size: {"mean": float(np.mean([r[size]["mean"] for r in rows])),
                   "se": float(np.sqrt(np.sum([r[size]["se"] ** 2 for r in rows])) / len(rows))} for size in SIZES}


def run(mice: list[Mouse], seeds: list[int], config: DecoderConfig, recipe: Recipe, log=print) -> dict:
    per_mouse, pretraining, within = {}, {}, {}
    for index, left_out in enumerate(mice):
        others = [m for m in mice if m is not left_out]
        models = {}
        for seed in seeds:
            start = time.perf_counter()
            models[seed], fit = pretrain(others, config, recipe, seed)
            pretraining.setdefault(str(seed), {})[left_out.name] = fit | {"seconds": time.perf_counter() - start}
            log(f"{left_out.name} left out, seed {seed}: pretraining loss {fit['train_loss']:.3f}, "
                f"accuracy {fit['train_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)")
        start = time.perf_counter()
        within[left_out.name] = within_mouse_check(others, config, recipe, seeds[0])
        log(f"{left_out.name} left out, within the pretraining mice: held-out accuracy "
            f"{np.mean(list(within[left_out.name]['held_out_accuracy'].values())):.3f}, lda "
            f"{np.mean(list(within[left_out.name]['lda_held_out_accuracy'].values())):.3f} "
            f"({time.perf_counter() - start:.0f} s)")
        start = time.perf_counter()
        per_mouse[left_out.name] = evaluate_left_out(left_out, models, config, recipe, index)
        row = per_mouse[left_out.name]
        log(f"{left_out.name}: " + "; ".join(f"{size}: " + " ".join(f"{d} {row[d][size]['mean']:.3f}" for d in DECODERS)
                                             for size in SIZES) + f" ({time.perf_counter() - start:.0f} s)")
    mean = {d: mean_over_mice(per_mouse, d) for d in DECODERS}
    mean_per_seed = {d: {str(s): _seed_mean(per_mouse, d, s) for s in seeds} for d in ("pretrained", "scratch")}
    return {"sizes": list(SIZES), "decoders": list(DECODERS), "seeds": seeds, "chance": 0.125, "folds": FOLDS,
            "fold_seed": FOLD_SEED, "config": asdict(config), "recipe": asdict(recipe), "pretraining": pretraining,
            "mean": mean, "mean_per_seed": mean_per_seed, "per_mouse": per_mouse, "within_pretraining_mice": within}


def _seed_mean(per_mouse: dict, decoder: str, seed: int) -> dict:
    return mean_over_mice({m: {decoder: per_mouse[m][decoder + "_per_seed"][str(seed)]} for m in per_mouse}, decoder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="pretraining seeds")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("RTCALM_REAL_DATA", REPOSITORY.parent / "shared" / "data" / "real")))
    parser.add_argument("--result", type=Path, default=None,
                        help="store the result (with the command, commit and machine) here, e.g. "
                             "docs/results/decoder_pretraining.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from rtcalm.eval.report import provenance

    made_by = provenance(["python", "tools/decoder_pretraining.py", *(sys.argv[1:] if argv is None else argv)])
    wall, cpu = time.perf_counter(), time.process_time()
    mice = load_mice(args.data_root)
    result = run(mice, args.seeds, DecoderConfig(), Recipe(), log=lambda s: print(s, file=sys.stderr, flush=True))
    result = {"made_by": made_by, "wall_time_s": round(time.perf_counter() - wall, 1),
              "cpu_time_s": round(time.process_time() - cpu, 1), "threads": torch.get_num_threads(), **result}
    for size in SIZES:
        print(f"{size:>4} trials: " + "  ".join(f"{d} {result['mean'][d][size]['mean']:.3f} ± "
                                               f"{result['mean'][d][size]['se']:.3f}" for d in DECODERS))
    print(f"wall {result['wall_time_s']} s, cpu {result['cpu_time_s']} s", file=sys.stderr)
    if args.result is not None:
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.result}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
