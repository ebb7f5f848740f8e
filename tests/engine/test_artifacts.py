"""Compiled artifacts: written with their model hash, found next to the checkpoint, refused when built
from another model, damaged, or described by a missing/bad sidecar."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from rtcalm.engine import ArtifactError, NeuronRange, load_engine
from rtcalm.engine.artifact import (
    artifact_file_name,
    parse_neuron_range,
    read_artifact,
    read_sidecar,
    sha256_bytes,
    sidecar_path,
)
from rtcalm.engine.base import weights_sha256
from rtcalm.engine.build import compile_artifact
from rtcalm.engine.export import export_onnx
from rtcalm.engine.validate import validation_frames
from rtcalm.errors import RtcalmError
from rtcalm.model import save_checkpoint

SMALL_RANGE = NeuronRange(1, 64, False)


@pytest.fixture
def compiled(checkpoint):
    path, sidecar = compile_artifact(checkpoint, "onnx", SMALL_RANGE, validation_steps=40)
    return path


def rewrite_sidecar(path, **changes):
    document = json.loads(sidecar_path(path).read_text())
    document.update(changes)
    sidecar_path(path).write_text(json.dumps(document))


def test_compile_writes_artifact_and_sidecar_next_to_the_checkpoint(checkpoint, compiled):
    assert compiled == checkpoint / "compiled" / "onnx-n1-64.onnx"
    sidecar = read_sidecar(compiled)
    assert sidecar["model"]["weights_sha256"] == weights_sha256(checkpoint / "model.safetensors")
    assert sidecar["model"]["version"] == f"small-model@{sidecar['model']['weights_sha256'][:12]}"
    assert sidecar["artifact_sha256"] == sha256_bytes(compiled.read_bytes())
    assert sidecar["neurons"] == {"min": 1, "max": 64, "static": False, "opt": 64}
    assert sidecar["precision"] == "fp32" and sidecar["opset"] == 17 and sidecar["backend"] == "onnx"
    assert [r["n_neurons"] for r in sidecar["validation"]["results"]] == [1, 64]
    assert all(r["passed"] and r["max_abs_error"] <= 1e-4 for r in sidecar["validation"]["results"])
    assert {"rtcalm", "torch", "onnx", "onnxruntime"} <= set(sidecar["versions"])


def test_daemon_loads_the_compiled_artifact_and_it_matches_torch(checkpoint, compiled):
    onnx = load_engine(checkpoint, "onnx")
    torch_engine = load_engine(checkpoint, "torch")
    assert onnx.artifact == str(compiled) and "compiled artifact" in onnx.selection
    assert onnx.version == torch_engine.version
    frames = validation_frames(80, 40)
    a, b = onnx.new_stream(40), torch_engine.new_stream(40)
    onnx.fold(frames[:79], a), torch_engine.fold(frames[:79], b)
    assert np.abs(onnx.step(frames[79:], a) - torch_engine.step(frames[79:], b)).max() <= 1e-4
    with pytest.raises(RtcalmError, match="1 to 64 neurons"):
        onnx.new_stream(65)


def test_artifact_from_other_weights_is_refused(randomised_model, checkpoint, compiled, caplog):
    retrained = randomised_model(seed=7)
    save_checkpoint(retrained, checkpoint)  # retrained in place: the compiled file is now stale
    with pytest.raises(ArtifactError, match="built from model weights .* but the checkpoint's weights are"):
        load_engine(checkpoint, "onnx", artifact=compiled)
    with caplog.at_level(logging.WARNING, logger="rtcalm.engine"):
        engine = load_engine(checkpoint, "onnx")  # found by search: skipped, and exported afresh
    assert engine.artifact is None and "exported in memory" in engine.selection
    assert any("skipping compiled artifact" in r.message and "rebuild" in r.message for r in caplog.records)


def test_artifact_for_another_checkpoint_is_refused(randomised_model, checkpoint, compiled, tmp_path):
    other = save_checkpoint(randomised_model(seed=3), tmp_path / "other-model")
    with pytest.raises(ArtifactError, match="built from model weights"):
        load_engine(other, "onnx", artifact=compiled)


def test_truncated_or_modified_artifact_is_refused(compiled):
    payload = compiled.read_bytes()
    compiled.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ArtifactError, match="truncated, damaged or replaced"):
        read_artifact(compiled, "onnx")
    compiled.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        read_artifact(compiled, "onnx")


def test_garbage_with_a_matching_checksum_is_refused_by_onnx_runtime(checkpoint, compiled):
    garbage = b"this is not an ONNX protobuf" * 10
    compiled.write_bytes(garbage)
    rewrite_sidecar(compiled, artifact_sha256=sha256_bytes(garbage))
    with pytest.raises(ArtifactError, match="cannot load it as an ONNX model"):
        load_engine(checkpoint, "onnx", artifact=compiled)


def test_a_valid_onnx_graph_of_another_layout_is_refused(randomised_model, checkpoint, compiled):
    other = randomised_model(n_layers=1)  # one layer: inputs keys_0/values_0 only
    payload = export_onnx(other, SMALL_RANGE)
    compiled.write_bytes(payload)
    rewrite_sidecar(compiled, artifact_sha256=sha256_bytes(payload))
    with pytest.raises(ArtifactError, match="not the step layout of this model"):
        load_engine(checkpoint, "onnx", artifact=compiled)


def test_missing_or_bad_sidecar_is_refused(compiled):
    text = sidecar_path(compiled).read_text()
    sidecar_path(compiled).unlink()
    with pytest.raises(ArtifactError, match="missing: every compiled artifact needs its sidecar"):
        read_artifact(compiled, "onnx")
    cases = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({**json.loads(text), "format": "something-else"}), "format is 'something-else'"),
        (json.dumps({**json.loads(text), "format_version": 99}), "format_version 99 is not supported"),
        (json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}), "field 'model' must be"),
        (json.dumps({**json.loads(text), "opset": "17"}), "field 'opset' must be a JSON int"),
        (json.dumps({**json.loads(text), "backend": "coreml"}), "unknown backend 'coreml'"),
        (json.dumps({**json.loads(text), "neurons": {"min": 0, "max": 4, "static": False}}), "bad neurons field"),
        (json.dumps({**json.loads(text), "neurons": {"min": 9, "max": 4, "static": False}}), "bad neurons field"),
        (json.dumps({**json.loads(text), "precision": "int8"}), "precision must be"),
        (json.dumps({**json.loads(text), "model": {"weights_sha256": "abc"}}), "weights_sha256 must be 64"),
        (json.dumps({**json.loads(text), "artifact_sha256": "xyz"}), "artifact_sha256 must be 64"),
    ]
    for content, message in cases:
        sidecar_path(compiled).write_text(content)
        with pytest.raises(ArtifactError, match=message):
            read_artifact(compiled, "onnx")


def test_wrong_backend_renamed_file_directory_and_missing_file_are_refused(compiled, tmp_path):
    with pytest.raises(ArtifactError, match="is a onnx artifact, not tensorrt"):
        read_artifact(compiled, "tensorrt")
    renamed = compiled.with_name("renamed.onnx")
    shutil.copy(compiled, renamed)
    shutil.copy(sidecar_path(compiled), sidecar_path(renamed))
    with pytest.raises(ArtifactError, match="describes 'onnx-n1-64.onnx', not 'renamed.onnx'"):
        read_artifact(renamed, "onnx")
    with pytest.raises(ArtifactError, match="is a directory"):
        read_artifact(compiled.parent, "onnx")
    with pytest.raises(ArtifactError, match="no such artifact file"):
        read_artifact(tmp_path / "nothing.onnx", "onnx")


def test_config_mismatch_is_refused(checkpoint, compiled):
    document = json.loads(sidecar_path(compiled).read_text())
    rewrite_sidecar(compiled, model_config={**document["model_config"], "forecast_horizon_frames": 99})
    with pytest.raises(ArtifactError, match="different model config"):
        load_engine(checkpoint, "onnx", artifact=compiled)


def test_compile_refuses_bad_requests_and_writes_nothing(checkpoint, monkeypatch):
    with pytest.raises(RtcalmError, match="--fp16 is for --backend tensorrt"):
        compile_artifact(checkpoint, "onnx", fp16=True)
    with pytest.raises(RtcalmError, match="torch needs no compiling"):
        compile_artifact(checkpoint, "torch")
    with pytest.raises(RtcalmError, match="validation steps must be a positive integer"):
        compile_artifact(checkpoint, "onnx", validation_steps=0)
    with pytest.raises(RtcalmError, match="tolerance must be positive"):
        compile_artifact(checkpoint, "onnx", tolerance=0.0)
    # an engine that disagrees with torch is not written
    with pytest.raises(RtcalmError, match="does not match the torch reference.*nothing was written"):
        compile_artifact(checkpoint, "onnx", SMALL_RANGE, validation_steps=20, tolerance=1e-12)
    assert not (checkpoint / "compiled").exists()


def test_neuron_ranges_and_names():
    assert artifact_file_name("onnx", NeuronRange.exactly(512), False) == "onnx-n512.onnx"
    assert artifact_file_name("tensorrt", NeuronRange(1, 4096, False), True) == "tensorrt-n1-4096-fp16.plan"
    assert parse_neuron_range("16:4096") == NeuronRange(16, 4096, False)
    assert NeuronRange(1, 4096, False).opt == 512 and NeuronRange(1000, 4096, False).opt == 1000
    for text, message in [("4096", "MIN:MAX"), ("1:2:3", "MIN:MAX"), ("a:5", "whole number"), ("0:5", r"\[1, "),
                          ("9:5", "must not exceed"), ("1:99999999", r"\[1, ")]:
        with pytest.raises(RtcalmError, match=message):
            parse_neuron_range(text)


def test_unwritable_destination_is_a_clear_error(checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write the artifact"):
        compile_artifact(checkpoint, "onnx", SMALL_RANGE, validation_steps=5, out=blocker / "x.onnx")
    with pytest.raises(RtcalmError, match=r"must end in \.onnx"):
        compile_artifact(checkpoint, "onnx", SMALL_RANGE, validation_steps=5, out=tmp_path / "x.plan")


def test_of_several_valid_artifacts_the_widest_range_is_used(checkpoint):
    compile_artifact(checkpoint, "onnx", NeuronRange.exactly(8), validation_steps=5)
    wide, _ = compile_artifact(checkpoint, "onnx", NeuronRange(1, 32, False), validation_steps=5)
    assert load_engine(checkpoint, "onnx").artifact == str(wide)
