"""Cold-cache cost of validating one ingest frame: the daemon's FrameDecoder (msgspec + numba) against
the reference rtcalm.protocol.parse_frame, one frame per period as at 30 Hz (the daemon's regime), the
two interleaved so that machine load affects both alike.

    python tools/bench_ingest.py [--neurons 512] [--calls 300] [--period-ms 33]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rtcalm import protocol
from rtcalm.daemon.config import LimitsConfig
from rtcalm.daemon.ingest import FrameDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=512)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--period-ms", type=float, default=33.0)
    args = parser.parse_args()
    limits = LimitsConfig()
    message = protocol.build_frame("bench", 1, 1, np.random.default_rng(0).standard_normal(args.neurons))
    decoder = FrameDecoder(max_bytes=limits.max_message_bytes, max_neurons=limits.max_neurons,
                           max_abs_dff=limits.max_abs_dff, max_abs_fluorescence=limits.max_abs_fluorescence)
    scratch = np.empty(limits.max_neurons, dtype=bool)

    def reference():
        protocol.parse_frame(message, max_bytes=limits.max_message_bytes, max_neurons=limits.max_neurons,
                             inf_scratch=scratch, max_abs_dff=limits.max_abs_dff,
                             max_abs_fluorescence=limits.max_abs_fluorescence)

    timings = {"reference parse_frame": [], "FrameDecoder": []}
    for call in range(args.calls + 20):
        for name, parse in (("reference parse_frame", reference), ("FrameDecoder", lambda: decoder.parse(message))):
            time.sleep(args.period_ms / 1e3)
            start = time.perf_counter_ns()
            parse()
            if call >= 20:
                timings[name].append((time.perf_counter_ns() - start) / 1e3)
    print(f"{args.neurons} neurons, one parse per {args.period_ms:g} ms, {args.calls} calls each (µs):")
    for name, values in timings.items():
        print(f"  {name:<22} median {np.median(values):7.1f}   p99 {np.percentile(values, 99):7.1f}")
    print(f"  ratio of medians {np.median(timings['FrameDecoder']) / np.median(timings['reference parse_frame']):.2f}")


if __name__ == "__main__":
    main()
