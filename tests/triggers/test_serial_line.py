"""The serial trigger line on a real pseudo-terminal pair (os.openpty): the daemon's side opens the slave
by its name, as it would /dev/ttyACM0, and the test reads the master, as the board would read the wire."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rtcalm.errors import RtcalmError
from rtcalm.triggers.serial_line import SerialTriggerLine

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX")


@pytest.fixture
def pty():
    """(master fd, slave name); both ends closed afterwards (the master may already be)."""
    master, slave = os.openpty()
    fds = {"master": master}
    yield fds, os.ttyname(slave)
    for fd in (fds["master"], slave):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def read_exactly(fd: int, count: int, timeout_s: float = 10.0) -> bytes:
    data, deadline = b"", time.monotonic() + timeout_s
    while len(data) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(data)} of {count} bytes arrived"
        if select.select([fd], [], [], left)[0]:
            data += os.read(fd, count - len(data))
    return data


def drain(fd: int) -> int:
    """Read everything waiting on ``fd``; the number of bytes read."""
    total = 0
    while select.select([fd], [], [], 0.2)[0]:
        total += len(os.read(fd, 65536))
    return total


def test_every_byte_arrives_as_sent(pty):
    fds, port = pty
    with SerialTriggerLine(port, 115200) as line:
        assert line.is_open and (line.port, line.baudrate) == (port, 115200)
        results = [line.send(byte) for byte in range(1, 256)]
        # Raw mode: 10 is not turned into 13 10, 17/19 are not flow control, nothing is echoed or added.
        assert read_exactly(fds["master"], 255) == bytes(range(1, 256))
        assert results == [True] * 255 and (line.sent, line.failed) == (255, 0)
        assert drain(fds["master"]) == 0  # nothing else was written
    assert not line.is_open


def test_a_full_buffer_drops_the_byte_without_blocking(pty):
    """Nobody reads the master: the OS buffer fills, and send returns False at once instead of waiting
    (pyserial's own write() with write_timeout=0 spins forever here). Bounded in time by a thread: a
    send that blocks fails the test instead of hanging it."""
    fds, port = pty
    line = SerialTriggerLine(port)
    outcome = {}

    def fill():
        start = time.monotonic()
        for _ in range(10_000_000):
            if not line.send(0x41):
                break
        outcome["seconds"] = time.monotonic() - start
        outcome["refused_again"] = [line.send(0x42) for _ in range(100)]

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), "send blocked on a full buffer"
        assert outcome["seconds"] < 10
        assert line.sent > 0 and line.failed == 101 and outcome["refused_again"] == [False] * 100
        # The board reads again: the line works again, and the accepted bytes were all delivered.
        assert drain(fds["master"]) == line.sent
        assert line.send(0x43) and read_exactly(fds["master"], 1) == b"\x43"
    finally:
        if thread.is_alive():  # a send stuck in a retry loop fails once the other end is gone
            os.close(fds["master"])
            fds["master"] = None
            thread.join(timeout=10)
        line.close()


def test_a_board_that_went_away_fails_the_send_without_raising(pty):
    fds, port = pty
    line = SerialTriggerLine(port)
    assert line.send(7)
    os.close(fds["master"])  # the far end is gone (as when a USB board is unplugged: EIO)
    fds["master"] = None
    assert [line.send(7) for _ in range(3)] == [False] * 3
    assert (line.sent, line.failed) == (1, 3)
    line.close()
    line.close()  # idempotent
    assert not line.send(7) and line.failed == 4


def test_bytes_outside_1_to_255_are_a_programming_error(pty):
    _, port = pty
    with SerialTriggerLine(port) as line:
        for byte in (0, 256, -1):
            with pytest.raises(ValueError):
                line.send(byte)
        assert (line.sent, line.failed) == (0, 0)


def test_a_port_that_does_not_exist_is_one_line_naming_it(tmp_path):
    port = str(tmp_path / "ttyACM9")
    with pytest.raises(RtcalmError) as info:
        SerialTriggerLine(port)
    message = str(info.value)
    assert port in message and "\n" not in message and "No such file" in message


def test_a_file_that_is_not_a_serial_port_is_refused(tmp_path):
    path = tmp_path / "not-a-tty"
    path.write_bytes(b"")
    with pytest.raises(RtcalmError) as info:
        SerialTriggerLine(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == b""


def test_the_module_imports_without_pyserial():
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "serial":
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, Block())
        from rtcalm.errors import RtcalmError
        from rtcalm.triggers.serial_line import SerialTriggerLine
        try:
            SerialTriggerLine("/dev/ttyACM0")
        except RtcalmError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pyserial" in result.stdout and "/dev/ttyACM0" in result.stdout
