"""Decoding heads in the daemon, over the real sockets: load_head / unload_head, the published ``decoded``
against an offline reference (the same model over the same frames, each head's stream stepped on each frame's hidden
state in order), every rejection leaving the loaded heads serving, and what resets, neuron-count changes
and hot swaps do to heads."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from daemon_helpers import SMALL_MODEL, OfflineReference, make_checkpoint, make_config

from rtcalm.client import DaemonError
from rtcalm.model.heads import (
    DecodingHead,
    HeadConfig,
    TimeResolvedConfig,
    TimeResolvedHead,
    fit_head,
    load_head,
    open_stream,
)
from rtcalm.model.heads import save_head as write_head
from rtcalm.sim import make_synthetic

N = 12
D = SMALL_MODEL["d_model"]
DIRECTIONS = [0.0, 90.0, 180.0, 270.0]


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=N, n_frames=200, seed=31).dff


def save_head(directory, *, name="direction", kind="classification", n_neurons=N, d_model=D, pool_frames=4.0,
              seed=0):
    """A head with fixed random weights, large enough that its output changes from frame to frame."""
    torch.manual_seed(seed)
    classes = DIRECTIONS if kind == "classification" else []
    head = DecodingHead(HeadConfig(name, kind, n_neurons, d_model, pool_frames, classes))
    with torch.no_grad():
        head.readout.weight.normal_(0.0, 0.3)
        head.readout.bias.normal_(0.0, 0.1)
    return write_head(head, directory)


def save_time_resolved_head(directory, *, name="direction", n_neurons=N, d_model=D, window_frames=8, n_bins=3,
                            components=2, seed=0, features="backbone"):
    """A time-resolved head (file version 3) with fixed random projection and readout."""
    torch.manual_seed(seed)
    head = TimeResolvedHead(TimeResolvedConfig(name, "classification", n_neurons, d_model, window_frames, n_bins,
                                               0 if features == "raw" else components, DIRECTIONS, features=features))
    with torch.no_grad():
        if features != "raw":
            head.projection.normal_(0.0, 0.3)
            head.projection_mean.normal_(0.0, 0.1)
        head.readout.weight.normal_(0.0, 0.05)
        head.readout.bias.normal_(0.0, 0.1)
    return write_head(head, directory)


def fit_speed_head(directory, seed=0):
    """A regression head fitted with fit_head on random pooled features of the right shape."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(40, N, D)).astype(np.float32)
    targets = 2.0 * features[:, 0, 0] - features[:, 3, 5] + 0.1 * rng.normal(size=40)
    return write_head(fit_head(features, targets, HeadConfig("speed", "regression", N, D, pool_frames=3.0)), directory)


class DecodingReference:
    """The offline reference plus heads: every frame (NaN rows: filled-in gaps) goes through the model,
    and its hidden state and the frame itself (its ΔF/F) through ``stream.step`` of each head (any kind),
    in load order."""

    def __init__(self, model, n_neurons: int = N):
        self.model = model
        self.stream = OfflineReference(model, n_neurons, make_config())
        self.heads: dict[str, tuple] = {}

    def load(self, json_path) -> None:
        head = load_head(json_path)
        self.heads[head.config.name] = (head, open_stream(head))

    def step(self, frame: np.ndarray) -> dict:
        self.stream.step(frame)
        decoded = {}
        for _head, stream in self.heads.values():
            decoded.update(stream.step(self.stream.hidden.numpy(), np.asarray(frame, np.float32)))
        return decoded

    def run(self, frames) -> list[dict]:
        return [self.step(frame) for frame in frames]

    def restart(self) -> None:
        """A fresh stream: new statistics and model state, heads kept with zeroed states."""
        self.stream = OfflineReference(self.model, self.stream.z.shape[0], make_config())
        for _head, stream in self.heads.values():
            stream.reset()


def assert_decoded(got: dict, expected: dict, where="") -> None:
    assert list(got) == list(expected), where
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(got[name], np.float64), np.asarray(value, np.float64), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{where} {name}")


