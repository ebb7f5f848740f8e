"""The pretraining trainer on tiny synthetic recordings: split by mouse, end-to-end run, outputs, resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtcalm.data import Recording, RecordingMeta, save_recording
from rtcalm.model import CalmConfig, load_model
from trainer.__main__ import main as trainer_main
from trainer.config import TrainConfigError, load_train_config, parse_train_config
from trainer.data import TrainDataError, load_sessions, split_by_mouse
from trainer.loop import lr_at
from trainer.pretrain import TrainingError, pretrain

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "name": "tiny",
    "seed": 3,
    "threads": 1,
    "data": {"files": ["*.rtcalm.h5"], "validation_mice": ["mouse-b"], "test_mice": ["mouse-c"],
             "min_epoch_frames": 32},
    "model": {"token_window_frames": 4, "codebook_size": 32, "code_dim": 4, "tokenizer_hidden": 16,
              "d_model": 16, "n_layers": 1, "n_heads": 2, "mlp_hidden": 32, "attention_window_frames": 8,
              "n_latents": 4, "forecast_horizon_frames": 5},
    "tokenizer": {"steps": 8, "batch_windows": 256, "validate_every": 4, "validation_windows": 500},
    "transformer": {"steps": 8, "batch_crops": 2, "context_frames": 24, "max_neurons": 12, "warmup_steps": 2,
                    "validate_every": 4, "checkpoint_every": 4, "validation_crops_per_epoch": 2},
    "eval_horizons": [1, 5],
}


def write_recordings(root: Path) -> Path:
    """Three mice; mouse-a has two sessions. Smooth AR(1) traces with a shared component."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (mouse, n_neurons, n_frames) in enumerate([("mouse-a", 14, 300), ("mouse-a", 10, 260),
                                                       ("mouse-b", 12, 240), ("mouse-c", 9, 250)]):
        shared = np.cumsum(rng.normal(size=n_frames)) * 0.05
        x = np.zeros((n_frames, n_neurons), np.float32)
        for t in range(1, n_frames):
            x[t] = 0.9 * x[t - 1] + 0.3 * rng.normal(size=n_neurons) + 0.1 * shared[t]
        rec = Recording(dff=x, rate_hz=30.0, neuron_ids=np.arange(n_neurons),
                        meta=RecordingMeta(source=f"synthetic {i}", format="test", mouse=mouse, session=f"s{i}"))
        save_recording(rec, root / f"{mouse}_s{i}.rtcalm.h5")
    # a recording at another rate: skipped, not trained on
    save_recording(Recording(dff=rng.normal(size=(200, 5)).astype(np.float32), rate_hz=16.0,
                             neuron_ids=np.arange(5), meta=RecordingMeta(mouse="mouse-a")),
                   root / "mouse-a_16hz.rtcalm.h5")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_recordings(tmp_path_factory.mktemp("recordings"))


def tiny_config(**changes):
    d = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            d[section][name] = value
        else:
            d[section] = value
    return parse_train_config(d)


def test_shipped_configs_parse():
    for name in ("pretrain_default.json", "pretrain_tokens.json", "ablation_continuous.json", "pretrain_smoke.json"):
        config = load_train_config(REPO / "configs" / name)
        assert not set(config.data.validation_mice) & set(config.data.test_mice)
    default = load_train_config(REPO / "configs" / "pretrain_default.json")
    tokens = load_train_config(REPO / "configs" / "pretrain_tokens.json")
    continuous = load_train_config(REPO / "configs" / "ablation_continuous.json")
    assert default.model.input_mode == "encoder" and default.transformer.forecast_loss == "copy_last_ratio"
    assert tokens.model.input_mode == "tokens" and continuous.model.input_mode == "continuous"
    assert tokens.model == CalmConfig()  # the dataclass defaults are the tokenized model's
    # the default is trained and tested on the same mice as the tokenized model it replaced
    assert default.data == tokens.data
    # the ablation changes the input representation and nothing else
    assert {**continuous.to_dict(), "name": None, "model": None} == {**tokens.to_dict(), "name": None, "model": None}
    assert {**continuous.model.to_dict(), "input_mode": None} == {**tokens.model.to_dict(), "input_mode": None}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(epochs=3), "unknown top-level keys"),
    (lambda d: d["transformer"].update(lr_max=1.0), "unknown keys in transformer"),
    (lambda d: d["data"].update(test_mice=["mouse-b"]), "both validation_mice and test_mice"),
    (lambda d: d["model"].update(d_model=15), "divisible"),
    (lambda d: d.update(eval_horizons=[30]), "eval_horizons"),
    (lambda d: d.pop("data"), "missing required key 'data'"),
])
def test_config_is_strict(edit, message):
    d = copy.deepcopy(TINY)
    edit(d)
    with pytest.raises(TrainConfigError, match=message):
        parse_train_config(d)


