"""The decoding head that ``rtcalm demo`` loads for its simulated rig (made by tools/make_demo_head.py).

Data files, not code: ``direction.json`` / ``direction.safetensors`` (the head, in the format of
:mod:`rtcalm.model.heads`) and ``direction.provenance.json`` (what it was fitted on, the model it reads,
its held-out accuracy). See README.md here.
"""

from pathlib import Path

DEMO_HEADS_DIR = Path(__file__).resolve().parent
DIRECTION_HEAD = DEMO_HEADS_DIR / "direction.json"
DIRECTION_PROVENANCE = DEMO_HEADS_DIR / "direction.provenance.json"
