"""The daemon's configuration boundary: the shipped TOML file, bad files, bad values, bad flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rtcalm.cli import main
from rtcalm.commands.serve import build_config
from rtcalm.daemon.config import ConfigError, DaemonConfig, check_address, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_the_defaults():
    assert load_config(REPO / "configs" / "daemon.toml") == DaemonConfig()
    assert DaemonConfig().sockets.ingest == "tcp://127.0.0.1:7750"


@pytest.mark.parametrize("text, problem", [
    ("[sockets\n", "not valid TOML"),
    ("[nonsense]\nx = 1\n", "unknown section"),
    ("[limits]\nmax_gap = 3\n", "unknown key"),
    ("[limits]\nmax_gap_frames = -1\n", "outside"),
    ("[limits]\nmax_sessions = 'many'\n", "must be an integer"),
    ("[limits]\nmax_sessions = 2.0\n", "must be an integer"),
    ("[metrics]\nenabled = 1\n", "true or false"),
    ("[metrics]\nport = 70000\n", "outside"),
    ("[model]\nname = ''\n", "non-empty string"),
    ("[stats]\npredictable_method = 'median'\n", "choose one of"),
    ("[stats]\ntime_constant_frames = nan\n", "finite number"),
    ("[dff]\nblock_frames = 60\nwindow_frames = 30\n", "at least block_frames"),
    ("[sockets]\ningest = 'tcp://0.0.0.0:7750'\n", "not a loopback address"),
    ("[sockets]\ningest = 'tcp://192.168.1.10:7750'\n", "not a loopback address"),
    ("[sockets]\ningest = 'udp://127.0.0.1:7750'\n", "not an address of the form"),
    ("[sockets]\ningest = 'tcp://127.0.0.1:99999'\n", "outside 0-65535"),
    ("[sockets]\ningest = 'tcp://127.0.0.1:7751'\n", "must be different"),
    ("[metrics]\nhost = '10.0.0.1'\n", "not loopback"),
    ("sockets = 3\n", "must be a table"),
])
def test_bad_config_files_are_rejected_with_the_reason(tmp_path, text, problem):
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert problem in str(info.value) and str(path) in str(info.value)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_addresses():
    assert check_address("tcp://127.0.0.1:0", allow_non_loopback=False, what="x") == "tcp://127.0.0.1:*"
    assert check_address("tcp://localhost:5000", allow_non_loopback=False, what="x") == "tcp://localhost:5000"
    assert check_address("tcp://[::1]:5000", allow_non_loopback=False, what="x") == "tcp://[::1]:5000"
    assert check_address("ipc:///tmp/rtcalm-ingest", allow_non_loopback=False, what="x")
    # Allowed only when asked for explicitly (parsed, never bound in tests).
    assert check_address("tcp://0.0.0.0:7750", allow_non_loopback=True, what="x") == "tcp://0.0.0.0:7750"
    config = config_from_dict({"sockets": {"ingest": "tcp://0.0.0.0:7750", "allow_non_loopback": True}})
    assert config.sockets.ingest == "tcp://0.0.0.0:7750"


def test_overrides_are_validated_like_the_file():
    config = DaemonConfig().replace(limits={"max_gap_frames": 5}, model={"name": "x"})
    assert config.limits.max_gap_frames == 5 and config.model.name == "x"
    with pytest.raises(ConfigError, match="command line"):
        DaemonConfig().replace(sockets={"publish": "tcp://8.8.8.8:1"})


def serve_args(**values) -> argparse.Namespace:
    defaults = dict(config=None, ingest=None, publish=None, control=None, metrics_port=None, model=None,
                    backend=None, artifact=None, keys=None, insecure=False, max_sessions=None,
                    session_idle_timeout=None)
    defaults.update(values)
    return argparse.Namespace(**defaults)


def test_serve_flags_override_the_file(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[sockets]\ningest = 'tcp://127.0.0.1:8000'\n[model]\nname = 'from-file'\n")
    config = build_config(serve_args(config=str(path), publish="tcp://127.0.0.1:8001", metrics_port=-1,
                                     model="from-flag"))
    assert config.sockets.ingest == "tcp://127.0.0.1:8000" and config.sockets.publish == "tcp://127.0.0.1:8001"
    assert not config.metrics.enabled and config.model.name == "from-flag"
    assert config.model.backend == "auto"  # not given anywhere
    flagged = build_config(serve_args(config=str(path), backend="onnx", artifact="/a/onnx-n1-64.onnx"))
    assert (flagged.model.name, flagged.model.backend, flagged.model.artifact) == ("from-file", "onnx",
                                                                                 "/a/onnx-n1-64.onnx")


def test_session_cap_and_idle_timeout_come_from_the_file_and_the_flags(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[sessions]\nidle_timeout_s = 30\n[limits]\nmax_sessions = 4\n")
    from_file = build_config(serve_args(config=str(path)))
    assert (from_file.sessions.idle_timeout_s, from_file.limits.max_sessions) == (30.0, 4)
    flagged = build_config(serve_args(config=str(path), max_sessions=64, session_idle_timeout=0))
    assert (flagged.sessions.idle_timeout_s, flagged.limits.max_sessions) == (0.0, 64)
    with pytest.raises(ConfigError, match="max_sessions = 0 is outside"):
        build_config(serve_args(max_sessions=0))
    with pytest.raises(ConfigError, match="idle_timeout_s = -1.0 is outside"):
        build_config(serve_args(session_idle_timeout=-1.0))


@pytest.mark.parametrize("argv, problem", [
    (["serve", "--ingest", "tcp://1.2.3.4:7750"], "not a loopback address"),
    (["serve", "--metrics-port", "123456"], "--metrics-port"),
    (["serve", "--config", "/nonexistent/daemon.toml"], "config file not found"),
    (["serve", "--model", "/nonexistent/model", "--metrics-port", "-1", "--ingest", "tcp://127.0.0.1:0",
      "--publish", "tcp://127.0.0.1:0", "--control", "tcp://127.0.0.1:0"], "no such checkpoint"),
    (["replay", "--synthetic", "--rate", "-3"], "--rate"),
    (["replay"], "give a recording FILE or --synthetic"),
    (["bench", "latency", "--frames", "0"], "--frames"),
])
def test_cli_errors_are_one_line_and_exit_2(capsys, argv, problem):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rtcalm: error:") and problem in err and "\n" not in err


def test_model_backend_and_artifact_are_validated():
    from rtcalm.commands.serve import BACKENDS as SERVE_CHOICES
    from rtcalm.engine import BACKENDS

    assert SERVE_CHOICES == BACKENDS  # the CLI's choices are spelled out to keep --help torch-free
    config = DaemonConfig().replace(model={"backend": "onnx", "artifact": "/x/onnx-n1-64.onnx"})
    assert (config.model.backend, config.model.artifact) == ("onnx", "/x/onnx-n1-64.onnx")
    assert DaemonConfig().model.backend == "auto" and DaemonConfig().model.artifact is None
    for bad, message in (({"backend": "cuda"}, "choose one of auto, torch, onnx, tensorrt"),
                         ({"artifact": ""}, "non-empty string"), ({"backend": 1}, "non-empty string")):
        with pytest.raises(ConfigError, match=message):
            DaemonConfig().replace(model=bad)
