"""Engine tests: small randomised models saved as checkpoints, torch single-threaded (on the shared
2-core machine a second intra-op thread that gets descheduled stalls every small matmul)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import randomised_model

from rtcalm.model import save_checkpoint


@pytest.fixture(autouse=True)
def single_threaded_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint directory of a small randomised model."""
    return save_checkpoint(randomised_model(), tmp_path / "small-model")
