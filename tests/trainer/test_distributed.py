"""Distributed pretraining (trainer.distributed): a 2-process gloo run under torchrun takes the same steps as
the single-process trainer with the same global batch, on in-memory and on memory-mapped (store) sessions,
with gradient accumulation, and a checkpoint resumes across world sizes 1 <-> 2.

The model has no dropout here: dropout masks depend on the batch shape, so with dropout the runs are
statistically, not numerically, alike. Weights agree up to float summation order (a few 1e-6); the
tolerance is checked to be far below what one optimizer step changes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtcalm.data import load_recording
from rtcalm.data.store import SessionStore
from trainer.__main__ import main as trainer_main
from trainer.config import parse_train_config
from trainer.data import CropSampler, WindowSampler, load_sessions, split_by_mouse
from trainer.distributed import (
    DistributedConfigError,
    DistributedSettings,
    Runtime,
    ShardedCropSampler,
    ShardedWindowSampler,
    gather_global_rows,
    map_training_sessions,
    micro_batch_size,
    pretrain_distributed,
    rank_rows,
    resolve_precision,
    select_store_sessions,
)
from trainer.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer_pretrain import TINY, write_recordings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 5e-5  # float summation order; one optimizer step at the final lr moves weights by ~1e-3

DDP_CONFIG = copy.deepcopy(TINY)
DDP_CONFIG["model"]["dropout"] = 0.0
DDP_CONFIG["data"]["files"] = ["sessions/*.rtcalm.h5"]
DDP_CONFIG["transformer"].update(batch_crops=4, min_lr=1e-3)  # 4 crops: 2 ranks x 2 micro-batches


def quiet(*_):
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The same sessions twice: a SessionStore (memory-mapped under torchrun) and a plain folder with a copy
    of its session files (loaded into memory)."""
    base = tmp_path_factory.mktemp("ddp")
    recordings = write_recordings(base / "recordings")
    store = base / "store"
    SessionStore.build((load_recording(p) for p in sorted(recordings.glob("*.rtcalm.h5"))), store)
    files = base / "files"
    shutil.copytree(store / "sessions", files / "sessions")
    config_path = base / "ddp.json"
    config_path.write_text(json.dumps(DDP_CONFIG))
    return {"store": store, "files": files, "config": config_path}


