"""The transport's floor under the closed loop: the round trip of a frame out and a prediction back through
a bare echo process, over ZeroMQ (what the daemon uses) and over a plain TCP socket, each paced at the
rig's rate and back to back, measured in one run.

    python tools/bench_transport_floor.py --neurons 512 --rate 30 --round-trips 600 [--json FILE]

Payloads are the sizes of the daemon's messages: a msgpack frame of ``--neurons`` float32 out, a reply
of ``--neurons x --horizon`` float32 (plus 200 bytes) back. The ZeroMQ rows are
``rtcalm.bench.latency.raw_transport`` (PUSH -> echo -> PUB/SUB, the reference ``rtcalm bench latency``
prints); the plain-socket rows send the same bytes over one loopback TCP connection with TCP_NODELAY
and blocking reads. Paced, every round trip starts after a sleep of most of a frame period; back to
back, the next starts as soon as the last reply is in.

What it shows: at 30 Hz every party sleeps between frames, and each wake-up of an idle thread costs
time that a tight loop never pays. ZeroMQ adds threads to wake: a message crosses the sender's
application thread, its I/O thread, the receiver's I/O thread and the receiver's application thread,
in each direction, where a plain socket wakes one blocked reader per direction.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import struct
import sys
import time

import numpy as np

LENGTH = struct.Struct("<I")  # the plain-socket framing: a 4-byte length, then the payload


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
    from rtcalm.bench.latency import pace, percentiles_ms

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
        for i in range(round_trips + 30):
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
    return {"round_trips": round_trips, **percentiles_ms(times[30:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=30, help="forecast frames in the reply (default 30)")
    parser.add_argument("--rate", type=float, default=30.0, metavar="HZ", help="paced rate (default 30)")
    parser.add_argument("--round-trips", type=int, default=600, help="timed round trips per row (default 600)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.neurons < 1 or args.horizon < 1 or args.round_trips < 1 or not 0 < args.rate <= 10000:
        parser.error("--neurons, --horizon and --round-trips must be positive and --rate in (0, 10000]")

    from rtcalm import protocol
    from rtcalm.bench import latency

    frame = np.linspace(-1, 1, args.neurons, dtype=np.float32)
    reply_bytes = args.neurons * args.horizon * 4 + 200
    frame_bytes = protocol.build_frame("bench", 0, time.time_ns(), frame)
    rows = {}
    for pace, rate in (("paced", args.rate), ("back_to_back", 1e12)):
        rows[f"zeromq_tcp_{pace}"] = latency.raw_transport("tcp", frame, reply_bytes, rate, args.round_trips)
        rows[f"zeromq_ipc_{pace}"] = latency.raw_transport("ipc", frame, reply_bytes, rate, args.round_trips)
        rows[f"plain_tcp_socket_{pace}"] = plain_socket(frame_bytes, reply_bytes, rate, args.round_trips)
    result = {"neurons": args.neurons, "frame_bytes": len(frame_bytes), "reply_bytes": reply_bytes,
              "rate_hz": args.rate, "rows": rows}
    print(f"round trip, {len(frame_bytes)} B out and {reply_bytes} B back; paced = {args.rate:g} Hz")
    print(f"  {'transport':<32} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        print(f"  {name:<32} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