def test_split_by_mouse_holds_out_every_neuron_of_a_mouse(data_root):
    config = tiny_config()
    logged = []
    sessions, skipped = load_sessions(data_root, config.data, log=logged.append)
    assert [Path(f).name for f, _ in skipped] == ["mouse-a_16hz.rtcalm.h5"] and "16 Hz" in skipped[0][1]
    train, validation, test = split_by_mouse(sessions, ["mouse-b"], ["mouse-c"])
    assert {s.mouse for s in train} == {"mouse-a"} and len(train) == 2
    assert {s.mouse for s in validation} == {"mouse-b"} and {s.mouse for s in test} == {"mouse-c"}
    for s in sessions:  # z-scored per neuron
        assert np.allclose(s.epochs[0].mean(0).numpy(), 0, atol=1e-4)
        assert np.allclose(s.epochs[0].std(0, unbiased=False).numpy(), 1, atol=1e-3)
    with pytest.raises(TrainDataError, match="'mouse-x' has no usable recording"):
        split_by_mouse(sessions, ["mouse-x"], [])


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_at(55, 100, 1.0, 10, 0.1) < 1.0


def test_end_to_end_run_writes_safe_checkpoints_and_held_out_metrics(data_root, tmp_path):
    out = tmp_path / "run"
    metrics = pretrain(tiny_config(), data_root, out, progress=False, log=lambda *_: None)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert set(files) == {
        "train_config.json", "log.jsonl", "steps.csv", "metrics.json",
        "checkpoints/best/config.json", "checkpoints/best/model.safetensors", "checkpoints/best/README.md",
        "checkpoints/last/config.json", "checkpoints/last/model.safetensors",
        "checkpoints/last/optimizer.safetensors", "checkpoints/last/rng.safetensors",
        "checkpoints/last/trainer_state.json",
    }
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["data"]["train"]["mice"] == ["mouse-a"]
    assert not any("mouse-b" in f or "mouse-c" in f for f in metrics["data"]["train"]["files"])
    for split in ("validation", "test"):
        tok = metrics["tokenizer"][split]
        assert -1.0 < tok["reconstruction_r2"] <= 1.0 and 1.0 <= tok["perplexity"] <= 32
        scores = metrics["forecast_protocol"][split]
        assert set(scores["baselines"]) == {"copy_last", "context_mean", "pooled_ar"}
        assert set(scores["model"]) == {"1", "5"}
        assert np.isfinite(scores["model"]["5"]["mse_ratio"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "tokenizer"] == [4, 8]
    assert [r["step"] for r in log if r["stage"] == "transformer"] == [4, 8]
    model = load_model(out / "checkpoints" / "best")
    document = json.loads((out / "checkpoints/best/config.json").read_text())
    assert document["metadata"]["pooled_ar"]["horizon"] == 5
    assert document["metadata"]["metrics"]["name"] == "tiny"
    frames = torch.randn(40, 6)
    with torch.no_grad():
        full = model(frames).forecast
    state = model.new_state(6)
    assert (model.step_many(frames, state)[0].forecast - full).abs().max().item() <= 1e-4
    assert "mouse-c" in (out / "checkpoints/best/README.md").read_text()


def test_a_short_run_of_each_stage_lowers_its_loss(data_root, tmp_path):
    """100 steps of each stage in the trainer's loop, logged every step: the tokenizer's reconstruction
    loss and the transformer's forecast loss fall (observed: from 1.01 to 0.18, and from 0.78 to 0.63,
    means of the first and last 10 steps)."""
    import csv

    from trainer.distributed import DistributedSettings

    config = tiny_config(**{"tokenizer.steps": 100, "tokenizer.warmup_steps": 2, "tokenizer.lr": 5e-3,
                            "tokenizer.validate_every": 100, "transformer.steps": 100, "transformer.warmup_steps": 2,
                            "transformer.lr": 5e-3, "transformer.validate_every": 100,
                            "transformer.checkpoint_every": 100, "transformer.batch_crops": 4})
    out = tmp_path / "run"
    pretrain(config, data_root, out, progress=False, log=lambda *_: None, settings=DistributedSettings(log_every=1))
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    for stage, factor in (("tokenizer", 0.5), ("transformer", 0.9)):
        losses = [float(row["loss"]) for row in rows if row["stage"] == stage]
        assert len(losses) == 100
        assert np.mean(losses[-10:]) < factor * np.mean(losses[:10]), stage


def last_weights(out: Path) -> dict:
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


@pytest.mark.parametrize("stop_after", [5, 8, 11])  # in the tokenizer stage; right after the skip fit; in stage 2
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data_root, tmp_path, stop_after):
    config = tiny_config()
    straight = tmp_path / "straight"
    pretrain(config, data_root, straight, progress=False, log=lambda *_: None)
    interrupted = tmp_path / "interrupted"
    partial = pretrain(config, data_root, interrupted, progress=False, stop_after_steps=stop_after,
                       log=lambda *_: None)
    assert "stopped_at" in partial
    state = json.loads((interrupted / "checkpoints/last/trainer_state.json").read_text())
    assert state["stage"] == ("tokenizer" if stop_after < 8 else "transformer")
    with pytest.raises(TrainingError, match="--resume"):
        pretrain(config, data_root, interrupted, progress=False, log=lambda *_: None)
    pretrain(config, data_root, interrupted, resume=True, progress=False, log=lambda *_: None)
    a, b = last_weights(straight), last_weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((straight / "metrics.json").read_text())["transformer"] == \
        json.loads((interrupted / "metrics.json").read_text())["transformer"]


