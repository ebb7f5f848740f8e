"""Cold-cache cost of the daemon's side of the wire against the reference in rtcalm.protocol, one call
per period as at 30 Hz (the daemon's regime), interleaved so that machine load affects all alike:
validating one frame (FrameDecoder vs parse_frame) and encoding one prediction (PredictionEncoder vs
build_prediction). A development A/B of the two implementations, not a measure of an install (that is
``rtcalm bench latency``'s validate and publish stages).

    python tools/bench_wire.py [--neurons 512] [--calls 300] [--period-ms 33]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rtcalm import protocol
from rtcalm.daemon.config import LimitsConfig
from rtcalm.daemon.wire import FrameDecoder, PredictionEncoder
from rtcalm.stats.percentile import percentile


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

    encoder = PredictionEncoder()
    prediction = dict(session="bench", seq=1, t_acq_ns=1, t_recv_ns=2, t_pub_ns=3, decoded={},
                      forecast=np.random.default_rng(1).standard_normal((args.neurons, 30)).astype(np.float32),
                      predictable=np.zeros(args.neurons, np.uint8), model_version="default@0123456789ab",
                      rate_hz=30.0, stream_id=1, stream_frame=1, folded=0, stage_ns={"validate": 1, "model": 2})
    calls = {"parse_frame (reference)": reference, "FrameDecoder.parse": lambda: decoder.parse(message),
             "build_prediction (reference)": lambda: protocol.build_prediction(**prediction),
             "PredictionEncoder.encode": lambda: encoder.encode(**prediction)}
    timings = {name: [] for name in calls}
    for call in range(args.calls + 20):
        for name, function in calls.items():
            time.sleep(args.period_ms / 1e3)
            start = time.perf_counter_ns()
            function()
            if call >= 20:
                timings[name].append((time.perf_counter_ns() - start) / 1e3)
    print(f"{args.neurons} neurons, one call per {args.period_ms:g} ms, {args.calls} calls each (µs):")
    for name, values in timings.items():
        print(f"  {name:<30} p50 {percentile(values, 50):7.1f}   p99 {percentile(values, 99):7.1f}")
    names = list(calls)
    for fast, slow in ((names[1], names[0]), (names[3], names[2])):
        print(f"  {fast} / reference, ratio of p50s: {percentile(timings[fast], 50) / percentile(timings[slow], 50):.2f}")


if __name__ == "__main__":
    main()
