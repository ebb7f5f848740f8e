"""The time-resolved head, each kind of features (raw, backbone, both): equal to the offline estimator,
its ring buffer equal to the window forward, its file format (versions 2, 3 and 4), and the average of
heads as one head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtcalm.model.heads import (
    DecodingHead,
    HeadConfig,
    HeadError,
    TimeResolvedConfig,
    TimeResolvedHead,
    average_heads,
    fit_head,
    fit_time_resolved_head,
    load_head,
    open_stream,
    save_head,
)

CLASSES = [0.0, 90.0, 180.0, 270.0]


def _frames(trials=96, window=12, neurons=6, d=5, seed=0):
    """Per-frame hidden states whose *time course* carries the class: along one shared axis each neuron
    rises in the first half of the window and falls in the second with a class-specific sign. ``z``: the
    same time course in each neuron's ΔF/F directly, with some missing values."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(CLASSES, trials // 4)
    signs = rng.choice([-1.0, 1.0], size=(4, neurons))
    course = np.where(np.arange(window) < window // 2, 1.0, -1.0)
    axis = rng.standard_normal(d)
    pattern = signs[np.searchsorted(CLASSES, targets)][:, None, :] * course[None, :, None]  # (trials, window, N)
    hidden = rng.standard_normal((trials, window, neurons, d)) * 0.7 + pattern[..., None] * axis
    z = rng.standard_normal((trials, window, neurons)) * 0.7 + 0.5 * pattern
    z[rng.random(z.shape) < 0.02] = np.nan
    return z.astype(np.float32), hidden.astype(np.float32), targets


def _config(kind="classification", features="backbone", **overrides):
    values = dict(name="direction", kind=kind, n_neurons=6, d_model=5, window_frames=12, n_bins=4,
                  components=0 if features == "raw" else 2, classes=CLASSES if kind == "classification" else [],
                  features=features)
    return TimeResolvedConfig(**{**values, **overrides})


def _inputs(features, dff, hidden):
    return {"dff": dff if features != "backbone" else None, "hidden": hidden if features != "raw" else None}


def test_backbone_head_computes_the_offline_estimator_and_decodes_held_out_trials():
    from rtcalm.model.heads.linear import ShrinkageLDA, principal_projection, time_binned

    z, x, y = _frames()
    train, test = np.arange(96) % 4 != 0, np.arange(96) % 4 == 0
    head = fit_time_resolved_head(_config(), y[train], hidden=x[train])
    mean, basis = principal_projection(x[train], 2)

    def features(frames):
        return time_binned(((frames - mean) @ basis).reshape(len(frames), 12, 12), 4)

    lda = ShrinkageLDA().fit(features(x[train]), np.searchsorted(CLASSES, y[train]))
    logits = head.window_logits(None, torch.from_numpy(x[test])).detach().numpy()
    assert np.allclose(logits, lda.decision_function(features(x[test])), rtol=1e-4, atol=1e-3)
    assert np.mean(np.asarray(CLASSES)[logits.argmax(1)] == y[test]) > 0.8  # chance 0.25
    # the mean over the window is the same for every class: a one-bin head cannot decode it
    flat = fit_time_resolved_head(_config(n_bins=1), y[train], hidden=x[train])
    assert np.mean(np.asarray(CLASSES)[flat.window_logits(None, torch.from_numpy(x[test])).argmax(1).numpy()]
                   == y[test]) < 0.5


@pytest.mark.parametrize("features", ["raw", "both"])
def test_raw_and_both_heads_are_shrinkage_lda_on_their_frame_features(features):
    from rtcalm.model.heads.linear import ShrinkageLDA, principal_projection, time_binned

    z, x, y = _frames(seed=3)
    train, test = np.arange(96) % 4 != 0, np.arange(96) % 4 == 0
    head = fit_time_resolved_head(_config(features=features), y[train], **_inputs(features, z[train], x[train]))
    per_frame = [np.nan_to_num(z, nan=0.0).astype(np.float64)]
    if features == "both":
        mean, basis = principal_projection(x[train], 2)
        per_frame.append(((x - mean) @ basis).reshape(96, 12, 12))
    per_frame = np.concatenate(per_frame, axis=-1)
    expected_width = 6 if features == "raw" else 18
    assert per_frame.shape[-1] == head.config.frame_features == expected_width
    lda = ShrinkageLDA().fit(time_binned(per_frame[train], 4), np.searchsorted(CLASSES, y[train]))
    inputs = _inputs(features, torch.from_numpy(z[test]), torch.from_numpy(x[test]))
    logits = head.window_logits(inputs["dff"], inputs["hidden"]).detach().numpy()
    assert np.allclose(logits, lda.decision_function(time_binned(per_frame[test], 4)), rtol=1e-4, atol=1e-3)
    assert np.mean(np.asarray(CLASSES)[logits.argmax(1)] == y[test]) > 0.8
    assert ("projection" in head.state_dict()) == (features == "both")


@pytest.mark.parametrize("features", ["raw", "backbone", "both"])
def test_streaming_ring_buffer_equals_the_window_forward(features):
    z, x, y = _frames(seed=1)
    head = fit_time_resolved_head(_config(features=features, n_bins=5), y, **_inputs(features, z, x))  # bins 3, 3, 2, 2, 2
    z_stream = np.concatenate([z[0], z[1], z[2][:7]])  # 31 frames: the buffer wraps twice
    h_stream = np.concatenate([x[0], x[1], x[2][:7]])
    stream = open_stream(head)
    for t in range(31):
        decoded = stream.step(h_stream[t], z_stream[t])
        if t >= 11:
            expected = head.window_logits(torch.from_numpy(z_stream[t - 11:t + 1]), torch.from_numpy(h_stream[t - 11:t + 1]))
            probabilities = torch.softmax(expected, -1)
            assert np.allclose(decoded["direction_probabilities"], probabilities.detach().numpy(), atol=1e-5)
            assert decoded["direction"] == CLASSES[int(expected.argmax())]
    assert stream.frames == 31
    absorbed = open_stream(head)
    for t in range(30):
        absorbed.absorb(h_stream[t], z_stream[t])
    last = absorbed.step(h_stream[30], z_stream[30])
    assert last == decoded  # absorb = step without the readout
    stream.reset()
    assert stream.frames == 0 and not stream.contributions.any()


def _random_head(kind, features, n_neurons=6, d_model=5, seed=0, **overrides):
    """A head with random weights, projection and bias (the streaming readout must equal the module's
    forward whatever they are)."""
    torch.manual_seed(seed)
    head = TimeResolvedHead(_config(kind, features=features, n_neurons=n_neurons, d_model=d_model, **overrides))
    with torch.no_grad():
        for tensor in [*head.parameters(), *([head.projection, head.projection_mean] if features != "raw" else [])]:
            tensor.normal_(0.0, 0.5)
    return head


@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize("features", ["raw", "backbone", "both"])
def test_streaming_readout_equals_the_module_forward_on_random_windows(kind, features):
    """The numba readout against the module's forward in float64 on the same float32 inputs: every frame
    from the load (the window partly filled: frames before the stream count as zero features), through
    three wraps of the ring, some frames absorbed without a readout, then again after a reset."""
    import copy

    head = _random_head(kind, features, n_bins=5)  # bins of 3, 3, 2, 2, 2 frames
    exact = copy.deepcopy(head).double()
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((60, 6, 5)).astype(np.float32)
    dff = rng.standard_normal((60, 6)).astype(np.float32)
    dff[rng.random(dff.shape) < 0.1] = np.nan
    dff[3, 2], dff[50, 4] = np.inf, -np.inf
    stream = open_stream(head)
    steps = 0
    for start in (0, 42):  # from the load; then after a reset
        if start:
            stream.reset()
        per_frame = exact.frame_features(torch.from_numpy(dff[start:]).double(), torch.from_numpy(hidden[start:]).double())
        padded = torch.cat([per_frame.new_zeros(11, per_frame.shape[1]), per_frame])  # window 12
        for t in range(60 - start):
            if t % 5 == 3:
                stream.absorb(hidden[start + t], dff[start + t])
                continue
            got = stream.step(hidden[start + t], dff[start + t])
            steps += 1
            with torch.no_grad():
                logits = exact(padded[t:t + 12]).numpy()
                served = head(padded[t:t + 12].float()).numpy()  # the float32 module fit-head scores
            np.testing.assert_allclose(stream.logits, logits, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(stream.logits, served, rtol=1e-5, atol=1e-5)
            if kind == "regression":
                assert got == {"direction": pytest.approx(float(logits[0]), rel=1e-12, abs=1e-12)}
            else:
                probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                assert list(got) == ["direction", "direction_probabilities"]
                assert got["direction"] == CLASSES[int(np.argmax(logits))]
                assert got["direction_probabilities"] == pytest.approx(list(probabilities), rel=1e-12, abs=1e-15)
    assert steps == 48 + 15 and stream.frames == 18


@pytest.mark.parametrize("features", ["raw", "backbone", "both", "ema"])
def test_streaming_allocates_nothing_per_frame(features):
    """A frame reuses the stream's preallocated arrays (the same objects, the same memory) and makes no
    array of its own: at 512 neurons any per-frame array of features would be kB, the published dict a
    few hundred bytes."""
    import tracemalloc

    n, d = 512, 8
    if features == "ema":
        head = DecodingHead(HeadConfig("direction", "classification", n, d, pool_frames=4.0, classes=CLASSES))
    else:
        head = _random_head("classification", features, n_neurons=n, d_model=d, n_bins=4, window_frames=20,
                            components=0 if features == "raw" else 2)
    stream = open_stream(head)
    rng = np.random.default_rng(0)
    hidden, dff = rng.standard_normal((2, n, d)).astype(np.float32), rng.standard_normal((2, n)).astype(np.float32)
    stream.step(hidden[0], dff[0])  # the kernels compiled or loaded

    def buffers():
        return {name: (id(value), value.ctypes.data) for name, value in vars(stream).items()
                if isinstance(value, np.ndarray)}

    before = buffers()
    tracemalloc.start()
    try:
        growth = []
        for t in range(25):
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            (stream.absorb if t % 2 else stream.step)(hidden[t % 2], dff[t % 2])
            growth.append(tracemalloc.get_traced_memory()[1] - start)
    finally:
        tracemalloc.stop()
    assert buffers() == before and len(before) >= 4
    assert max(growth) < 1024, growth


@pytest.mark.parametrize("features", ["raw", "backbone", "both"])
def test_regression_head_round_trip(tmp_path, features):
    z, x, _ = _frames(seed=2)
    speed = (x[:, 6:, 0, :].mean(axis=(1, 2)) + np.nan_to_num(z[:, 6:, 0]).mean(axis=1)).astype(np.float64)
    config = _config("regression", features=features, n_bins=2, **({} if features == "raw" else {"components": 5}))
    head = fit_time_resolved_head(config, speed, alpha=1.0, **_inputs(features, z, x))
    inputs = _inputs(features, torch.from_numpy(z), torch.from_numpy(x))
    predicted = head.window_logits(inputs["dff"], inputs["hidden"])[:, 0].detach().numpy()
    assert np.corrcoef(predicted, speed)[0, 1] > 0.8
    path = save_head(head, tmp_path, provenance={"made_by": "a test"})
    assert json.loads(path.read_text())["version"] == 3
    loaded = load_head(path)
    assert isinstance(loaded, TimeResolvedHead) and loaded.config == head.config
    assert torch.allclose(loaded.window_logits(inputs["dff"], inputs["hidden"]),
                          head.window_logits(inputs["dff"], inputs["hidden"]))
    stream = open_stream(loaded)
    for t in range(12):
        out = stream.step(x[3, t], z[3, t])
    assert out["direction"] == pytest.approx(float(predicted[3]), abs=1e-4)


def test_version_1_and_2_heads_still_load_and_each_loader_knows_its_kind(tmp_path):
    from rtcalm.model.heads import read_provenance

    z, x, y = _frames()
    ema = fit_head(x.mean(axis=1), y, HeadConfig("ema", "classification", 6, 5, pool_frames=12, classes=CLASSES))
    ema_json = save_head(ema, tmp_path)
    assert json.loads(ema_json.read_text())["version"] == 1  # unchanged for older readers
    assert isinstance(load_head(ema_json), DecodingHead) and read_provenance(ema_json) is None
    resolved = fit_time_resolved_head(_config(), y, hidden=x)
    resolved_json = save_head(resolved, tmp_path)
    with pytest.raises(HeadError, match="TimeResolvedHead, not a DecodingHead"):
        load_head(resolved_json, expected=DecodingHead)
    # a version 2 file as the previous release wrote it: no "features", the backbone read
    document = json.loads(resolved_json.read_text())
    del document["config"]["features"]
    document["version"] = 2
    resolved_json.write_text(json.dumps(document))
    old = load_head(resolved_json)
    assert old.config.features == "backbone" and torch.equal(old.readout.weight, resolved.readout.weight)


def _saved(tmp_path, features="backbone"):
    z, x, y = _frames()
    path = save_head(fit_time_resolved_head(_config(features=features), y, **_inputs(features, z, x)), tmp_path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("features, change, message", [
    ("backbone", lambda d: d.update(version=5), "version 1, 2, 3 or 4"),
    ("backbone", lambda d: d.update(format="other"), "not an rtcalm head"),
    ("backbone", lambda d: d["config"].update(pooling="ema"), "pooling 'time_bins'"),
    ("backbone", lambda d: d.update(version=2), "version 2 head reads the backbone"),
    ("backbone", lambda d: d["config"].update(n_bins=13), "cannot exceed window_frames"),
    ("backbone", lambda d: d["config"].update(components=6), "cannot exceed d_model"),
    ("backbone", lambda d: d["config"].update(components=0), "components must be a positive integer"),
    ("backbone", lambda d: d["config"].update(window_frames=0), "window_frames must be a positive integer"),
    ("backbone", lambda d: d["config"].update(n_bins=2.5), "n_bins must be a positive integer"),
    ("backbone", lambda d: d["config"].update(features="hidden"), "features must be one of"),
    ("backbone", lambda d: d["config"].update(colour="red"), "bad head config"),
    ("backbone", lambda d: d["config"].update(n_neurons=7), "readout.weight has shape"),
    ("backbone", lambda d: d["config"].update(features="both"), "readout.weight has shape"),
    ("raw", lambda d: d["config"].update(components=2), "components must be 0"),
    ("raw", lambda d: d["config"].update(features="both", components=2), "tensors"),
    ("backbone", lambda d: d.pop("config"), "no 'config' map"),
    ("backbone", lambda d: d["config"].update(bin_sizes=[3, 3, 3, 3]), "only a version 4 head, lists 'bin_sizes'"),
    ("backbone", lambda d: d.update(version=4), "only a version 4 head, lists 'bin_sizes'"),
    ("backbone", lambda d: (d.update(version=4), d["config"].update(bin_sizes=[3, 3, 3, 4])), "summing to window_frames"),
    ("backbone", lambda d: (d.update(version=4), d["config"].update(bin_sizes=[6, 6])), "must list n_bins"),
    ("backbone", lambda d: (d.update(version=4), d["config"].update(bin_sizes=[3, 3, 6, 0])), "positive integers"),
    ("backbone", lambda d: (d.update(version=4), d["config"].update(bin_sizes="3,3,3,3")), "positive integers"),
])
def test_malformed_config(tmp_path, features, change, message):
    path, document = _saved(tmp_path, features)
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(HeadError, match=message):
        load_head(path)


def test_malformed_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = _saved(tmp_path)
    weights = path.with_suffix(".safetensors")
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if k != "projection"}, str(weights))
    with pytest.raises(HeadError, match="expected"):
        load_head(path)
    bad = dict(tensors)
    bad["projection"] = bad["projection"].clone()
    bad["projection"][0, 0] = float("nan")
    save_file(bad, str(weights))
    with pytest.raises(HeadError, match="NaN or Inf"):
        load_head(path)
    weights.write_bytes(b"not safetensors")
    with pytest.raises(HeadError, match="cannot load head weights"):
        load_head(path)
    weights.unlink()
    with pytest.raises(HeadError, match="cannot load head weights"):
        load_head(path)
    path.write_text("{broken")
    with pytest.raises(HeadError, match="cannot load head"):
        load_head(path)


def test_fit_checks_shapes_and_classes():
    z, x, y = _frames()
    with pytest.raises(HeadError, match="do not match"):
        fit_time_resolved_head(_config(), y, hidden=x[:, :10])
    with pytest.raises(HeadError, match="among the head's classes"):
        fit_time_resolved_head(_config(), y + 1.0, hidden=x)
    with pytest.raises(HeadError, match="a raw head is fitted on dff"):
        fit_time_resolved_head(_config(features="raw"), y, hidden=x)
    with pytest.raises(HeadError, match="width 5, the config's d_model is 4"):
        fit_time_resolved_head(_config(d_model=4), y, hidden=x)


def _fitted_members(z, x, y):
    """Heads of every kind and several bin counts fitted on the same trials (one shared projection)."""
    from rtcalm.model.heads.linear import principal_projection

    projection = principal_projection(x, 2)
    return [fit_time_resolved_head(_config(features=features, n_bins=bins), y, projection=projection,
                                   **_inputs(features, z, x))
            for features, bins in (("raw", 4), ("backbone", 1), ("both", 3), ("raw", 12), ("backbone", 4))]


def test_the_average_of_heads_is_one_head_computing_the_mean_of_their_logits(tmp_path):
    z, x, y = _frames(seed=4)
    members = _fitted_members(z, x, y)
    averaged = average_heads(members)
    config = averaged.config
    assert config.features == "both" and config.components == 2
    # the union of the edges of 4, 1, 3 and 12 bins over 12 frames: every frame its own bin (array_split's)
    assert config.n_bins == 12 and config.bin_sizes is None
    dff, hidden = torch.from_numpy(z), torch.from_numpy(x)
    with torch.inference_mode():
        expected = torch.stack([m.window_logits(dff if m.config.uses_raw else None,
                                                hidden if m.config.uses_backbone else None) for m in members]).mean(0)
        got = averaged.window_logits(dff, hidden)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)
    # uneven unions keep their bins: 4 and 5 bins over 12 frames (edges 0 3 6 9 12 and 0 3 6 8 10 12)
    uneven = average_heads([fit_time_resolved_head(_config(features="raw", n_bins=n), y, dff=z) for n in (4, 5)])
    assert uneven.config.bin_sizes == [3, 3, 2, 1, 1, 2] and uneven.config.n_bins == 6
    path = save_head(uneven, tmp_path)
    assert json.loads(path.read_text())["version"] == 4
    loaded = load_head(path)
    assert loaded.config == uneven.config
    with torch.inference_mode():
        wanted = torch.stack([fit_time_resolved_head(_config(features="raw", n_bins=n), y, dff=z).window_logits(dff, None)
                              for n in (4, 5)]).mean(0)
        assert torch.allclose(loaded.window_logits(dff, None), wanted, rtol=1e-5, atol=1e-4)
    # the daemon's ring buffer streams the loaded average exactly as its forward
    stream = open_stream(loaded)
    for t in range(12):
        out = stream.step(None, z[5, t])
    assert np.allclose(stream.logits, wanted[5].numpy(), atol=1e-4)
    assert out["direction"] == CLASSES[int(wanted[5].argmax())]


