"""The transport's floor under the closed loop (``rtcalm bench transport``): the round trip of a frame out
and a prediction back through a bare echo process, over ZeroMQ (what the daemon uses) and over one plain
TCP socket, each paced at the rig's rate and back to back, in one run.

Payloads are the sizes of the daemon's messages: a msgpack frame of ``neurons`` float32 out, a reply of
``neurons x horizon`` float32 (plus 200 bytes) back. The ZeroMQ rows are ``raw_transport`` (PUSH -> echo
-> PUB/SUB; also the reference ``rtcalm bench latency`` measures after its closed loop); the plain-socket
rows send the same bytes over one loopback TCP connection with TCP_NODELAY and blocking reads. Paced,
each round trip starts on an absolute schedule at the rate; back to back, the next starts as soon as the
last reply is in. The first 30 round trips of every row are a warm-up and not counted.

What it shows: at 30 Hz every party sleeps between frames, and each wake-up of an idle thread costs time
that a tight loop never pays. ZeroMQ adds threads to wake: a message crosses the sender's application
thread, its I/O thread, the receiver's I/O thread and the receiver's application thread, in each
direction, where a plain socket wakes one blocked reader per direction.
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from rtcalm import protocol
from rtcalm.bench.timing import pace, percentiles_ms
from rtcalm.errors import RtcalmError

SESSION = "bench"
WARMUP_ROUND_TRIPS = 30
BACK_TO_BACK_HZ = 1e12  # a period of 1 ps: every round trip is already due when the last one ends
LENGTH = struct.Struct("<I")  # the plain-socket framing: a 4-byte length, then the payload


def _echo(ingest: str, publish: str, reply_bytes: int, ready) -> None:
    """The raw transport's far end: receive a msgpack frame, publish a msgpack reply of reply_bytes."""
    import msgpack
    import zmq

    context = zmq.Context()
    pull, pub = context.socket(zmq.PULL), context.socket(zmq.PUB)
    pull.bind(ingest)
    pub.bind(publish)
    reply = memoryview(np.zeros(reply_bytes // 4, dtype=np.float32)).cast("B")
    ready.set()
    while True:
        message = msgpack.unpackb(pull.recv(), raw=False)
        if message.get("stop"):
            break
        pub.send_multipart((b"bench\x00", msgpack.packb({"seq": message["seq"], "forecast": reply})))
    pull.close(0)
    pub.close(0)
    context.term()


def raw_transport(transport: str, frame: np.ndarray, reply_bytes: int, rate_hz: float,
                  round_trips: int) -> dict:
    """Round trips, paced at ``rate_hz``, of a frame message out and a ``reply_bytes`` message back through
    a bare echo process (no validation, statistics or model), with this process's pyzmq and msgpack."""
    import msgpack
    import zmq

    with tempfile.TemporaryDirectory(prefix="rtcalm-raw-") as directory:
        if transport == "ipc":
            ingest, publish = f"ipc://{Path(directory, 'in')}", f"ipc://{Path(directory, 'out')}"
        else:
            ingest, publish = _free_tcp_address(), _free_tcp_address()
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Event()
        echo = spawn.Process(target=_echo, args=(ingest, publish, reply_bytes, ready), daemon=True)
        echo.start()
        context = zmq.Context()
        push, sub = context.socket(zmq.PUSH), context.socket(zmq.SUB)
        try:
            if not ready.wait(60):
                raise RtcalmError("the raw-transport echo process did not start")
            push.connect(ingest)
            sub.connect(publish)
            sub.setsockopt(zmq.SUBSCRIBE, b"bench\x00")
            sub.setsockopt(zmq.RCVTIMEO, 5000)
            time.sleep(0.3)  # the subscription reaches the echo process
            times = []
            period, start = 1.0 / rate_hz, time.perf_counter()
            for seq in range(round_trips + WARMUP_ROUND_TRIPS):
                pace(start, seq, period)
                begin = time.perf_counter_ns()
                push.send(protocol.build_frame(SESSION, seq, time.time_ns(), frame))
                while msgpack.unpackb(sub.recv_multipart()[1], raw=False)["seq"] != seq:
                    pass
                times.append(time.perf_counter_ns() - begin)
            push.send(msgpack.packb({"stop": True}))
        except zmq.Again:
            raise RtcalmError("the raw-transport echo process stopped answering") from None
        finally:
            push.close(1000)
            sub.close(0)
            context.term()
            echo.join(10)
            if echo.is_alive():
                echo.kill()
    return {"transport": transport, "reply_bytes": reply_bytes, "round_trips": round_trips,
            **percentiles_ms(times[WARMUP_ROUND_TRIPS:])}


def _free_tcp_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _read_exactly(connection: socket.socket, size: int, buffer: bytearray) -> memoryview:
    view = memoryview(buffer)[:size]
    got = 0
    while got < size:
        n = connection.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError("peer closed")
        got += n
    return view


def _socket_echo(port_queue, reply_bytes: int) -> None:
    """The plain socket's far end: read a length-prefixed frame, answer with ``reply_bytes``; length 0 stops."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_queue.put(server.getsockname()[1])
        connection, _ = server.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = LENGTH.pack(reply_bytes) + bytes(reply_bytes)
    buffer = bytearray(1 << 20)
    with connection:
        while True:
            size = LENGTH.unpack(_read_exactly(connection, LENGTH.size, buffer))[0]
            if size == 0:
                return
            _read_exactly(connection, size, buffer)
            connection.sendall(reply)


def plain_socket(frame_bytes: bytes, reply_bytes: int, rate_hz: float, round_trips: int) -> dict:
    """Round trips over one loopback TCP connection to an echo process, paced at ``rate_hz``."""
    spawn = multiprocessing.get_context("spawn")
    ports = spawn.Queue()
    echo = spawn.Process(target=_socket_echo, args=(ports, reply_bytes), daemon=True)
    echo.start()
    connection = socket.create_connection(("127.0.0.1", ports.get(timeout=60)))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = LENGTH.pack(len(frame_bytes)) + frame_bytes
    buffer = bytearray(max(1 << 20, reply_bytes))
    times = []
    try:
        period, start = 1.0 / rate_hz, time.perf_counter()
        for i in range(round_trips + WARMUP_ROUND_TRIPS):
            pace(start, i, period)
            begin = time.perf_counter_ns()
            connection.sendall(message)
            size = LENGTH.unpack(_read_exactly(connection, LENGTH.size, buffer))[0]
            _read_exactly(connection, size, buffer)
            times.append(time.perf_counter_ns() - begin)
        connection.sendall(LENGTH.pack(0))
    finally:
        connection.close()
        echo.join(10)
        if echo.is_alive():
            echo.kill()
    return {"round_trips": round_trips, **percentiles_ms(times[WARMUP_ROUND_TRIPS:])}


def run_transport_benchmark(*, neurons: int, horizon: int, rate_hz: float, round_trips: int) -> dict:
    """Every row: ZeroMQ over TCP and IPC and the plain TCP socket, paced at ``rate_hz`` and back to back."""
    if neurons < 1 or horizon < 1 or round_trips < 1 or not 0 < rate_hz <= 10000:
        raise RtcalmError("neurons, horizon and round trips must be positive and the rate in (0, 10000] Hz")
    frame = np.linspace(-1, 1, neurons, dtype=np.float32)
    reply_bytes = neurons * horizon * 4 + 200
    frame_bytes = protocol.build_frame(SESSION, 0, time.time_ns(), frame)
    rows = {}
    for pacing, rate in (("paced", rate_hz), ("back_to_back", BACK_TO_BACK_HZ)):
        rows[f"zeromq_tcp_{pacing}"] = raw_transport("tcp", frame, reply_bytes, rate, round_trips)
        rows[f"zeromq_ipc_{pacing}"] = raw_transport("ipc", frame, reply_bytes, rate, round_trips)
        rows[f"plain_tcp_socket_{pacing}"] = plain_socket(frame_bytes, reply_bytes, rate, round_trips)
    return {"neurons": neurons, "horizon": horizon, "frame_bytes": len(frame_bytes), "reply_bytes": reply_bytes,
            "rate_hz": rate_hz, "rows": rows}


def format_report(result: dict) -> str:
    lines = [f"round trip, {result['frame_bytes']} B out and {result['reply_bytes']} B back; "
             f"paced = {result['rate_hz']:g} Hz",
             f"  {'transport':<32} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}"]
    for name, row in result["rows"].items():
        lines.append(f"  {name:<32} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} {row['p999_ms']:8.3f}")
    return "\n".join(lines)