def metric(harness, name: str, **labels) -> float:
    return harness.daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def test_decoded_equals_the_offline_reference(harness, model, frames, tmp_path):
    direction, speed = save_head(tmp_path), fit_speed_head(tmp_path)
    harness.control.start_session("dec", N)
    reply = harness.control.load_head("dec", str(direction))
    assert reply["replaced"] is False and reply["head"]["name"] == "direction"
    assert harness.control.load_head("dec", str(speed))["heads"][1]["name"] == "speed"
    reference = DecodingReference(model)
    reference.load(direction)
    reference.load(speed)

    predictions = harness.send_lockstep(harness.sender("dec"), frames[:40])
    expected = reference.run(frames[:40])
    for p, want in zip(predictions, expected, strict=True):
        assert_decoded(p.decoded, want, f"seq {p.seq}")
    last = predictions[-1].decoded
    assert set(last) == {"direction", "direction_probabilities", "speed"}
    assert last["direction"] in DIRECTIONS and len(last["direction_probabilities"]) == 4
    assert isinstance(last["speed"], float)
    assert len({p.decoded["direction"] for p in predictions} | {round(p.decoded["speed"], 3) for p in predictions}) > 2

    heads = harness.session_status("dec")["heads"]
    assert [(h["name"], h["kind"], h["pool_frames"]) for h in heads] == [("direction", "classification", 4.0),
                                                                        ("speed", "regression", 3.0)]
    assert [h["pooled_frames"] for h in heads] == [40, 40]
    assert metric(harness, "rtcalm_session_heads", session="dec") == 2


def test_pools_see_every_frame_of_a_folded_batch_and_of_a_gap(harness, model, frames, tmp_path):
    direction = save_head(tmp_path, pool_frames=6.0)
    harness.control.start_session("burst", N)
    harness.control.load_head("burst", str(direction))
    seqs = [*range(0, 60), *range(63, 150)]  # frames 60-62 are missing: filled in as missing frames
    pipeline = harness.daemon.pipeline
    gate = threading.Event()
    original = pipeline.process

    def held(batch):  # the daemon falls behind: everything sent meanwhile queues up for one drain
        gate.wait(30)
        original(batch)

    pipeline.process = held
    try:
        sender = harness.sender("burst")
        for seq in seqs:
            sender.send(frames[seq], seq=seq)
        gate.set()
        predictions = []
        while not predictions or predictions[-1].seq != seqs[-1]:
            predictions.append(harness.prediction("burst"))
    finally:
        del pipeline.process

    assert max(p.folded for p in predictions) > 64  # a batch longer than the pending buffer was folded
    reference = DecodingReference(model)
    reference.load(direction)
    missing = np.full(N, np.nan, np.float32)
    expected = reference.run([frames[s] if s in seqs else missing for s in range(150)])
    for p in predictions:
        assert p.stream_frame == p.seq
        assert_decoded(p.decoded, expected[p.stream_frame], f"seq {p.seq} (folded {p.folded})")
    assert harness.session_status("burst")["heads"][0]["pooled_frames"] == 150


