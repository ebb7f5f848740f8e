"""One training loop for one process and for torchrun (trainer.pretrain.pretrain): 2 gloo processes take
the same steps as 1 process with the same global batch, with the curriculum and the default recipe's
encoder-mode options too; a checkpoint resumes across world sizes 1 <-> 2; every process exits with no
gloo thread left.

The models have no dropout here: rank 1 draws its own dropout masks, so with dropout the runs are
statistically, not numerically, alike. Without it, 1 and 2 processes differ only in float summation
order: the gradient all-reduce adds two partial gradients, and each process's loss sums half the rows.
Observed: logged losses within 1e-7 (relative ~1e-7, float32 rounding), weights within 1e-7. The
tolerances below are 100x that, and are checked to be far below what one optimizer step changes.
"""

from __future__ import annotations

import copy
import csv
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
from test_trainer_curriculum import write_mixed_recordings
from test_trainer_pretrain import ENCODER_MODEL, TINY, write_recordings

from rtcalm.data import load_recording
from rtcalm.data.store import SessionStore
from trainer.config import parse_train_config
from trainer.data import (
    CropSampler,
    TokenWindowSampler,
    load_sessions,
    map_training_sessions,
    select_store_sessions,
    split_by_mouse,
)
from trainer.distributed import (
    DistributedConfigError,
    DistributedSettings,
    Runtime,
    gather_global_rows,
    micro_batch_size,
    rank_rows,
    resolve_precision,
)
from trainer.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # weights: float summation order (observed ~1e-7); one optimizer step moves them by ~1e-3
LOSS_TOLERANCE = 1e-5  # relative, per logged step loss (observed ~1e-7)

DDP_CONFIG = copy.deepcopy(TINY)
DDP_CONFIG["model"]["dropout"] = 0.0
DDP_CONFIG["data"]["files"] = ["sessions/*.rtcalm.h5"]
DDP_CONFIG["transformer"].update(batch_crops=4, min_lr=1e-3, missing_probability=0.05)  # 4 crops: 2 ranks x 2

# The shipped default recipe's options (encoder mode, copy_last_ratio from first_scored_frame, per-neuron
# warm start, frozen per-neuron path) with POYO-CAP's curriculum, on recordings with both kinds of neurons.
CURRICULUM_CONFIG = copy.deepcopy(TINY)
CURRICULUM_CONFIG["model"] = {**ENCODER_MODEL, "dropout": 0.0}
CURRICULUM_CONFIG["tokenizer"] = {"steps": 0}
CURRICULUM_CONFIG["transformer"].update(
    batch_crops=4, context_frames=24, first_scored_frame=15, forecast_loss="copy_last_ratio", next_code_weight=0.0,
    skip_init_batches=0, per_neuron_steps=30, freeze_per_neuron=True, neuron_curriculum="curriculum",
    predictable_thresholds="poyo-cap")

# Runs trainer's command line, then writes the native threads left in the process (after the process
# group's teardown) to $THREADS_DIR/rank<r>.txt: a gloo thread still alive there is torn down during
# interpreter finalisation. (It imports this checkout's trainer: torchrun_counting_threads puts the
# repository on PYTHONPATH.)
THREADS_AT_EXIT = """
import os, sys
from trainer.__main__ import main
code = main(sys.argv[1:])
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
with open(os.path.join(os.environ["THREADS_DIR"], f"rank{os.environ['RANK']}.txt"), "w") as f:
    f.write(" ".join(names))
sys.exit(code)
"""


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
    """The same sessions twice: a SessionStore (memory-mapped) and a plain folder with a copy of its
    session files (loaded into memory); and recordings with predictable and unpredictable neurons."""
    base = tmp_path_factory.mktemp("ddp")
    recordings = write_recordings(base / "recordings")
    store = base / "store"
    SessionStore.build((load_recording(p) for p in sorted(recordings.glob("*.rtcalm.h5"))), store)
    files = base / "files"
    shutil.copytree(store / "sessions", files / "sessions")
    config_path = base / "ddp.json"
    config_path.write_text(json.dumps(DDP_CONFIG))
    curriculum_path = base / "curriculum.json"
    curriculum_path.write_text(json.dumps(CURRICULUM_CONFIG))
    return {"store": store, "files": files, "config": config_path, "mixed": write_mixed_recordings(base / "mixed"),
            "curriculum": curriculum_path}


