"""What ``rtcalm demo`` streams, in one place, and the calibration block its decoding head is fitted on
(``rtcalm demo --write-calibration DIR``, then ``rtcalm fit-head``: rtcalm/demo_heads/README.md).

- **The simulated rig**: :func:`rtcalm.sim.make_synthetic` with kinetics and noise matched to the real
  Allen excerpts in ../shared/data/real (GCaMP6f-like 0.4 s decay, shot noise and sparse cells such
  that the median lag-1 autocorrelation, SNR and ΔF/F std are close to the excerpts'; the generator's
  own defaults are much smoother: lag-1 autocorrelation 0.96 against 0.6-0.65 in the excerpts, a trace
  on which copy-last is hard to beat at one frame). Its neurons watch drifting gratings: 2 s of one of
  8 directions, then 1 s of gray, repeated. The first :data:`HEAD_FIT_FRAMES` frames (10 minutes) are
  what the demo head was fitted on; the demo streams the frames after them, which the head has never
  seen.
- **A real recording**: by default, when the real data folder exists, an Allen Brain Observatory excerpt
  of a *test* mouse (511510989, held out of the default model's training and checkpoint selection).

Imports numpy only at module level.
"""

from __future__ import annotations

import os
from pathlib import Path

SIMULATED_RIG = dict(n_neurons=256, n_frames=36000, seed=11, shot_noise=0.05, decay_s=0.4, spike_amplitude=0.15,
                     fraction_gaussian=0.2, fraction_regular=0.1)
HEAD_FIT_FRAMES = 18000  # a whole number of 90-frame trials
TRIAL_FRAMES, STIMULUS_FRAMES = 90, 60  # SyntheticConfig's stimulus_s 2 s and gray_s 1 s at 30 Hz



def real_data_dirs() -> list[Path]:
    """Where the real recordings may be: $RTCALM_REAL_DATA, else ../shared/data/real beside the checkout
    (an editable install) or beside the current directory."""
    if os.environ.get("RTCALM_REAL_DATA"):
        return [Path(os.environ["RTCALM_REAL_DATA"])]
    beside = [Path(__file__).resolve().parents[1].parent, Path.cwd().resolve().parent]
    return [base / "shared" / "data" / "real" for base in beside]


# A held-out (test) mouse's recording: docs/results.md's split. Its sibling natural_movie_one file is
# the same cells.
DEFAULT_REAL_RECORDING = "yueqiw_neurod-io/data/501788003/natural_movie_two_64122-65026/rec_data.npz"
TEST_MICE = ("511510667", "511510989")  # configs/pretrain_default.json's test_mice


def describe_real_recording(recording) -> str:
    meta = recording.meta
    held_out = " (a test mouse: never trained on)" if meta.mouse in TEST_MICE else ""
    where = ", ".join(str(x) for x in (meta.cre_line, meta.area, meta.stimulus) if x)
    return f"Allen Brain Observatory, mouse {meta.mouse}{held_out}, {where}"


def simulated_rig():
    """The simulated recording (all 36,000 frames; the demo streams those from HEAD_FIT_FRAMES on)."""
    from rtcalm.sim import make_synthetic

    return make_synthetic(**SIMULATED_RIG)


def shown_direction(frame: int, directions) -> float | None:
    """The grating direction (degrees) the simulated neurons see at ``frame`` of the whole simulated
    recording, or None during gray."""
    trial, within = divmod(frame, TRIAL_FRAMES)
    if within >= STIMULUS_FRAMES or trial >= len(directions):
        return None
    return float(directions[trial])


CALIBRATION_RECORDING, CALIBRATION_LABELS = "calibration.rtcalm.h5", "labels.csv"


def calibration_labels_csv(directions) -> str:
    """The label table of the calibration block: each trial's onset frame and direction, for the trials
    in the first HEAD_FIT_FRAMES frames."""
    rows = [f"{k * TRIAL_FRAMES},{float(directions[k]):g}" for k in range(HEAD_FIT_FRAMES // TRIAL_FRAMES)]
    return "frame,direction_deg\n" + "\n".join(rows) + "\n"


def write_calibration(directory) -> tuple[Path, Path]:
    """The demo's calibration block as a lab has one: the first HEAD_FIT_FRAMES frames of the simulated rig
    as a contiguous recording (rtcalm's native format, no labels in it) and a label table (CSV) of its
    trials' onsets and directions. Returns their paths."""
    import numpy as np

    from rtcalm.data import Recording, save_recording

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rig = simulated_rig()
    meta = type(rig.meta)(**{**rig.meta.__dict__, "extra": {**rig.meta.extra, "demo_calibration_frames":
                                                              f"0-{HEAD_FIT_FRAMES}"}})
    block = Recording(dff=rig.dff[:HEAD_FIT_FRAMES], rate_hz=rig.rate_hz, neuron_ids=rig.neuron_ids, meta=meta)
    recording_path = save_recording(block, directory / CALIBRATION_RECORDING)
    labels_path = directory / CALIBRATION_LABELS
    labels_path.write_text(calibration_labels_csv(np.asarray(rig.trials["direction_deg"], dtype=float)))
    return recording_path, labels_path


def default_real_recording() -> Path | None:
    return next((d / DEFAULT_REAL_RECORDING for d in real_data_dirs() if (d / DEFAULT_REAL_RECORDING).is_file()), None)
