"""Shared fixtures. Tests that need the real recordings in ../shared/data/real skip with a reason when
that folder is absent (it is never copied into the repository). Helpers that tests in several folders use
are fixtures here (``randomised_model``, ``write_allen_nwb``), so no test imports another folder's files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
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


# --- small models and files shared by several test folders -------------------------------------------------

SMALL_CALM = dict(token_window_frames=4, codebook_size=64, code_dim=4, tokenizer_hidden=16, d_model=16, n_layers=2,
                  n_heads=4, mlp_hidden=32, attention_window_frames=12, n_latents=4, forecast_horizon_frames=5)


def _randomised_model(seed: int = 0, **overrides):
    """A small CalM model (``SMALL_CALM`` with ``overrides``) in eval mode with every parameter non-trivial
    (biases, position bias, latents, missing embedding, a spread-out codebook), so an equivalence test
    exercises all of them."""
    import torch

    from rtcalm.model import Calm, CalmConfig

    torch.manual_seed(seed)
    model = Calm(CalmConfig(**{**SMALL_CALM, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if model.config.input_mode != "encoder":
            model.tokenizer.codebook.normal_()
    return model.eval()


@pytest.fixture(scope="session")
def randomised_model():
    """``randomised_model(seed=0, **config overrides)`` -> a small randomised CalM model (the model and
    engine tests)."""
    return _randomised_model


ALLEN_PIPELINE = "processing/brain_observatory_pipeline"


def _write_allen_nwb(path, n_cells=5, n_frames=300, rate=30.0, seed=0, **overrides):
    """A small Allen Brain Observatory NWB 1 file (the layout rtcalm's Allen reader reads): ΔF/F, cell ids,
    running speed with a dropped sample, a drifting-grating and a natural-movie stimulus table, metadata.
    Returns (ΔF/F (cells, frames), timestamps)."""
    rng = np.random.default_rng(seed)
    dff = rng.standard_normal((n_cells, n_frames)).astype(np.float32)  # Allen: cells x time
    timestamps = np.arange(n_frames) / rate + 10.0
    with h5py.File(path, "w") as f:
        f[f"{ALLEN_PIPELINE}/DfOverF/imaging_plane_1/data"] = overrides.get("data", dff)
        f[f"{ALLEN_PIPELINE}/DfOverF/imaging_plane_1/timestamps"] = overrides.get("timestamps", timestamps)
        f[f"{ALLEN_PIPELINE}/ImageSegmentation/cell_specimen_ids"] = np.arange(n_cells) + 517000000
        speed = rng.random(n_frames) * 20
        speed[5] = np.nan  # Allen running speed has dropped samples
        f[f"{ALLEN_PIPELINE}/BehavioralTimeSeries/running_speed/data"] = speed
        f[f"{ALLEN_PIPELINE}/BehavioralTimeSeries/running_speed/timestamps"] = timestamps
        dg = f.create_group("stimulus/presentation/drifting_gratings_stimulus")
        dg["data"] = np.array([[2.0, 0.0, 0.0], [2.0, 90.0, 0.0], [1.0, 270.0, 0.0]])
        dg["features"] = np.array([b"temporal_frequency", b"orientation", b"blank_sweep"])
        dg["frame_duration"] = overrides.get("frame_duration", np.array([[10, 70], [100, 160], [200, 260]]))
        nm = f.create_group("stimulus/presentation/natural_movie_one_stimulus")
        nm["data"] = np.arange(3)
        nm["frame_duration"] = np.array([[270, 271], [271, 272], [272, 273]])
        f["general/session_id"] = b"123456"
        f["general/experiment_container_id"] = b"999"
        f["general/session_type"] = b"three_session_A"
        f["general/subject/genotype"] = b"Sst-IRES-Cre/wt; Ai148(TIT2L-GC6f-ICL-tTA2)/wt"
        f["general/optophysiology/imaging_plane_1/imaging depth"] = b"275 microns"
        f["general/optophysiology/imaging_plane_1/location"] = b"VISp"
        f["general/optophysiology/imaging_plane_1/indicator"] = b"GCaMP6f"
    return dff, timestamps


@pytest.fixture(scope="session")
def write_allen_nwb():
    """``write_allen_nwb(path, n_cells=5, n_frames=300, rate=30.0, seed=0, **overrides)`` -> (ΔF/F, timestamps):
    writes a small Allen NWB 1 file (the data readers' tests and the trainer's Allen export tests)."""
    return _write_allen_nwb
