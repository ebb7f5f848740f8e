"""Fixtures of the daemon tests: small real checkpoints (two different weights for hot swaps) and a
running daemon with connected clients."""

from __future__ import annotations

import pytest
from daemon_helpers import Harness, make_checkpoint, make_config

from rtcalm.model import load_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "small-a"
    make_checkpoint(directory, seed=1)
    return directory


@pytest.fixture(scope="session")
def second_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "small-b"
    make_checkpoint(directory, seed=2)
    return directory


@pytest.fixture
def model(checkpoint):
    """The daemon's model, loaded from the same checkpoint (for offline references)."""
    return load_checkpoint(checkpoint)


@pytest.fixture
def harness(checkpoint):
    h = Harness(make_config(), str(checkpoint))
    yield h
    h.close()


@pytest.fixture
def make_harness(checkpoint):
    """A daemon with config overrides: make_harness(limits={...}, sessions={...})."""
    made = []

    def make(model_loader=None, **sections):
        kwargs = {} if model_loader is None else {"model_loader": model_loader}
        h = Harness(make_config(**sections), str(checkpoint), **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
