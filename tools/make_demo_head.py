"""Fit the decoding head that ``rtcalm demo`` loads for its simulated rig, and write it into
rtcalm/demo_heads/ (run it again whenever the shipped default model changes; a test fails until then):

    python tools/make_demo_head.py            # a few minutes on two cores (one model step per frame)

What it does, honestly labelled:

1. simulates the demo's rig (rtcalm/demo_sources.py: 256 neurons watching drifting gratings, 8
   directions, 2 s each then 1 s gray) and takes its first 10 minutes only; the demo streams the 10
   minutes after them, which neither this script nor the head ever sees;
2. runs the shipped default model over those frames exactly as the daemon does (running statistics,
   normalisation, one incremental step per frame: rtcalm.daemon.session) and pools every frame's
   per-neuron hidden state with the daemon's EMA (pool_frames = 60, the 2 s stimulus);
3. takes the pooled state at the last frame of each stimulus as that trial's features (trials starting
   in the first 64 frames, while the statistics warm up, are left out), the shown direction as its label;
4. scores a head fitted on the first 80 % of those trials on the last 20 % (held out in time), then fits
   the shipped head on all of them (rtcalm.model.heads.fit_head: logistic regression);
5. writes direction.json / direction.safetensors and direction.provenance.json (model version,
   simulator, frames, held-out accuracy, chance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtcalm.daemon.config import DaemonConfig  # noqa: E402
from rtcalm.daemon.session import Scale, new_stats  # noqa: E402
from rtcalm.demo_heads import DEMO_HEADS_DIR  # noqa: E402
from rtcalm.demo_sources import HEAD_FIT_FRAMES, SIMULATED_RIG, STIMULUS_FRAMES, TRIAL_FRAMES, simulated_rig  # noqa: E402
from rtcalm.engine.base import model_version, weights_sha256  # noqa: E402
from rtcalm.model.checkpoint import WEIGHTS_FILE, load_checkpoint, resolve_model  # noqa: E402
from rtcalm.model.heads import HeadConfig, fit_head, save_head  # noqa: E402

WARMUP_FRAMES = 64
POOL_FRAMES = float(STIMULUS_FRAMES)


def pooled_features(model, dff: np.ndarray, sample_frames: set[int]) -> dict[int, np.ndarray]:
    """The daemon's per-frame path over ``dff`` (stats, normalisation, step, EMA pool); the pooled hidden
    state (N, D) at each frame in ``sample_frames``."""
    n = dff.shape[1]
    config = DaemonConfig()
    stats, scale = new_stats(n, config), Scale(n, config.stats.warmup_frames)
    state = model.new_state(n)
    z = np.empty(n, dtype=np.float32)
    pool = torch.zeros(n, model.config.d_model)
    samples = {}
    with torch.inference_mode():
        for t in range(dff.shape[0]):
            stats.update(dff[t])
            scale.update(stats)
            scale.normalise_into(dff[t], z)
            out, _ = model.step(torch.from_numpy(z), state)
            pool.lerp_(out.hidden, 1.0 / POOL_FRAMES)  # the daemon's pool update (rtcalm.daemon.heads)
            if t in sample_frames:
                samples[t] = pool.numpy().copy()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="the model the head reads (default: the shipped default)")
    parser.add_argument("--out", type=Path, default=DEMO_HEADS_DIR, help="output directory (default rtcalm/demo_heads)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    directory = resolve_model(args.model)
    model = load_checkpoint(directory).eval()
    version = model_version(directory, weights_sha256(directory / WEIGHTS_FILE))
    recording = simulated_rig()
    dff = recording.dff[:HEAD_FIT_FRAMES]
    directions = np.asarray(recording.trials["direction_deg"], dtype=float)
    trials = [k for k in range(HEAD_FIT_FRAMES // TRIAL_FRAMES) if k * TRIAL_FRAMES >= WARMUP_FRAMES]
    ends = {k * TRIAL_FRAMES + STIMULUS_FRAMES - 1: k for k in trials}
    print(f"make_demo_head: {version}, {dff.shape[1]} simulated neurons, {len(trials)} trials in the first "
          f"{HEAD_FIT_FRAMES} frames", file=sys.stderr)
    pooled = pooled_features(model, dff, set(ends))
    features = np.stack([pooled[t] for t in sorted(ends)])
    labels = np.array([directions[ends[t]] for t in sorted(ends)])
    classes = sorted(float(c) for c in set(directions))
    config = HeadConfig("direction", "classification", n_neurons=dff.shape[1], d_model=model.config.d_model,
                        pool_frames=POOL_FRAMES, classes=classes)

    split = int(0.8 * len(labels))
    probe = fit_head(features[:split], labels[:split], config)
    with torch.inference_mode():
        logits = probe(torch.from_numpy(features[split:]).float())
    predicted = np.asarray(classes)[logits.argmax(-1).numpy()]
    held_out = float(np.mean(predicted == labels[split:]))
    print(f"make_demo_head: held-out accuracy {held_out:.1%} on the last {len(labels) - split} trials "
          f"(fitted on the first {split}; chance {1 / len(classes):.1%})", file=sys.stderr)

    head = fit_head(features, labels, config)
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_head(head, args.out, "direction")
    provenance = {
        "head": path.name,
        "model_version": version,
        "decodes": "the drifting-grating direction (degrees) shown to the demo's simulated rig",
        "simulator": {"function": "rtcalm.sim.make_synthetic", "config": SIMULATED_RIG},
        "fitted_on_frames": [0, HEAD_FIT_FRAMES],
        "demo_streams_frames": [HEAD_FIT_FRAMES, SIMULATED_RIG["n_frames"]],
        "trials": len(labels),
        "held_out_accuracy": held_out,
        "held_out_trials": len(labels) - split,
        "chance": 1 / len(classes),
        "made_by": "python tools/make_demo_head.py",
    }
    (args.out / "direction.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"make_demo_head: wrote {path} and direction.provenance.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