def test_rejected_loads_leave_the_loaded_heads_serving(harness, model, frames, tmp_path):
    good = save_head(tmp_path / "good")
    harness.control.start_session("keep", N)
    harness.control.load_head("keep", str(good))
    reference = DecodingReference(model)
    reference.load(good)
    sender = harness.sender("keep")
    for p, want in zip(harness.send_lockstep(sender, frames[:10]), reference.run(frames[:10]), strict=True):
        assert_decoded(p.decoded, want)

    no_weights = save_head(tmp_path / "no-weights")
    no_weights.with_suffix(".safetensors").unlink()
    truncated = save_head(tmp_path / "truncated")
    weights = truncated.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    scrambled = save_head(tmp_path / "scrambled")  # the right size, but not a safetensors file
    weights = scrambled.with_suffix(".safetensors")
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    not_json = tmp_path / "not-json.json"
    not_json.write_text("{direction")
    not_json.with_suffix(".safetensors").write_bytes(b"")
    other_format = tmp_path / "other.json"
    other_format.write_text('{"format": "rtcalm-checkpoint", "version": 1, "config": {}}')
    other_format.with_suffix(".safetensors").write_bytes(b"")
    nan_weights = tmp_path / "nan"
    head = load_head(save_head(nan_weights), expected=DecodingHead)
    with torch.no_grad():
        head.readout.weight[0, 0] = float("nan")
    write_head(head, nan_weights)
    cases = [
        ("keep", save_head(tmp_path / "wide", n_neurons=N + 1), "head_mismatch", "n_neurons"),
        ("keep", save_head(tmp_path / "narrow", d_model=D // 2), "head_mismatch", "d_model"),
        ("keep", tmp_path / "missing.json", "head_not_found", "missing.json"),
        ("keep", no_weights, "head_not_found", "direction.safetensors"),
        ("keep", truncated, "head_invalid", "too small"),
        ("keep", scrambled, "head_invalid", "cannot load head"),
        ("keep", not_json, "head_invalid", "not JSON"),
        ("keep", other_format, "head_invalid", "not an rtcalm head"),
        ("keep", nan_weights / "direction.json", "head_invalid", "NaN"),
        ("keep", save_head(tmp_path / "clash", name="direction_probabilities", kind="regression"), "head_conflict",
         "direction_probabilities"),
        ("nobody", good, "unknown_session", "nobody"),
    ]
    seq = 10
    for session, path, code, words in cases:
        with pytest.raises(DaemonError) as info:
            harness.control.load_head(session, str(path))
        assert (info.value.code, words in info.value.message) == (code, True), (path, info.value)
        # the loaded head is untouched and keeps decoding, its pool continuing where it was
        (p,) = harness.send_lockstep(sender, frames[seq:seq + 1], seqs=[seq])
        assert_decoded(p.decoded, reference.step(frames[seq]), f"after {code} for {path}")
        seq += 1
    heads = harness.session_status("keep")["heads"]
    assert [(h["name"], h["path"], h["pooled_frames"]) for h in heads] == [("direction", str(good), seq)]
    with pytest.raises(DaemonError) as info:
        harness.control.request("load_head", session="keep")
    assert info.value.code == "bad_field"
    failed = metric(harness, "rtcalm_control_requests_total", cmd="load_head", result="head_mismatch")
    assert failed == 2


def test_replace_and_unload(harness, model, frames, tmp_path):
    first, second = save_head(tmp_path / "a", seed=1), save_head(tmp_path / "b", seed=2)
    speed = fit_speed_head(tmp_path)
    harness.control.start_session("swap", N)
    harness.control.load_head("swap", str(first))
    harness.control.load_head("swap", str(speed))
    reference = DecodingReference(model)
    reference.load(first)
    reference.load(speed)
    sender = harness.sender("swap")
    for p, want in zip(harness.send_lockstep(sender, frames[:15]), reference.run(frames[:15]), strict=True):
        assert_decoded(p.decoded, want)

    # The same name: replaced in place (same output position), with a fresh pool.
    reply = harness.control.load_head("swap", str(second))
    assert reply["replaced"] is True and [h["name"] for h in reply["heads"]] == ["direction", "speed"]
    assert reply["head"]["pooled_frames"] == 0 and reply["head"]["path"] == str(second)
    reference.load(second)
    after = harness.send_lockstep(sender, frames[15:30], seqs=range(15, 30))
    for p, want in zip(after, reference.run(frames[15:30]), strict=True):
        assert_decoded(p.decoded, want)

    reply = harness.control.unload_head("swap", "direction")
    assert reply["unloaded"] == "direction" and [h["name"] for h in reply["heads"]] == ["speed"]
    del reference.heads["direction"]
    (p,) = harness.send_lockstep(sender, frames[30:31], seqs=[30])
    assert_decoded(p.decoded, reference.step(frames[30]))
    assert set(p.decoded) == {"speed"}
    with pytest.raises(DaemonError) as info:
        harness.control.unload_head("swap", "direction")
    assert info.value.code == "unknown_head" and "speed" in info.value.message
    with pytest.raises(DaemonError) as info:
        harness.control.unload_head("nobody", "speed")
    assert info.value.code == "unknown_session"
    harness.control.unload_head("swap", "speed")
    assert harness.send_lockstep(sender, frames[31:32], seqs=[31])[0].decoded == {}
    assert harness.session_status("swap")["heads"] == []
    assert metric(harness, "rtcalm_session_heads", session="swap") == 0


def test_reset_zeroes_pools_and_a_new_neuron_count_drops_heads(harness, model, frames, tmp_path):
    direction = save_head(tmp_path)
    sender = harness.sender("auto")  # auto-started: a frame of another neuron count starts a new stream
    harness.send_lockstep(sender, frames[:1])
    harness.control.load_head("auto", str(direction))
    reference = DecodingReference(model)
    reference.load(direction)
    reference.stream.step(frames[0])  # the frame before the load: in the stream, not in the pool
    for p, want in zip(harness.send_lockstep(sender, frames[1:20], seqs=range(1, 20)), reference.run(frames[1:20]),
                       strict=True):
        assert_decoded(p.decoded, want)

    harness.control.reset_session("auto")  # same neuron count: the heads stay, their pools start over
    assert harness.session_status("auto")["heads"][0]["pooled_frames"] == 0
    reference.restart()
    restarted = harness.send_lockstep(sender, frames[20:35], seqs=range(0, 15))
    for p, want in zip(restarted, reference.run(frames[20:35]), strict=True):
        assert_decoded(p.decoded, want)

    wider = make_synthetic(n_neurons=N + 3, n_frames=3, seed=5).dff
    (p,) = harness.send_lockstep(sender, wider[:1], seqs=[15])  # a new neuron count: the heads no longer fit
    assert p.n_neurons == N + 3 and p.decoded == {} and p.stream_id != restarted[-1].stream_id
    assert harness.session_status("auto")["heads"] == []
    assert metric(harness, "rtcalm_heads_dropped_total", reason="neuron_count") == 1
    assert metric(harness, "rtcalm_session_heads", session="auto") == 0


def test_hot_swap_drops_heads_even_of_the_same_width(harness, second_checkpoint, frames, tmp_path):
    direction = save_head(tmp_path)
    harness.control.start_session("hot", N)
    harness.control.load_head("hot", str(direction))
    sender = harness.sender("hot")
    (p,) = harness.send_lockstep(sender, frames[:20])[-1:]
    assert set(p.decoded) == {"direction", "direction_probabilities"}

    harness.control.load_model(str(second_checkpoint))  # same d_model, other weights: the readout is void
    (p,) = harness.send_lockstep(sender, frames[20:21], seqs=[20])
    assert p.model_version.startswith("small-b@") and p.decoded == {}
    assert harness.session_status("hot")["heads"] == []
    assert metric(harness, "rtcalm_heads_dropped_total", reason="model_swap") == 1
    harness.control.load_head("hot", str(direction))  # a head fitted on the new model loads again
    (p,) = harness.send_lockstep(sender, frames[21:22], seqs=[21])
    assert p.decoded["direction"] in DIRECTIONS

    narrow = tmp_path / "narrow-model"
    make_checkpoint(narrow, seed=3, d_model=D // 2)
    harness.control.load_model(str(narrow))
    (p,) = harness.send_lockstep(sender, frames[22:23], seqs=[22])
    assert p.model_version.startswith("narrow-model@") and p.decoded == {}
    assert harness.session_status("hot")["heads"] == []
    assert metric(harness, "rtcalm_heads_dropped_total", reason="model_swap") == 2
    # heads fitted for the new width load again
    harness.control.load_head("hot", str(save_head(tmp_path / "narrow-head", d_model=D // 2)))
    (p,) = harness.send_lockstep(sender, frames[23:24], seqs=[23])
    assert p.decoded["direction"] in DIRECTIONS


def test_time_resolved_head_decodes_every_frame_like_the_offline_head(harness, model, frames, tmp_path):
    """A version-2 head beside an EMA head: lockstep frames, then a folded burst with a gap, each equal to
    the offline run; its ring buffer restarts with the stream; malformed version-2 files are refused."""
    resolved = save_time_resolved_head(tmp_path / "tr", name="direction", n_bins=3)  # bins of 3, 3, 2 frames
    speed = fit_speed_head(tmp_path)
    harness.control.start_session("tr", N)
    described = harness.control.load_head("tr", str(resolved))["head"]
    assert (described["pooling"], described["window_frames"], described["n_bins"], described["components"]) == \
        ("time_bins", 8, 3, 2)
    harness.control.load_head("tr", str(speed))
    reference = DecodingReference(model)
    reference.load(resolved)
    reference.load(speed)
    sender = harness.sender("tr")
    predictions = harness.send_lockstep(sender, frames[:30])
    for p, want in zip(predictions, reference.run(frames[:30]), strict=True):
        assert_decoded(p.decoded, want, f"seq {p.seq}")
    assert len({round(p.decoded["direction_probabilities"][0], 5) for p in predictions[8:]}) > 10  # it moves

    pipeline = harness.daemon.pipeline
    gate = threading.Event()
    original = pipeline.process

    def held(batch):
        gate.wait(30)
        original(batch)

    seqs = [*range(30, 70), *range(72, 110)]  # 70 and 71 missing: filled-in frames enter the ring buffer too
    pipeline.process = held
    try:
        for seq in seqs:
            sender.send(frames[seq], seq=seq)
        gate.set()
        burst = []
        while not burst or burst[-1].seq != seqs[-1]:
            burst.append(harness.prediction("tr"))
    finally:
        del pipeline.process
    assert max(p.folded for p in burst) > 8  # more frames folded than the head's window
    missing = np.full(N, np.nan, np.float32)
    expected = reference.run([frames[s] if s in seqs else missing for s in range(30, 110)])
    for p in burst:
        assert_decoded(p.decoded, expected[p.seq - 30], f"seq {p.seq} (folded {p.folded})")
    assert harness.session_status("tr")["heads"][0]["pooled_frames"] == 110

    harness.control.reset_session("tr")  # a fresh stream: the ring buffer empties
    reference.restart()
    for p, want in zip(harness.send_lockstep(sender, frames[110:125], seqs=range(15)),
                       reference.run(frames[110:125]), strict=True):
        assert_decoded(p.decoded, want)

    truncated = save_time_resolved_head(tmp_path / "truncated")
    weights = truncated.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:200])
    too_many_bins = save_time_resolved_head(tmp_path / "bins")
    document = too_many_bins.read_text().replace('"window_frames": 8', '"window_frames": 2')  # 3 bins
    too_many_bins.write_text(document)
    wrong_pooling = save_time_resolved_head(tmp_path / "pooling")
    wrong_pooling.write_text(wrong_pooling.read_text().replace('"time_bins"', '"ema"'))
    bad_sizes = save_time_resolved_head(tmp_path / "sizes")  # version 4: bins of given lengths, here 9 of 8 frames
    document = json.loads(bad_sizes.read_text())
    document["version"] = 4
    document["config"]["bin_sizes"] = [3, 3, 3]
    bad_sizes.write_text(json.dumps(document))
    for path, code, words in [(save_time_resolved_head(tmp_path / "wide", n_neurons=N + 1), "head_mismatch", "n_neurons"),
                              (truncated, "head_invalid", "too small"),
                              (too_many_bins, "head_invalid", "cannot exceed window_frames"),
                              (wrong_pooling, "head_invalid", "pooling 'time_bins'"),
                              (bad_sizes, "head_invalid", "summing to window_frames")]:
        with pytest.raises(DaemonError) as info:
            harness.control.load_head("tr", str(path))
        assert (info.value.code, words in info.value.message) == (code, True), (path, info.value)
    (p,) = harness.send_lockstep(sender, frames[125:126], seqs=[15])  # the loaded heads kept decoding
    assert_decoded(p.decoded, reference.step(frames[125]))


def test_raw_and_both_heads_read_the_normalised_frames_in_lockstep_and_in_folded_bursts(harness, model, frames,
                                                                                       tmp_path):
    """Version-3 heads on the ΔF/F frames as received (raw) and on those and the hidden state (both):
    every frame of a lockstep run and of a folded burst with a gap equals the offline run. A raw head
    reads no hidden state, so it loads whatever the model's width; a both head does not."""
    raw = save_time_resolved_head(tmp_path / "raw", name="raw", features="raw", window_frames=6, n_bins=2,
                                  d_model=D // 2, seed=4)
    both = save_time_resolved_head(tmp_path / "both", name="both", features="both", window_frames=9, n_bins=4, seed=5)
    harness.control.start_session("rawboth", N)
    described = harness.control.load_head("rawboth", str(raw))["head"]
    assert (described["features"], described["components"]) == ("raw", 0)
    harness.control.load_head("rawboth", str(both))
    reference = DecodingReference(model)
    reference.load(raw)
    reference.load(both)
    sender = harness.sender("rawboth")
    predictions = harness.send_lockstep(sender, frames[:40])
    expected = reference.run(frames[:40])
    for p, want in zip(predictions, expected, strict=True):
        assert_decoded(p.decoded, want, f"seq {p.seq}")
    assert len({round(p.decoded["raw_probabilities"][0], 5) for p in predictions[6:]}) > 10  # it moves

    pipeline = harness.daemon.pipeline
    gate = threading.Event()
    original = pipeline.process

    def held(batch):
        gate.wait(30)
        original(batch)

    seqs = [*range(40, 80), *range(83, 120)]  # 80-82 missing: NaN frames enter the raw ring buffer as zeros
    pipeline.process = held
    try:
        for seq in seqs:
            sender.send(frames[seq], seq=seq)
        gate.set()
        burst = []
        while not burst or burst[-1].seq != seqs[-1]:
            burst.append(harness.prediction("rawboth"))
    finally:
        del pipeline.process
    assert max(p.folded for p in burst) > 9
    missing = np.full(N, np.nan, np.float32)
    expected = reference.run([frames[s] if s in seqs else missing for s in range(40, 120)])
    for p in burst:
        assert_decoded(p.decoded, expected[p.seq - 40], f"seq {p.seq} (folded {p.folded})")

    narrow_both = save_time_resolved_head(tmp_path / "narrow-both", name="both", features="both", d_model=D // 2)
    with pytest.raises(DaemonError) as info:
        harness.control.load_head("rawboth", str(narrow_both))
    assert info.value.code == "head_mismatch" and "d_model" in info.value.message
