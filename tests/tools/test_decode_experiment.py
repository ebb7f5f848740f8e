"""tools/decode_experiment.py end to end on small synthetic grating mice: every piece of its results and
its confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtcalm.data import Recording, RecordingMeta, TrialTable
from rtcalm.eval.decode import BackboneFrames
from rtcalm.model import Calm, CalmConfig

SMALL = CalmConfig(d_model=8, n_layers=1, n_heads=2, mlp_hidden=16, attention_window_frames=8, n_latents=4,
                   token_window_frames=4, codebook_size=16, code_dim=4, tokenizer_hidden=8,
                   forecast_horizon_frames=5, input_mode="continuous", rate_hz=16.0)


def _mouse(name, tuned, seed):
    rng = np.random.default_rng(seed)
    directions = np.tile(np.arange(8) * 45.0, 5)
    time = -1 + np.arange(48) / 16
    dff = rng.standard_normal((40, 48, 6)).astype(np.float32) * 0.5
    if tuned:
        for k, d in enumerate(directions):
            dff[k, time >= 0, int(d // 45) % 6] += 2.0
    behaviour = {"running_speed": rng.random((40, 48)), "pupil": rng.random((40, 48))}
    return Recording(dff=dff, rate_hz=16.0, neuron_ids=np.arange(6), trial_time_s=time,
                     trials=TrialTable({"onset_s": np.full(40, np.nan), "direction_deg": directions}),
                     continuous_labels=behaviour, meta=RecordingMeta(source=f"{name}.mat", mouse=name))


@pytest.fixture(scope="module")
def decode_experiment(tool):
    return tool("decode_experiment")


def test_every_piece_of_the_results(decode_experiment, tmp_path):
    torch.manual_seed(0)
    model = Calm(SMALL).eval()
    recordings = [_mouse("tuned", True, 0), _mouse("quiet", False, 1)]
    frames = BackboneFrames(model)
    results = {"model": "small", "model_version": "small@0", "d_model": 8, "seeds": [0], "wall_time_s": 1.0, "compare": {},
               "direction": {str(s): decode_experiment.run_decode(recordings, "direction", frames, s) for s in (0,)},
               "speed": decode_experiment.run_decode(recordings, "speed", frames, 0),
               "pupil": decode_experiment.run_decode(recordings, "pupil", frames, 0),
               "components": decode_experiment.component_ablation(recordings, frames),
               "tuning": decode_experiment.tuning_diagnosis(recordings),
               "alignment": decode_experiment.alignment_check(recordings, 30.0),
               "classes": [45.0 * k for k in range(8)]}
    tuning = {row["mouse"]: row for row in results["tuning"]}
    assert tuning["tuned"]["tuned_neurons"] == 6 and tuning["quiet"]["tuned_neurons"] <= 1
    assert results["alignment"]["onset_frame"] == 30 and results["alignment"]["window_frames"] == 60
    assert set(results["components"]["mean"]) == {"1", "2", "4", "8", "raw", "raw+1"}

    figure = tmp_path / "confusion.png"
    decode_experiment.confusion_png(results["direction"]["0"], ["model_time_resolved", "lda_binned"], figure,
                                    results["classes"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