def test_average_heads_refuses_heads_it_cannot_average():
    z, x, y = _frames(seed=5)
    raw = fit_time_resolved_head(_config(features="raw"), y, dff=z)
    with pytest.raises(HeadError, match="no heads"):
        average_heads([])
    other_classes = fit_time_resolved_head(_config(features="raw", classes=[0.0, 90.0, 180.0, 270.0, 360.0]),
                                           np.where(y == 0, 360.0, y), dff=z)
    with pytest.raises(HeadError, match="differ in classes"):
        average_heads([raw, other_classes])
    with pytest.raises(HeadError, match="differ in window_frames"):
        average_heads([raw, fit_time_resolved_head(_config(features="raw", window_frames=6), y, dff=z[:, :6])])
    own_projections = [fit_time_resolved_head(_config(), y[keep], hidden=x[keep]) for keep in (y != 0, y != 90)]
    with pytest.raises(HeadError, match="share one projection"):
        average_heads(own_projections)
    with pytest.raises(HeadError, match="same components"):
        average_heads([fit_time_resolved_head(_config(components=k), y, hidden=x) for k in (1, 2)])


def test_nested_bins_nest_and_time_binned_takes_their_lengths():
    from rtcalm.model.heads.linear import nested_bin_sizes, time_binned

    assert nested_bin_sizes(60, 8) == [8, 7, 8, 7, 8, 7, 8, 7] and nested_bin_sizes(60, 4) == [15] * 4
    for frames in (8, 32, 60, 61, 97):
        edges = {n: set(np.cumsum([0, *nested_bin_sizes(frames, n)]).tolist()) for n in (1, 2, 4, 8)}
        assert edges[1] <= edges[2] <= edges[4] <= edges[8] and len(edges[8]) == 9
    with pytest.raises(ValueError, match="between 1 and the 6 frames"):
        nested_bin_sizes(6, 8)
    per_frame = np.arange(2 * 7 * 3, dtype=np.float64).reshape(2, 7, 3)
    binned = time_binned(per_frame, 4, nested_bin_sizes(7, 4))  # lengths 2 2 1 2
    assert np.allclose(binned[0, :3], per_frame[0, :2].mean(0)) and np.allclose(binned[0, 6:9], per_frame[0, 4])
    with pytest.raises(ValueError, match="summing to the 7 frames"):
        time_binned(per_frame, 2, [3, 3])
    # heads of 1, 2, 4 and 8 nested bins average to 8 bins
    z, x, y = _frames(trials=96, seed=6)
    heads = [fit_time_resolved_head(_config(features="raw", window_frames=12, n_bins=n,
                                            bin_sizes=nested_bin_sizes(12, n)), y, dff=z) for n in (1, 2, 4, 8)]
    assert average_heads(heads).config.n_bins == 8


def test_bin_sizes_equal_to_the_even_split_are_the_even_split():
    """One spelling per binning: lengths that are np.array_split's own are stored as none (a version 3 file)."""
    assert _config(n_bins=4, bin_sizes=[3, 3, 3, 3]).bin_sizes is None
    assert _config(n_bins=2, bin_sizes=[7, 5]).bin_sizes == [7, 5]