@pytest.fixture(scope="module")
def reference(roots, tmp_path_factory) -> Path:
    """One process, the global batch in 2 micro-batches (so each micro-batch is a rank's batch of the
    2-process runs): what every 2-process run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    pretrain(parse_train_config(DDP_CONFIG), roots["files"], out, progress=False, log=quiet,
             settings=DistributedSettings(accumulation_steps=2, log_every=1))
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / "last" / "model.safetensors"))


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def loss_curve(out: Path) -> list[tuple[str, int, float]]:
    with open(out / "steps.csv") as f:
        return [(row["stage"], int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]


def assert_same_curve(a: list, b: list) -> None:
    assert [(stage, step) for stage, step, _ in a] == [(stage, step) for stage, step, _ in b]
    for (_, _, la), (_, _, lb) in zip(a, b, strict=True):
        assert lb == pytest.approx(la, rel=LOSS_TOLERANCE)
    # the curve moves far more than the tolerance from one step to the next: a curve off by a step fails
    changes = [abs(la - lb) / abs(la) for (sa, _, la), (sb, _, lb) in zip(a, a[1:], strict=False) if sa == sb]
    assert min(changes) > 10 * LOSS_TOLERANCE


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "trainer", "pretrain", "--no-progress", *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def torchrun_counting_threads(tmp_path: Path, *args) -> list[str]:
    """Run 2 processes; returns each rank's native threads left after the teardown."""
    script = tmp_path / "threads_at_exit.py"
    script.write_text(THREADS_AT_EXIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THREADS_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               "pretrain", "--no-progress", *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]


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
def test_a_rank_reads_exactly_its_rows_of_the_whole_batch_draw(roots, source):
    config = parse_train_config(DDP_CONFIG)
    sessions, _ = load_sessions(roots["files"], config.data, log=quiet)
    train, _, _ = split_by_mouse(sessions, config.data.validation_mice, config.data.test_mice)
    if source == "mapped":
        selections, _ = select_store_sessions(roots["store"], config.data)
        sampled = map_training_sessions(Runtime(), roots["store"], [s for s in selections if s.mouse == "mouse-a"])
        assert isinstance(sampled[0].epochs[0].values, np.memmap)
    else:
        sampled = train
    n, W = 64, 4
    whole = TokenWindowSampler(train, W).sample(n, torch.Generator().manual_seed(7))
    crops, scale = CropSampler(train, 29, 12).sample(4, torch.Generator().manual_seed(8))
    for rank in range(2):
        rows = rank_rows(n // 4, 2, 2, rank)
        generator = torch.Generator().manual_seed(7)
        got = TokenWindowSampler(sampled, W).sample(n, generator, rows)
        assert torch.equal(got, whole[rows])  # bit-identical values, z-scored on read when mapped
        reference_generator = torch.Generator().manual_seed(7)
        TokenWindowSampler(train, W).sample(n, reference_generator)
        assert torch.equal(generator.get_state(), reference_generator.get_state())  # same draws consumed
        crop_rows = rank_rows(1, 2, 2, rank)
        got_crops, got_scale = CropSampler(sampled, 29, 12).sample(4, torch.Generator().manual_seed(8), crop_rows)
        assert torch.equal(got_crops, crops[crop_rows]) and torch.allclose(got_scale, scale, rtol=1e-6)


# --- torchrun, 2 processes, gloo ------------------------------------------------------------------------------

@pytest.mark.slow  # torchrun starts two interpreters
def test_two_processes_train_the_same_loss_curve_as_one(roots, reference, tmp_path):
    out = tmp_path / "ddp"
    threads_left = torchrun_counting_threads(tmp_path, "--config", roots["config"], "--data-root", roots["files"],
                                             "--out", out, "--log-every", 1)
    assert_same_curve(loss_curve(reference), loss_curve(out))  # stage 1 and stage 2, every step
    assert max_difference(reference, out) < TOLERANCE
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert state["stage"] == "done" and state["distributed"]["world_size"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # rank 0 only: no duplicates
    ref_log = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [(r["stage"], r["step"]) for r in ref_log]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["mice"] == ["mouse-a"]
    assert (out / "checkpoints/best/README.md").is_file()
    # the teardown: no gloo thread outlives the process group in either process
    assert not any("gloo" in threads for threads in threads_left), threads_left


@pytest.mark.slow  # torchrun starts two interpreters
def test_curriculum_and_default_recipe_options_train_alike_in_one_and_two_processes(roots, tmp_path):
    one = tmp_path / "one"
    lines = []
    pretrain(parse_train_config(CURRICULUM_CONFIG), roots["mixed"], one, progress=False, log=lines.append,
             settings=DistributedSettings(accumulation_steps=2, log_every=1))
    two = tmp_path / "two"
    result = torchrun("--config", roots["curriculum"], "--data-root", roots["mixed"], "--out", two, "--log-every", 1)
    for output in ("\n".join(lines), result.stdout):
        assert "neuron curriculum curriculum" in output and "unpredictable from step 4" in output
    assert_same_curve(loss_curve(one), loss_curve(two))
    assert max_difference(one, two) < TOLERANCE
    # the curriculum is what they trained: the same run on all neurons ("mixed") has another curve
    mixed = copy.deepcopy(CURRICULUM_CONFIG)
    mixed["transformer"]["neuron_curriculum"] = "mixed"
    pretrain(parse_train_config(mixed), roots["mixed"], tmp_path / "mixed", progress=False, log=quiet,
             settings=DistributedSettings(log_every=1))
    curriculum_curve, mixed_curve = loss_curve(one), loss_curve(tmp_path / "mixed")
    differences = [abs(a - b) / a for (_, _, a), (_, _, b) in zip(curriculum_curve, mixed_curve, strict=True)]
    assert max(differences) > 100 * LOSS_TOLERANCE
    state = json.loads((two / "checkpoints/last/trainer_state.json").read_text())
    assert state["per_neuron_initialised"] and state["per_neuron_warm_start"]["steps"] == 30


@pytest.mark.slow  # torchrun starts two interpreters
def test_resume_from_two_processes_in_one_and_from_one_in_two(roots, reference, tmp_path):
    config = parse_train_config(DDP_CONFIG)
    # 2 -> 1: two processes on the memory-mapped store stop inside the transformer stage; one process
    # finishes the run.
    out = tmp_path / "two_then_one"
    torchrun("--config", roots["config"], "--data-root", roots["store"], "--out", out, "--stop-after-steps", 11)
    state = json.loads((out / "checkpoints/last/trainer_state.json").read_text())
    assert (state["stage"], state["step"]) == ("transformer", 3)
    assert not (out / "metrics.json").exists()
    pretrain(config, roots["files"], out, resume=True, progress=False, log=quiet)
    assert max_difference(reference, out) < TOLERANCE

    # 1 -> 2: one process stops inside the tokenizer stage; two processes finish it.
    out = tmp_path / "one_then_two"
    pretrain(config, roots["files"], out, progress=False, stop_after_steps=5, log=quiet)
    result = torchrun("--config", roots["config"], "--data-root", roots["store"], "--out", out, "--resume")
    assert "stage tokenizer, step 5 (world size 1 -> 2)" in result.stdout + result.stderr
    assert max_difference(reference, out) < TOLERANCE


# --- in process (world size 1) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_after", [5, 11])
def test_resume_continues_bit_identically(roots, tmp_path, stop_after):
    config = parse_train_config(DDP_CONFIG)
    settings = DistributedSettings(accumulation_steps=2)
    straight = tmp_path / "straight"
    pretrain(config, roots["store"], straight, progress=False, log=quiet, settings=settings)
    interrupted = tmp_path / "interrupted"
    partial = pretrain(config, roots["store"], interrupted, progress=False, log=quiet, settings=settings,
                       stop_after_steps=stop_after)
    assert partial == {"stopped_at": {"stage": "tokenizer" if stop_after < 8 else "transformer",
                                      "step": stop_after if stop_after < 8 else stop_after - 8}}
    pretrain(config, roots["store"], interrupted, resume=True, progress=False, log=quiet, settings=settings)
    a, b = weights(straight), weights(interrupted)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the final report on a memory-mapped store fits the pooled AR baseline on a bounded sample
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert "pooled_ar" in metrics["forecast_protocol"]["validation"]["baselines"]


def test_tolerance_is_far_below_one_optimizer_step(roots, reference, tmp_path):
    """A run one step short of the reference is outside the tolerance: the comparisons above can fail."""
    short = tmp_path / "short"
    pretrain(parse_train_config(DDP_CONFIG), roots["files"], short, progress=False, log=quiet, stop_after_steps=15)
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
        pretrain(parse_train_config(DDP_CONFIG), roots["files"], tmp_path / "x", progress=False, log=quiet,
                 settings=DistributedSettings(accumulation_steps=3))
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


def test_command_line_checks_the_loop_options(roots, capsys):
    from trainer.__main__ import main as trainer_main

    with pytest.raises(SystemExit):
        trainer_main(["pretrain", "--config", str(roots["config"]), "--accumulation-steps", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
