"""CI check of the rig-PC install, run with the client-only virtual environment's python (.ci/run):

    client-venv/bin/python tools/ci_client_check.py READY_FILE

READY_FILE is the JSON of endpoints that ``rtcalm serve --ready-file`` wrote for a real daemon running
from the full install. Checked, in order:

1. torch, numba, scipy and onnxruntime are not installed here, and importing ``rtcalm.client`` loads none
   of them (nor anything else outside the standard library, pyzmq, msgpack and numpy);
2. ``rtcalm --help`` works, and ``rtcalm serve`` says in one line what to install (exit 2, no traceback);
3. streaming from this client to the daemon: every frame of a 300-frame stream is answered (its own
   prediction, or folded into a later one's), with the documented fields, and ``rtcalm listen`` prints
   the session's predictions as JSON lines; ``status`` and ``get_stats`` answer over the control socket.

Uses only what the client install brings. Exits 1 with a message on the first failure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

HEAVY = ("torch", "numba", "scipy", "onnxruntime")
CLIENT_DEPENDENCIES = ("zmq", "msgpack", "numpy")
SESSION = "ci-client"
N_NEURONS, N_FRAMES, RATE_HZ = 64, 300, 100.0


def fail(message: str) -> None:
    print(f"ci_client_check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_install() -> None:
    present = [name for name in HEAVY if importlib.util.find_spec(name) is not None]
    if present:
        fail(f"the client install brought {present}")
    before = set(sys.modules)
    import rtcalm.client  # noqa: F401

    # Modules without a file (e.g. cython_runtime, which compiled extensions create) are not packages.
    loaded = {name.split(".")[0] for name in set(sys.modules) - before
              if getattr(sys.modules[name], "__file__", None) is not None}
    foreign = sorted(name for name in loaded if name not in ("rtcalm", *CLIENT_DEPENDENCIES)
                     and name not in sys.stdlib_module_names and not name.startswith("_"))
    if foreign:
        fail(f"importing rtcalm.client loaded {foreign}")
    print("ci_client_check: no torch/numba/scipy/onnxruntime; rtcalm.client imports with pyzmq, msgpack, numpy")


def check_cli() -> None:
    help_run = subprocess.run([sys.executable, "-m", "rtcalm", "--help"], capture_output=True, text=True, timeout=60)
    if help_run.returncode != 0 or "listen" not in help_run.stdout:
        fail(f"rtcalm --help failed:\n{help_run.stderr}")
    serve = subprocess.run([sys.executable, "-m", "rtcalm", "serve"], capture_output=True, text=True, timeout=60)
    lines = serve.stderr.strip().splitlines()
    if serve.returncode != 2 or len(lines) != 1 or "Traceback" in serve.stderr or "pip install" not in lines[0]:
        fail(f"rtcalm serve without the full install must print one line naming the install and exit 2; "
             f"got status {serve.returncode}:\n{serve.stderr}")
    print(f"ci_client_check: rtcalm serve here says: {lines[0]}")


def synthetic_frames(rng):
    """Calcium-like traces from numpy alone (the client has no rtcalm.data): AR(1) noise plus decaying
    transients, a few values missing."""
    import numpy as np

    frames = np.zeros((N_FRAMES, N_NEURONS), np.float32)
    state = np.zeros(N_NEURONS)
    for t in range(N_FRAMES):
        state = 0.9 * state + (rng.random(N_NEURONS) < 0.03) * rng.exponential(1.0, N_NEURONS)
        frames[t] = state + 0.05 * rng.standard_normal(N_NEURONS)
    frames[rng.random(frames.shape) < 0.01] = np.nan
    return frames


def check_streaming(endpoints: dict) -> None:
    import numpy as np

    from rtcalm.client import ControlClient, Prediction, PredictionSubscriber, RigSender

    frames = synthetic_frames(np.random.default_rng(0))
    listen = subprocess.Popen([sys.executable, "-m", "rtcalm", "listen", "--from", endpoints["publish"],
                               "--session", SESSION, "--count", "5", "--timeout", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ControlClient(endpoints["control"], timeout_ms=20000) as control, \
            PredictionSubscriber(endpoints["publish"], sessions=SESSION) as subscriber, \
            RigSender(endpoints["ingest"], session=SESSION) as rig:
        time.sleep(1.0)  # the subscriptions (this one and the listener's) reach the daemon
        answered: set[int] = set()
        last = None
        start = time.perf_counter()
        for seq, dff in enumerate(frames):
            time.sleep(max(0.0, start + seq / RATE_HZ - time.perf_counter()))
            rig.send(dff)
            while (message := subscriber.receive(timeout_ms=0)) is not None:
                last = _record(message, answered, Prediction)
        deadline = time.monotonic() + 30
        while N_FRAMES - 1 not in answered and time.monotonic() < deadline:
            message = subscriber.receive(timeout_ms=200)
            if message is not None:
                last = _record(message, answered, Prediction)
        missing = sorted(set(range(N_FRAMES)) - answered)
        if missing:
            fail(f"{len(missing)} of {N_FRAMES} frames got no answer (first: {missing[:5]})")
        if last.n_neurons != N_NEURONS or not np.isfinite(last.forecast).any() or last.horizon < 1:
            fail(f"the last prediction does not look like one: n={last.n_neurons}, horizon={last.horizon}")
        status = control.status()
        session = {s["session"]: s for s in status["sessions"]}[SESSION]
        stats = control.get_stats(SESSION)
        if session["accepted"] != N_FRAMES or stats["vectors"]["mean"].shape != (N_NEURONS,):
            fail(f"status/get_stats disagree with the stream: accepted {session['accepted']}")
        control.stop_session(SESSION)
    out, err = listen.communicate(timeout=90)
    records = [json.loads(line) for line in out.splitlines()]
    if listen.returncode != 0 or len(records) != 5 or {r["session"] for r in records} != {SESSION}:
        fail(f"rtcalm listen: status {listen.returncode}, {len(records)} lines:\n{err}")
    print(f"ci_client_check: {N_FRAMES} of {N_FRAMES} frames answered by {status['model']['version']} "
          f"({status['model']['backend']}); rtcalm listen printed {len(records)} JSON lines")


def _record(message, answered: set[int], prediction_type):
    if not isinstance(message, prediction_type):
        fail(f"the daemon reported an error for a good stream: {message}")
    answered.update(range(message.seq - message.folded, message.seq + 1))
    return message


def main() -> int:
    if len(sys.argv) != 2:
        fail("usage: ci_client_check.py READY_FILE")
    check_install()
    check_cli()
    with open(sys.argv[1]) as f:
        check_streaming(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
