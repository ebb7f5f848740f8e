"""Shared fixtures. Tests that need the real recordings in ../shared/data/real skip with a reason when
that folder is absent (it is never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = Path(os.environ.get("RTCALM_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))

CASCADE_MAT = "PTRRupprecht_CascadeTorch/Example_datasets/Allen-Brain-Observatory-Visual-Coding-30Hz/Experiment_552195520_excerpt.mat"
NEURODIO_GLOB = "yueqiw_neurod-io/data/*/*/rec_data.npz"
GRATING_GLOB = "surlab_Park_et_al/sample-data/glm/*_data.mat"


@pytest.fixture(autouse=True)
def single_threaded_torch():
    """Torch runs single-threaded in every test, as the daemon does by default: on a 2-core machine shared
    with other work, a second intra-op thread that is descheduled stalls every small matmul of the
    streaming step by a scheduler time slice."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _require_real_data() -> Path:
    if not REAL_DATA_DIR.is_dir():
        pytest.skip(f"real recordings not found at {REAL_DATA_DIR} (../shared is absent; set RTCALM_REAL_DATA)")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return _require_real_data()


@pytest.fixture(scope="session")
def cascade_mat(real_data_dir) -> Path:
    return real_data_dir / CASCADE_MAT


@pytest.fixture(scope="session")
def neurodio_files(real_data_dir) -> list[Path]:
    return sorted(real_data_dir.glob(NEURODIO_GLOB))


@pytest.fixture(scope="session")
def grating_files(real_data_dir) -> list[Path]:
    return sorted(real_data_dir.glob(GRATING_GLOB))


@pytest.fixture(scope="session")
def all_real_files(cascade_mat, neurodio_files, grating_files) -> list[Path]:
    return [cascade_mat, *neurodio_files, *grating_files]
