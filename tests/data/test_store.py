"""The multi-session store: manifest, memory-mapped reads, mouse splits, sharded window sampling."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rtcalm.data.store import SessionStore, WindowSampler
from rtcalm.errors import RecordingError
from rtcalm.sim import make_synthetic


def _sessions(n=4, neurons=32, frames=500):
    for k in range(n):
        rec = make_synthetic(n_neurons=neurons + k, n_frames=frames, seed=k)
        rec.meta.mouse = f"mouse{k // 2}"  # two sessions per mouse
        rec.meta.session = f"s{k}"
        yield rec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return SessionStore.build(_sessions(), tmp_path_factory.mktemp("store"))


def test_manifest_and_memory_map(store):
    assert len(store) == 4 and store.mice() == ["mouse0", "mouse1"]
    entry = store.sessions[1]
    assert entry["neurons"] == 33 and entry["frames"] == 500 and entry["rate_hz"] == 30.0
    assert 0.0 < entry["fraction_predictable"] <= 1.0
    mapped = store.dff(entry["id"])
    assert isinstance(mapped, np.memmap) and mapped.shape == (500, 33)
    expected = make_synthetic(n_neurons=33, n_frames=500, seed=1).dff
    assert np.array_equal(np.asarray(mapped), expected)
    loaded = store.load(entry["id"])
    assert {"skewness", "kurtosis", "predictable"} <= set(loaded.neuron_info)


def test_split_by_mouse(store):
    train, test = store.split_by_mouse(["mouse1"])
    assert len(train) == 2 and len(test) == 2
    assert {store.entry(i)["mouse"] for i in train}.isdisjoint({store.entry(i)["mouse"] for i in test})
    with pytest.raises(ValueError, match="not in the store"):
        store.split_by_mouse(["mouse9"])


def test_sampler_windows_and_shards(store):
    sampler = WindowSampler(store, window_frames=64, mice=["mouse0"], seed=3)
    draws = list(sampler.epoch(0, n_draws=40))
    assert len(draws) == 40
    for session_id, start, window in draws:
        assert store.entry(session_id)["mouse"] == "mouse0"
        assert window.shape == (64, store.entry(session_id)["neurons"])
        assert np.array_equal(window, store.dff(session_id)[start:start + 64])
    assert [d[:2] for d in sampler.epoch(0, 40)] == [d[:2] for d in draws]  # deterministic
    assert [d[:2] for d in sampler.epoch(1, 40)] != [d[:2] for d in draws]
    shards = [[d[:2] for d in WindowSampler(store, 64, seed=3, rank=r, world_size=2).epoch(0, 40)] for r in (0, 1)]
    full = [d[:2] for d in WindowSampler(store, 64, seed=3).epoch(0, 40)]
    assert shards[0] == full[0::2] and shards[1] == full[1::2]


def test_bad_store(tmp_path):
    with pytest.raises(RecordingError, match="no store manifest"):
        SessionStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RecordingError, match="manifest"):
        SessionStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RecordingError, match="cannot read"):
        SessionStore(tmp_path)


@pytest.mark.slow
def test_sampling_a_store_larger_than_the_memory_budget(tmp_path):
    """~590 MB of sessions on disk, sampled by a process whose private memory is capped at 250 MB
    (RLIMIT_DATA: heap and anonymous mappings, not file-backed maps). Loading the sessions whole would
    fail; memory-mapped window sampling must not."""
    SessionStore.build((make_synthetic(n_neurons=4096, n_frames=9000, seed=k) for k in range(4)), tmp_path)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "sessions").iterdir())
    assert on_disk > 550e6
    script = textwrap.dedent(f"""
        import resource
        budget = 250 * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))
        import numpy as np
        from rtcalm.data.store import SessionStore, WindowSampler
        store = SessionStore({str(tmp_path)!r})
        total = 0.0
        for _, _, window in WindowSampler(store, window_frames=64, seed=0).epoch(0, n_draws=300):
            total += float(window[0, 0])
        anon_kb = int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])
        print(anon_kb)
        try:
            [np.array(store.dff(e["id"])) for e in store.sessions]   # loading whole must not fit
            print("LOADED")
        except MemoryError:
            print("MEMORY_ERROR")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    anon_kb, outcome = result.stdout.split()
    assert int(anon_kb) * 1024 < 250 * 2**20 < on_disk
    assert outcome == "MEMORY_ERROR"
