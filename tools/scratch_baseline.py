"""The foundation-model comparison: the same architecture trained from scratch on each target recording.

For every FILE, the first 70 % of the recording (everything before forecast-eval's test segment) is
split in time into a training piece and a validation piece (the last context + horizon + 4 frames before
the test segment, the shortest piece the trainer's validation crops fit in; it chooses the best
checkpoint). A model with the architecture and training recipe of ``--config`` is trained on the
training piece only, with ``--tokenizer-steps`` / ``--transformer-steps`` steps, and then scored with
``rtcalm forecast-eval``'s protocol on the whole FILE (targets in the last 30 %), next to the pretrained
model given by ``--model``. Nothing of the test segment is seen in training.

    python tools/scratch_baseline.py --config configs/pretrain_default.json --model runs/default/checkpoints/best \\
        --out runs/scratch --json FILE...

Prints (and with ``--json`` writes to ``OUT/scratch.json``) per file and averaged over files the
mse_ratio / Pearson of the pretrained and the scratch model at each horizon.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from rtcalm.data import Recording, load_recording, save_recording
from rtcalm.data.resample import resample_recording
from rtcalm.eval.forecast import evaluate, first_test_frame, model_forecaster
from rtcalm.model.checkpoint import load_model


def piece(recording: Recording, start: int, stop: int, mouse: str) -> Recording:
    meta = dataclasses.replace(recording.meta, mouse=mouse, extra={**recording.meta.extra, "frames": f"{start}:{stop}"})
    return Recording(dff=recording.dff[start:stop], rate_hz=recording.rate_hz, neuron_ids=recording.neuron_ids,
                     meta=meta)


def train_scratch(path: Path, config_path: Path, out: Path, tokenizer_steps: int, transformer_steps: int) -> Path:
    from trainer.config import load_train_config
    from trainer.pretrain import pretrain

    best = out / "run" / "checkpoints" / "best"
    if (out / "run" / "metrics.json").exists():  # finished earlier: reuse it (rerunning only the scoring)
        return best
    recording = load_recording(path)
    config = load_train_config(config_path)
    test_start = first_test_frame(recording.n_frames)
    train_stop = test_start - (config.transformer.context_frames + config.model.forecast_horizon_frames + 4)
    if train_stop < config.transformer.context_frames:
        raise SystemExit(f"{path}: too short to train from scratch on its first 70 %")
    data_root = out / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    save_recording(piece(recording, 0, train_stop, "scratch-train"), data_root / "train.rtcalm.h5")
    save_recording(piece(recording, train_stop, test_start, "scratch-validation"), data_root / "validation.rtcalm.h5")
    config = dataclasses.replace(
        config, name=f"scratch-{path.parent.name}",
        data=dataclasses.replace(config.data, files=["*.rtcalm.h5"], validation_mice=["scratch-validation"], test_mice=[]),
        tokenizer=dataclasses.replace(config.tokenizer, steps=tokenizer_steps,
                                      validate_every=max(1, tokenizer_steps // 4)),
        transformer=dataclasses.replace(config.transformer, steps=transformer_steps,
                                        validate_every=max(1, transformer_steps // 8),
                                        checkpoint_every=max(1, transformer_steps // 8)))
    pretrain(config, data_root, out / "run", progress=False)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="training config whose architecture/recipe to use")
    parser.add_argument("--model", required=True, help="the pretrained model to compare with")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer-steps", type=int, default=500)
    parser.add_argument("--transformer-steps", type=int, default=600)
    parser.add_argument("--horizons", default="1,5,15,30")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    horizons = [int(h) for h in args.horizons.split(",")]
    # Train every scratch model first, so this can start while the pretrained model is still training.
    scratch_checkpoints = []
    for index, path in enumerate(args.files):
        run_dir = args.out / f"{index:02d}-{path.parent.parent.name}-{path.parent.name}"
        scratch_checkpoints.append(train_scratch(path, args.config, run_dir, args.tokenizer_steps,
                                                 args.transformer_steps))
    pretrained = load_model(args.model)
    rows = []
    for path, best in zip(args.files, scratch_checkpoints, strict=True):
        scratch = load_model(best)
        recording = resample_recording(load_recording(path), pretrained.config.rate_hz)
        context = pretrained.config.receptive_field_frames
        result = evaluate([recording], {"pretrained": model_forecaster(pretrained), "scratch": model_forecaster(scratch)},
                          horizons, context)
        per_file = result["per_file"][0]
        rows.append({"file": str(path), "pretrained": per_file["pretrained"], "scratch": per_file["scratch"]})
        print(f"{path}: " + ", ".join(f"h={h} pretrained {per_file['pretrained'][str(h)]['mse_ratio']:.3f} "
                                      f"scratch {per_file['scratch'][str(h)]['mse_ratio']:.3f}" for h in horizons),
              flush=True)
    summary = {name: {str(h): {m: float(np.mean([r[name][str(h)][m] for r in rows])) for m in ("mse_ratio", "pearson")}
                      for h in horizons} for name in ("pretrained", "scratch")}
    document = {"horizons": horizons, "model": args.model, "config": str(args.config),
                "tokenizer_steps": args.tokenizer_steps, "transformer_steps": args.transformer_steps,
                "mean": summary, "per_file": rows}
    if args.json:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scratch.json").write_text(json.dumps(document, indent=2))
    for name in ("pretrained", "scratch"):
        print(name, {h: round(summary[name][h]["mse_ratio"], 4) for h in summary[name]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
