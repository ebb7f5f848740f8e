"""``rtcalm.client`` on a machine without torch and numba, and its behaviour with no daemon at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zmq

from rtcalm.client import ControlClient, PredictionSubscriber, RigSender

BLOCKED = ("torch", "numba", "scipy", "h5py", "prometheus_client")


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of BLOCKED fails, as on a rig PC that
    has only pyzmq, msgpack and numpy."""
    guard = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_client_imports_without_torch_or_numba():
    result = run_isolated("""
        import rtcalm.client, rtcalm.protocol
        from rtcalm.client import ControlClient, PredictionSubscriber, RigSender
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_guard_really_blocks():
    """Guards the test above: an import of torch under the same guard must fail."""
    result = run_isolated("import torch")
    assert result.returncode != 0 and "blocked in this test" in result.stderr


def test_sender_never_blocks_without_a_daemon():
    context = zmq.Context()
    # A port nobody listens on: frames queue up to the high-water mark, then are dropped and counted.
    sender = RigSender("tcp://127.0.0.1:1", session="lonely", hwm=5, context=context)
    results = [sender.send(np.zeros(4, np.float32)) for _ in range(50)]
    assert results.count(False) == sender.dropped > 0
    assert sender.sent + sender.dropped == 50 and sender.next_seq == 50
    sender.close()
    context.term()


def test_control_timeout_recovers():
    context = zmq.Context()
    control = ControlClient("tcp://127.0.0.1:1", timeout_ms=100, context=context)
    for _ in range(2):  # a REQ socket stuck after a lost reply would raise zmq errors the second time
        with pytest.raises(TimeoutError):
            control.status()
    control.close()
    context.term()


def test_bad_arguments():
    with pytest.raises(ValueError):
        RigSender("tcp://127.0.0.1:1", session="has space")
    context = zmq.Context()
    subscriber = PredictionSubscriber("tcp://127.0.0.1:1", sessions=["a", "b"], context=context)
    assert subscriber.receive(timeout_ms=10) is None
    subscriber.close()
    context.term()
