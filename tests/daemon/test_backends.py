"""The daemon on the non-torch backends: `rtcalm serve --backend onnx` end to end against the offline
(torch) reference, and a compiled artifact's neuron range enforced at the protocol boundary."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_helpers import Harness, OfflineReference, make_config

from rtcalm.client import ControlClient, DaemonError, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon import DaemonConfig
from rtcalm.daemon.process import DaemonProcess
from rtcalm.engine import NeuronRange
from rtcalm.engine.build import compile_artifact
from rtcalm.sim import make_synthetic

# docs/backends.md, "Accuracy": ONNX Runtime FP32 agrees with the torch reference within 1e-4 in
# normalised units; the daemon publishes de-normalised ΔF/F, so the bound scales with each neuron's std.
ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def frames():
    return make_synthetic(n_neurons=24, n_frames=120, seed=11).dff


def test_serve_with_the_onnx_backend_matches_the_reference(checkpoint, model, frames):
    recording = frames
    with DaemonProcess(model=str(checkpoint), metrics=False, extra_args=["--backend", "onnx"]) as daemon:
        control = ControlClient(daemon.endpoints["control"], timeout_ms=30000)
        subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions=["onnx", "handshake"])
        handshake = RigSender(daemon.endpoints["ingest"], session="handshake")
        while True:  # until the subscription has reached the daemon
            handshake.send(np.zeros(2, np.float32))
            if subscriber.receive(timeout_ms=200) is not None:
                break
        while subscriber.receive(timeout_ms=200) is not None:
            pass
        described = control.status()["model"]
        sender = RigSender(daemon.endpoints["ingest"], session="onnx")
        published = []
        for seq in range(recording.shape[0]):  # lockstep: every frame gets its own prediction
            sender.send(recording[seq])
            answer = subscriber.receive(timeout_ms=60000)
            assert isinstance(answer, Prediction) and (answer.session, answer.seq) == ("onnx", seq), answer
            published.append(answer.forecast)
        for client in (sender, handshake, subscriber, control):
            client.close()
        assert "rtcalm serve: backend  onnx was asked for" in daemon.log()  # the choice, printed at start
    assert described["backend"] == "onnxruntime-cpu"
    assert described["backend_selection"].startswith("onnx was asked for")

    reference = OfflineReference(model, recording.shape[1], DaemonConfig())  # serve's defaults
    for seq, forecast in enumerate(published):
        want = reference.step(recording[seq])
        np.testing.assert_array_equal(np.isnan(forecast), np.isnan(want), err_msg=f"seq {seq}")
        # the difference in normalised units is within the tolerance: |Δ ΔF/F| <= tol * std per neuron
        bound = ONNX_TOLERANCE * reference.scale.std[:, None] + 1e-6
        off = np.abs(np.nan_to_num(forecast - want)) - np.nan_to_num(bound)
        assert off.max() <= 0, f"seq {seq}: off by {off.max()} beyond the tolerance"
    assert np.isfinite(published[-1]).mean() > 0.9  # the comparison covered real forecasts, not NaNs


@pytest.fixture
def ranged_harness(checkpoint, tmp_path):
    """A daemon on an ONNX artifact compiled for 4-16 neurons (of a copy of the checkpoint, so the shared
    checkpoint's compiled/ stays empty for the other tests)."""
    import shutil

    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    artifact, _ = compile_artifact(copy, "onnx", NeuronRange(4, 16, False), validation_steps=20)
    h = Harness(make_config(model={"backend": "onnx", "artifact": str(artifact)}), str(copy))
    yield h
    h.close()


def test_neuron_counts_outside_a_compiled_range_are_refused(ranged_harness, frames):
    h = ranged_harness
    assert h.control.status()["model"]["neurons"]["max"] == 16
    # A frame starting a session of 32 neurons: an error reply with its code, no session.
    wide = h.sender("wide")
    wide.send(np.zeros(32, np.float32))
    error = h.error("wide")
    assert error.code == "neuron_range" and "4 to 16 neurons" in error.message
    assert "wide" not in {s["session"] for s in h.control.status()["sessions"]}
    # The start command says the same.
    with pytest.raises(DaemonError) as info:
        h.control.start_session("narrow", 2)
    assert info.value.code == "neuron_range"
    # A running session that switches to an unservable count keeps its stream and keeps being served.
    ok = h.sender("ok")
    first = h.send_lockstep(ok, frames[:3, :8])
    ok.send(np.zeros(20, np.float32), seq=3)
    assert h.error("ok").code == "neuron_range"
    later = h.send_lockstep(ok, frames[4:5, :8], seqs=[4])[0]
    assert later.stream_id == first[-1].stream_id and later.forecast.shape[0] == 8
    status = h.session_status("ok")
    assert status["neurons"] == 8 and status["rejected"] == 1


def test_hot_swap_to_a_model_that_cannot_serve_a_running_session_fails_cleanly(make_harness, checkpoint,
                                                                                tmp_path, frames):
    """A swap to an ONNX artifact compiled for fewer neurons than a running session has: the load fails
    (model_load_failed), and the old model keeps serving that session's stream."""
    import shutil

    from rtcalm.engine import load_engine

    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    narrow, _ = compile_artifact(copy, "onnx", NeuronRange(1, 8, False), validation_steps=20)
    h = make_harness(model_loader=lambda spec: load_engine(spec, backend="onnx", artifact=narrow))
    sender = h.sender("wide")
    first = h.send_lockstep(sender, frames[:5])[-1]  # 24 neurons: outside 1-8
    with pytest.raises(DaemonError) as info:
        h.control.load_model(str(copy))
    assert info.value.code == "model_load_failed" and "1 to 8 neurons" in info.value.message
    later = h.send_lockstep(sender, frames[5:8], seqs=range(5, 8))
    assert {p.model_version for p in later} == {first.model_version} and later[-1].stream_id == first.stream_id
    assert h.control.status()["model"]["backend"] == "torch-cpu"