def test_resume_refuses_a_different_config(data_root, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_config(), data_root, out, progress=False, stop_after_steps=3, log=lambda *_: None)
    with pytest.raises(TrainingError, match="different config"):
        pretrain(tiny_config(**{"transformer.lr": 0.5}), data_root, out, resume=True, progress=False,
                 log=lambda *_: None)


def test_command_line(data_root, tmp_path, capsys):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(TINY))
    out = tmp_path / "cli-run"
    code = trainer_main(["pretrain", "--config", str(config_path), "--data-root", str(data_root),
                         "--out", str(out), "--no-progress"])
    assert code == 0 and (out / "checkpoints/best/model.safetensors").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "data": {**TINY["data"], "files": ["nothing-*.h5"]}}))
    assert trainer_main(["pretrain", "--config", str(bad), "--data-root", str(data_root),
                         "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "matches no file" in capsys.readouterr().err


def test_autoregressive_skip_starts_at_the_least_squares_ar_fit():
    """On an AR(1) process x(t+1) = 0.9 x(t) + noise the best linear forecast of x(t+k) is 0.9^k x(t):
    the fitted skip must find it, and the model's forecast must then be the skip alone."""
    from rtcalm.model import Calm
    from trainer.pretrain import fit_autoregressive_skip, freeze_tokenizer

    torch.manual_seed(0)
    config = CalmConfig(**{**TINY["model"], "autoregressive_order": 3})
    model = Calm(config)
    generator = torch.Generator().manual_seed(1)
    context, horizon = 24, config.forecast_horizon_frames

    def ar1_crops():
        x = torch.empty(4, context + horizon, 16)
        x[:, 0] = torch.randn(4, 16, generator=generator) / (1 - 0.81) ** 0.5
        for t in range(1, x.shape[1]):
            x[:, t] = 0.9 * x[:, t - 1] + torch.randn(4, 16, generator=generator)
        return x

    fit = fit_autoregressive_skip(model, ar1_crops, n_batches=100, context=context)
    assert fit["rows"] > 10_000 and 0.9 < fit["train_mse"] < 3.5  # 1 at k=1 up to 1 + ... + 0.9^8 at k=5
    latest_value = model.forecast_skip.weight[:, -2]  # [value, missing] pairs oldest first: -2 = x(t)
    expected = torch.tensor([0.9 ** k for k in range(1, horizon + 1)])
    assert torch.allclose(latest_value, expected, atol=0.03), latest_value
    assert model.forecast_skip.weight[:, :-2:2].abs().max() < 0.05  # older values add nothing to AR(1)
    model.eval()
    crop = ar1_crops()
    with torch.no_grad():
        windows, _ = model.raw_windows(crop, 3)
        assert torch.allclose(model(crop).forecast, model.forecast_skip(windows), atol=1e-6)
    # and it is not weight-decayed towards zero afterwards
    freeze_tokenizer(model)
    groups = model.configure_optimizers(0.05, 1e-3, (0.9, 0.95)).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.forecast_skip.weight) not in decayed and id(model.blocks[0].mlp.fc.weight) in decayed
    trained = {id(p) for g in groups for p in g["params"]}  # the frozen tokenizer is not optimised
    assert not trained & {id(p) for p in model.tokenizer.parameters()} and id(model.missing_embedding) in trained


def test_skip_init_batches_must_be_a_whole_number():
    bad = copy.deepcopy(TINY)
    bad["transformer"]["skip_init_batches"] = -1
    with pytest.raises(TrainConfigError, match="skip_init_batches"):
        parse_train_config(bad)


ENCODER_MODEL = {"input_mode": "encoder", "token_window_frames": 16, "encoder_hidden": 24, "d_model": 16, "n_layers": 1,
                 "n_heads": 2, "mlp_hidden": 32, "attention_window_frames": 4, "n_latents": 4,
                 "forecast_horizon_frames": 5, "autoregressive_skip": False}


def encoder_config():
    d = copy.deepcopy(TINY)
    d["model"] = ENCODER_MODEL
    d["tokenizer"] = {"steps": 0}
    d["transformer"].update(context_frames=24, first_scored_frame=15, forecast_loss="copy_last_ratio",
                            next_code_weight=0.0, skip_init_batches=0, per_neuron_steps=30, freeze_per_neuron=True)
    return parse_train_config(d)


def test_encoder_mode_trains_without_a_tokenizer_from_the_per_neuron_warm_start(data_root, tmp_path):
    config = encoder_config()
    metrics = pretrain(config, data_root, tmp_path / "run", progress=False, log=lambda *_: None)
    assert metrics["tokenizer"] == {}  # no stage 1
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["per_neuron_initialised"] and state["per_neuron_warm_start"]["steps"] == 30
    assert metrics["forecast_protocol"]["test"]["model"]["1"]["mse_ratio"] > 0
    # the per-neuron path is the warm start's, untouched by stage 2 (frozen); the population pathway trained
    from trainer.baselines import BaselineRecipe, fit_baseline
    from trainer.data import load_sessions, split_by_mouse

    sessions, _ = load_sessions(data_root, config.data, log=lambda *_: None)
    train, _, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    baseline, _ = fit_baseline("mlp", train, BaselineRecipe(steps=30, seed=config.seed), 5, progress=False,
                               context_frames=16, hidden=24)
    model = load_model(tmp_path / "run" / "checkpoints" / "last")
    assert torch.equal(model.forecast_head.weight, baseline.head.weight)
    assert torch.equal(model.temporal_encoder.fc_in.weight[:, :16], baseline.encoder.fc_in.weight)
    assert not model.temporal_encoder.fc_in.weight[:, 16:].any()  # the baseline reads no missing flags
    assert model.population_film.weight.abs().sum() > 0


def test_encoder_mode_resume_is_bit_identical(data_root, tmp_path):
    config = encoder_config()
    pretrain(config, data_root, tmp_path / "full", progress=False, log=lambda *_: None)
    assert pretrain(config, data_root, tmp_path / "split", progress=False, stop_after_steps=3,
                    log=lambda *_: None)["stopped_at"]["step"] == 3
    pretrain(config, data_root, tmp_path / "split", resume=True, progress=False, log=lambda *_: None)
    full = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_encoder_only_options_are_refused_for_other_modes():
    with pytest.raises(TrainConfigError, match="input_mode 'encoder' only"):
        tiny_config(**{"transformer.per_neuron_steps": 10})
