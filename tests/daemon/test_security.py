"""CurveZMQ on the daemon's sockets: authorized clients stream, subscribe and command; a peer without
keys, or with keys the daemon does not know, gets nothing in and nothing out. Plus the key CLI and the
refusal to bind beyond loopback without keys."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from daemon_helpers import make_config

from rtcalm import protocol
from rtcalm.cli import main
from rtcalm.client import ClientKeys, ControlClient, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon import Daemon
from rtcalm.engine import load_engine
from rtcalm.security import CurveKeyError, ServerKeys, generate_keys

N = 8


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    generate_keys(directory, ["rig", "stranger-unused"])
    return directory


@pytest.fixture
def secure_daemon(checkpoint, key_dir):
    config = make_config(security={"server_secret_key": str(key_dir / "server.key_secret"),
                                   "authorized_clients": str(key_dir / "authorized_clients")})
    daemon = Daemon(config, engine=load_engine(str(checkpoint), backend="torch"))
    endpoints = daemon.start_in_thread()
    yield daemon, endpoints
    daemon.stop_thread()


def frames_received(daemon) -> float:
    return daemon.metrics.frames_received._value.get()


def test_authorized_clients_are_served_and_others_get_nothing(secure_daemon, key_dir, tmp_path):
    daemon, endpoints = secure_daemon
    keys = ClientKeys.from_directory(key_dir, "rig")
    context = zmq.Context()
    try:
        control = ControlClient(endpoints["control"], timeout_ms=10000, context=context, keys=keys)
        assert control.status()["daemon"]["protocol"] == protocol.PROTOCOL_VERSION
        subscriber = PredictionSubscriber(endpoints["publish"], sessions="secure", context=context, keys=keys)
        sender = RigSender(endpoints["ingest"], session="secure", context=context, keys=keys)
        frame = np.linspace(0.0, 1.0, N, dtype=np.float32)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the subscription is through: frames get answered
            sender.send(frame)
            message = subscriber.receive(timeout_ms=200)
            if isinstance(message, Prediction):
                break
        else:
            raise AssertionError("an authorized client got no prediction")
        time.sleep(0.3)  # the daemon counts a frame just after answering it: let the last count land
        before = frames_received(daemon)

        # Peers without keys, and with a key pair the daemon never authorized.
        unknown_dir = tmp_path / "other-keys"
        generate_keys(unknown_dir, ["intruder"])
        strangers = {"no keys": None, "unknown keys": ClientKeys.load(key_dir / "server.key",
                                                                     unknown_dir / "clients" / "intruder.key_secret")}
        for what, stranger_keys in strangers.items():
            intruder = RigSender(endpoints["ingest"], session="intruder", context=context, keys=stranger_keys)
            eavesdropper = PredictionSubscriber(endpoints["publish"], context=context, keys=stranger_keys)
            for seq in range(20):
                intruder.send(frame, seq=seq)
                sender.send(frame)  # the authorized rig keeps streaming meanwhile
                time.sleep(0.01)
            intruder_control = ControlClient(endpoints["control"], timeout_ms=1500, context=context,
                                             keys=stranger_keys)
            with pytest.raises(TimeoutError):
                intruder_control.request("stop", session="secure")
            assert eavesdropper.receive(timeout_ms=500) is None, f"{what}: an unauthorized subscriber got data"
            for client in (intruder, eavesdropper, intruder_control):
                client.close()
        time.sleep(0.3)
        sessions = {s["session"]: s for s in control.status()["sessions"]}
        assert "intruder" not in sessions and "secure" in sessions  # the stop command never arrived
        # Every frame that reached the daemon came from the authorized rig (40 more after `before`).
        assert frames_received(daemon) - before <= 40
        assert sessions["secure"]["accepted"] >= 40
        for client in (sender, subscriber, control):
            client.close()
    finally:
        context.destroy(linger=0)  # closes whatever a failed assertion left open


def test_keys_cli_and_non_loopback_policy(tmp_path, capsys):
    directory = tmp_path / "k"
    assert main(["keys", "generate", str(directory), "--clients", "rig", "viewer"]) == 0
    assert (directory / "server.key_secret").stat().st_mode & 0o077 == 0  # secrets are owner-only
    assert sorted(p.name for p in (directory / "authorized_clients").iterdir()) == ["rig.key", "viewer.key"]
    assert main(["keys", "generate", str(directory)]) == 2  # would lock existing clients out
    assert "already holds a server key" in capsys.readouterr().err
    assert main(["keys", "add-client", str(directory), "scope"]) == 0
    ClientKeys.from_directory(directory, "scope")
    ServerKeys.load(directory / "server.key_secret", directory / "authorized_clients")
    with pytest.raises(CurveKeyError, match="holds no secret key"):
        ServerKeys.load(directory / "server.key", directory / "authorized_clients")

    # Beyond loopback: refused without keys, allowed with keys or with --insecure (explicitly plain).
    from daemon_helpers import EPHEMERAL

    wide = {"ingest": "tcp://0.0.0.0:0", "publish": EPHEMERAL, "control": EPHEMERAL}
    with pytest.raises(Exception, match="needs CurveZMQ keys"):
        make_config(sockets=wide)
    make_config(sockets={**wide, "allow_non_loopback": True})
    make_config(sockets=wide, security={"server_secret_key": str(directory / "server.key_secret"),
                                        "authorized_clients": str(directory / "authorized_clients")})
    with pytest.raises(Exception, match="go together"):
        make_config(security={"server_secret_key": str(directory / "server.key_secret")})
    assert main(["serve", "--ingest", "tcp://0.0.0.0:0", "--metrics-port", "-1"]) == 2
    assert "rtcalm serve --insecure" in capsys.readouterr().err
