"""The decoding head that ``rtcalm demo`` loads for its simulated rig, fitted by ``rtcalm fit-head`` on the
rig's calibration block (README.md here has the two commands).

Data files, not code: ``direction.json`` (the head's config and its provenance: the calibration files and
their SHA-256, the model version, the heads inner CV kept and averaged, the cross-validated accuracy, the command) and
``direction.safetensors`` (its tensors), in the format of :mod:`rtcalm.model.heads`.
"""

from pathlib import Path

DEMO_HEADS_DIR = Path(__file__).resolve().parent
DIRECTION_HEAD = DEMO_HEADS_DIR / "direction.json"
REFIT = ("rtcalm demo --write-calibration runs/demo-calibration && rtcalm fit-head "
         "runs/demo-calibration/calibration.rtcalm.h5 --labels runs/demo-calibration/labels.csv --task direction "
         "--out rtcalm/demo_heads")
