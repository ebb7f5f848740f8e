"""Model tests run torch single-threaded: on a 2-core machine shared with other work, a second intra-op
thread that is descheduled stalls every small matmul of the streaming step by a scheduler time slice."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_threaded_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
