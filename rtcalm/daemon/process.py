"""Run ``rtcalm serve`` as a child process on free loopback ports (for ``rtcalm demo``, ``rtcalm bench
latency`` and the end-to-end tests): the daemon then has a core and a GIL of its own, as in production.

    with DaemonProcess(model="default") as daemon:
        daemon.endpoints["ingest"], daemon.endpoints["publish"], daemon.endpoints["control"]
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtcalm.errors import RtcalmError

EPHEMERAL = "tcp://127.0.0.1:0"
TRANSPORTS = ("tcp", "ipc")


class DaemonProcess:
    """``transport``: "tcp" (free loopback ports) or "ipc" (Unix domain sockets in a temporary directory)."""

    def __init__(self, *, model: str | None = None, config: str | None = None, extra_args: list[str] = (),
                 start_timeout_s: float = 120.0, metrics: bool = True, transport: str = "tcp"):
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.transport = transport
        self.model = model
        self.config = config
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self.metrics = metrics
        self.endpoints: dict = {}
        self.process: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="rtcalm-daemon-")
        self.log_path = Path(self._dir.name, "daemon.log")

    def start(self) -> dict:
        ready = Path(self._dir.name, "ready.json")
        addresses = {name: EPHEMERAL if self.transport == "tcp" else f"ipc://{Path(self._dir.name, name)}"
                     for name in ("ingest", "publish", "control")}
        command = [sys.executable, "-m", "rtcalm", "serve", "--ingest", addresses["ingest"], "--publish",
                   addresses["publish"], "--control", addresses["control"], "--metrics-port", "0" if self.metrics else "-1",
                   "--ready-file", str(ready)]
        if self.model is not None:
            command += ["--model", self.model]
        if self.config is not None:
            command += ["--config", self.config]
        command += self.extra_args
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if self.process.poll() is not None:
                raise RtcalmError(f"the daemon exited with status {self.process.returncode} before it was "
                                  f"ready:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RtcalmError(f"the daemon was not ready within {self.start_timeout_s:g} s:\n{self.log()}")
            time.sleep(0.05)
        self.endpoints = json.loads(ready.read_text())
        return self.endpoints

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dir.cleanup()

