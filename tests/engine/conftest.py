"""Engine tests: small randomised models saved as checkpoints (torch runs single-threaded in every test,
see tests/conftest.py)."""

from __future__ import annotations

import pytest

from rtcalm.model import save_checkpoint


@pytest.fixture
def checkpoint(randomised_model, tmp_path):
    """A checkpoint directory of a small randomised model."""
    return save_checkpoint(randomised_model(), tmp_path / "small-model")