@pytest.fixture(scope="module")
def reference(roots, tmp_path_factory) -> Path:
    """The single-process trainer's run: what every distributed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    pretrain(parse_train_config(DDP_CONFIG), roots["files"], out, progress=False, log=quiet)
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "trainer", "pretrain", "--no-progress", *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --- the global batch, sliced -----------------------------------------------------------------------------

def test_rank_rows_tile_the_global_batch_in_order():
    b, world, accumulation = 3, 2, 2
    rows = [rank_rows(b, world, accumulation, r) for r in range(world)]
    assert rows[0].tolist() == [0, 1, 2, 6, 7, 8] and rows[1].tolist() == [3, 4, 5, 9, 10, 11]
    # gathering micro-batch by micro-batch restores the global order (single process: no-op)
    local = torch.arange(12.0)[rows[0]]
    assert torch.equal(gather_global_rows(Runtime(), local, 2), local)
    with pytest.raises(DistributedConfigError, match="not divisible by world size 2 x accumulation steps 3"):
        micro_batch_size(4, 2, 3, "transformer.batch_crops")
    assert micro_batch_size(4096, 8, 2, "tokenizer.batch_windows") == 256


@pytest.mark.parametrize("source", ["memory", "mapped"])
def test_sharded_samplers_draw_exactly_the_single_process_samples(roots, source):
    config = parse_train_config(DDP_CONFIG)
    sessions, _ = load_sessions(roots["files"], config.data, log=quiet)
    train, _, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    if source == "mapped":
        selections, _ = select_store_sessions(roots["store"], config.data)
        sharded_sessions = map_training_sessions(Runtime(), roots["store"],
                                                 [s for s in selections if s.mouse == "mouse-a"])
        assert isinstance(sharded_sessions[0].epochs[0].values, np.memmap)
    else:
        sharded_sessions = train
    n, W = 64, 4
    expected = WindowSampler(train, W).sample(n, torch.Generator().manual_seed(7))
    crops = CropSampler(train, 29, 12).sample(4, torch.Generator().manual_seed(8))
    for rank in range(2):
        rows = rank_rows(n // 4, 2, 2, rank)
        generator = torch.Generator().manual_seed(7)
        got = ShardedWindowSampler(sharded_sessions, W).sample_rows(n, generator, rows)
        assert torch.equal(got, expected[rows])  # bit-identical values, z-scored on read when mapped
        reference_generator = torch.Generator().manual_seed(7)
        WindowSampler(train, W).sample(n, reference_generator)
        assert torch.equal(generator.get_state(), reference_generator.get_state())  # same draws consumed
        crop_rows = rank_rows(1, 2, 2, rank)
        got_crops = ShardedCropSampler(sharded_sessions, 29, 12).sample_rows(4, torch.Generator().manual_seed(8), crop_rows)
        assert torch.equal(got_crops, crops[crop_rows])


# --- torchrun, 2 processes, gloo ------------------------------------------------------------------------------

@pytest.mark.slow  # torchrun starts two interpreters
def test_two_process_run_matches_single_process(roots, reference, tmp_path):
    out = tmp_path / "ddp"
    torchrun("--config", roots["config"], "--data-root", roots["files"], "--out", out, "--accumulation-steps", 2,
             "--log-every", 4)
    assert max_difference(reference, out) < TOLERANCE
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert state["stage"] == "done" and state["distributed"]["world_size"] == 2
    assert state["distributed"]["accumulation_steps"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # rank 0 only: no duplicates
    ref_log = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [(r["stage"], r["step"]) for r in ref_log]
    for ours, theirs in zip(log, ref_log, strict=True):
        key = "train_mse" if ours["stage"] == "tokenizer" else "train_loss"
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4)  # the global loss, not a rank's share
    rows = (out / "steps.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss,lr,samples_per_s,wall_s"
    assert [r.split(",")[:2] for r in rows[1:]] == [["tokenizer", "4"], ["tokenizer", "8"],
                                                    ["transformer", "4"], ["transformer", "8"]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["mice"] == ["mouse-a"]
    assert (out / "checkpoints/best/README.md").is_file()


@pytest.mark.slow  # torchrun starts two interpreters
def test_resume_from_two_processes_in_one_and_from_one_in_two(roots, reference, tmp_path):
    # 2 -> 1: two processes on the memory-mapped store stop inside the transformer stage; the
    # single-process trainer finishes the run.
    out = tmp_path / "two_then_one"
    torchrun("--config", roots["config"], "--data-root", roots["store"], "--out", out, "--stop-after-steps", 11)
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert (state["stage"], state["step"]) == ("transformer", 3)
    assert not (out / "metrics.json").exists()
    pretrain(parse_train_config(DDP_CONFIG), roots["files"], out, resume=True, progress=False, log=quiet)
    assert max_difference(reference, out) < TOLERANCE

    # 1 -> 2: the single-process trainer stops inside the tokenizer stage; two processes finish it.
    out = tmp_path / "one_then_two"
    pretrain(parse_train_config(DDP_CONFIG), roots["files"], out, progress=False, stop_after_steps=5, log=quiet)
    result = torchrun("--config", roots["config"], "--data-root", roots["store"], "--out", out, "--resume")
    assert "stage tokenizer, step 5 (world size 1 -> 2)" in result.stdout + result.stderr
    assert max_difference(reference, out) < TOLERANCE


# --- in process (world size 1) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_after", [5, 11])
def test_resume_continues_bit_identically(roots, tmp_path, stop_after):
    config = parse_train_config(DDP_CONFIG)
    settings = DistributedSettings(accumulation_steps=2)
    straight = tmp_path / "straight"
    pretrain_distributed(config, roots["store"], straight, settings, progress=False, log=quiet, runtime=Runtime())
    interrupted = tmp_path / "interrupted"
    partial = pretrain_distributed(config, roots["store"], interrupted, settings, progress=False, log=quiet,
                                   stop_after_steps=stop_after, runtime=Runtime())
    assert partial == {"stopped_at": {"stage": "tokenizer" if stop_after < 8 else "transformer",
                                      "step": stop_after if stop_after < 8 else stop_after - 8}}
    pretrain_distributed(config, roots["store"], interrupted, settings, resume=True, progress=False, log=quiet,
                         runtime=Runtime())
    a, b = weights(straight), weights(interrupted)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the final report on a memory-mapped store fits the pooled AR baseline on a bounded sample
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert "pooled_ar" in metrics["forecast_protocol"]["validation"]["baselines"]


def test_tolerance_is_far_below_one_optimizer_step(roots, reference, tmp_path):
    """A run one step short of the reference is outside the tolerance: the comparisons above can fail."""
    short = tmp_path / "short"
    pretrain_distributed(parse_train_config(DDP_CONFIG), roots["files"], short, progress=False, log=quiet,
                         stop_after_steps=15, runtime=Runtime())
    assert max_difference(reference, short) > 10 * TOLERANCE


# --- bad input -------------------------------------------------------------------------------------------------

def test_bad_settings_are_clear_errors(roots, tmp_path):
    with pytest.raises(DistributedConfigError, match="accumulation steps must be a positive integer"):
        DistributedSettings(accumulation_steps=0)
    with pytest.raises(DistributedConfigError, match="precision must be one of"):
        DistributedSettings(precision="fp8")
    with pytest.raises(DistributedConfigError, match="only supported on CUDA"):
        resolve_precision("bf16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(DistributedConfigError, match="tokenizer.batch_windows = 256 .* not divisible"):
        pretrain_distributed(parse_train_config(DDP_CONFIG), roots["files"], tmp_path / "x",
                             DistributedSettings(accumulation_steps=3), progress=False, log=quiet, runtime=Runtime())
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_store_selection_errors(roots):
    d = copy.deepcopy(DDP_CONFIG)
    d["data"]["resample_other_rates"] = True
    with pytest.raises(Exception, match="resample_other_rates needs whole recordings"):
        select_store_sessions(roots["store"], parse_train_config(d).data)
    d = copy.deepcopy(DDP_CONFIG)
    d["data"]["files"] = ["manifest.json"]
    with pytest.raises(Exception, match="not a session of the store"):
        select_store_sessions(roots["store"], parse_train_config(d).data)
    selections, skipped = select_store_sessions(roots["store"], parse_train_config(DDP_CONFIG).data)
    assert [s.mouse for s in selections] == ["mouse-a", "mouse-a", "mouse-b", "mouse-c"]
    assert [reason for _, reason in skipped] == ["16 Hz, model rate 30 Hz"]


def test_command_line_refuses_distributed_options_without_torchrun(roots, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    code = trainer_main(["pretrain", "--config", str(roots["config"]), "--data-root", str(roots["files"]),
                         "--out", str(tmp_path / "x"), "--accumulation-steps", "2"])
    assert code == 2 and "--accumulation-steps only apply to distributed training" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trainer_main(["pretrain", "--config", str(roots["config"]), "--accumulation-steps", "0"])
    assert "expected a positive integer" in capsys.readouterr().err

