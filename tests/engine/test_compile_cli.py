"""``rtcalm compile`` on the command line: success, and one-line errors (exit status 2) for bad input."""

from __future__ import annotations

import pytest

from rtcalm.cli import main
from rtcalm.engine.artifact import read_sidecar
from rtcalm.engine.loading import tensorrt_status


def test_compile_onnx_writes_the_artifact(checkpoint, capsys):
    assert main(["compile", "--model", str(checkpoint), "--backend", "onnx", "--neurons", "16",
                 "--validation-steps", "30"]) == 0
    out, err = capsys.readouterr()
    path = checkpoint / "compiled" / "onnx-n16.onnx"
    assert out.strip() == str(path) and path.is_file()
    assert "N=16: 30 steps" in err and "max |forecast - torch|" in err
    assert read_sidecar(path)["neurons"]["static"] is True


@pytest.mark.parametrize("args, message", [
    (["--neurons", "0"], "neuron count must be in [1, 4194304], got 0"),
    (["--neurons", "abc"], "neuron count must be a whole number"),
    (["--neurons-range", "64:8"], "MIN must not exceed MAX"),
    (["--neurons-range", "64"], "neuron range must be MIN:MAX"),
    (["--fp16"], "--fp16 is for --backend tensorrt"),
    (["--validation-steps", "0"], "validation steps must be a positive integer"),
    (["--out", "x.plan"], "must end in .onnx"),
])
def test_bad_arguments_are_one_line_errors(checkpoint, capsys, args, message):
    assert main(["compile", "--model", str(checkpoint), "--backend", "onnx", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtcalm: error: ") and message in err
    assert not (checkpoint / "compiled").exists()


def test_missing_model_and_unavailable_tensorrt_are_one_line_errors(tmp_path, checkpoint, capsys):
    assert main(["compile", "--model", str(tmp_path / "nope"), "--backend", "onnx"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    if tensorrt_status()[0]:
        return
    assert main(["compile", "--model", str(checkpoint), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "cannot compile for tensorrt: " in err and "tensorrt" in err.split("cannot compile for tensorrt: ")[1]


def test_argparse_rejects_conflicting_and_unknown_options(checkpoint, capsys):
    for args in (["--backend", "onnx", "--neurons", "8", "--neurons-range", "1:8"], ["--backend", "torch"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["compile", "--model", str(checkpoint), *args])
        assert exit_info.value.code == 2
    capsys.readouterr()
