"""The serial trigger line: one byte on a serial port for every fired rule, for a microcontroller that
turns it into a TTL pulse (docs/triggers.md, "The serial trigger line", has a sketch for an Arduino or
Teensy).

The wire: 8 data bits, no parity, 1 stop bit (8N1) at the configured baud rate (default 115200), no
flow control. When a rule that has a ``serial_byte`` (1-255, unique within a session's rules) fires, that
one byte is written; nothing else is ever written: no framing, no newline, no handshake, and nothing is
read. The board can therefore tell the rules apart by the byte, and a byte on the line always means a
fire. Byte 0 is never sent.

The daemon writes from its per-frame thread, so writing never waits: the port is non-blocking, and a byte
that does not fit in the operating system's output buffer (the board stopped reading, or the line is
slower than the fires) is dropped, counted in ``failed``, and :meth:`SerialTriggerLine.send` returns
False. At 115200 baud one byte takes ~87 µs on the wire; the OS buffer holds thousands of bytes, so a drop
means the far end is gone, not that the rules fire fast.

pyserial (``pip install "rtcalm[full]"``) is imported when a line is opened, so this module imports
without it.
"""

from __future__ import annotations

import os

from rtcalm.errors import RtcalmError

# Every byte a rule can send, built once: send() allocates nothing.
_BYTES = (b"",) + tuple(bytes((value,)) for value in range(1, 256))


class SerialTriggerLine:
    """An open serial port that :meth:`send` writes single trigger bytes to, never blocking.

    ``port``: the device (``/dev/ttyACM0``, ``/dev/ttyUSB0``, ``COM3``); ``baudrate``: bits per second,
    as the board's sketch sets it. Raises :class:`RtcalmError` (one line naming the port) if the port
    cannot be opened. ``sent`` and ``failed`` count the bytes written and dropped."""

    def __init__(self, port: str, baudrate: int = 115200):
        try:
            import serial
        except ImportError as exc:
            raise RtcalmError(f"serial trigger line {port!r}: needs pyserial, which does not import ({exc}); "
                              'pip install "rtcalm[full]" (or pip install pyserial)') from None
        self.port = str(port)
        self.baudrate = int(baudrate)
        self.sent = 0
        self.failed = 0
        self._errors = (serial.SerialException, OSError)  # SerialTimeoutException is a SerialException
        try:
            # write_timeout=0: pyserial's non-blocking mode (on Windows, overlapped writes that return at
            # once); timeout=0: reads, which this class never makes, would not block either.
            self._serial = serial.Serial(self.port, self.baudrate, bytesize=serial.EIGHTBITS,
                                         parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE, timeout=0,
                                         write_timeout=0, xonxoff=False, rtscts=False, dsrdtr=False)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RtcalmError(f"cannot open the serial trigger line {self.port!r} at {self.baudrate} baud: "
                              f"{_reason(exc)}") from None
        # On POSIX, write to the file descriptor directly: pyserial opens it O_NONBLOCK, but its write()
        # with write_timeout=0 retries EAGAIN in a loop, so on a full output buffer it spins forever
        # instead of returning (pyserial 3.5, serialposix.py). os.write raises BlockingIOError instead.
        self._fd = self._serial.fileno() if os.name == "posix" else None

    def send(self, byte: int) -> bool:
        """Write the one byte ``byte`` (1-255); never blocks and never raises for the port: returns False,
        and counts it in ``failed``, when the OS buffer is full, the write fails (the board was
        unplugged) or the line is closed. ValueError for a byte outside 1-255 (the rules check it)."""
        if not 1 <= byte <= 255:
            raise ValueError(f"a trigger byte is 1-255, got {byte!r}")
        data = _BYTES[byte]
        try:
            if self._fd is not None:
                written = os.write(self._fd, data)
            elif self._serial is not None and self._serial.is_open:
                written = self._serial.write(data)
            else:
                written = 0
        except self._errors:  # BlockingIOError (buffer full) is an OSError; timeouts are SerialExceptions
            written = 0
        if written != 1:
            self.failed += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the port (bytes still in the OS buffer are sent or discarded, as the OS does); later
        sends return False. Idempotent. Call it from the thread that sends, or once that thread has
        stopped sending."""
        self._fd = None
        serial, self._serial = self._serial, None
        if serial is not None:
            try:
                serial.close()
            except self._errors:
                pass

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def __enter__(self) -> SerialTriggerLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"SerialTriggerLine({self.port!r}, {self.baudrate}, {state}, sent={self.sent}, failed={self.failed})"


def _reason(exc: BaseException) -> str:
    """One line saying why the port could not be opened."""
    errno = getattr(exc, "errno", None)
    text = os.strerror(errno) if isinstance(errno, int) else str(exc)
    return " ".join(text.split()) or type(exc).__name__
