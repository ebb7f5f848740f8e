"""Closed-loop latency benchmark (``rtcalm bench latency``): a real daemon in its own process, a paced
rig sender and a prediction subscriber in this one, over loopback TCP or IPC (Unix domain sockets).

Latency of frame s = (arrival here of the first prediction for a frame >= s) - (send of frame s here),
both on this process's monotonic clock. When the daemon keeps up, that is frame s's own prediction;
when it fell behind and folded s into a batch, it is the prediction that covered s. Every sent frame
is counted, so folding cannot hide latency.

Where the time goes, per prediction (the stage waterfall; ``tools/plot_latency.py`` draws it):

    rig_to_daemon       send here -> the daemon has received the frame (client pack, transport, wake-up)
    validate, stats, model    the daemon's stages (stage_ns in the prediction)
    daemon_other        the rest of receive -> just before packing the prediction (sequencing, session)
    daemon_to_subscriber      packing, sending, transport, wake-up and parsing here

The two legs compare the daemon's wall clock with this process's (the same machine's clock).

Two references are measured in the same run, after the closed loop, under the same pacing (at 30 Hz
every piece of code runs with cold caches, which on some machines doubles its cost against a tight
loop, so a tight-loop reference would flatter or condemn the daemon unfairly):

- ``bare_step``: the same model on the same backend, one ``StepEngine.step`` per period, in this process;
  the daemon's model stage is held against it;
- ``raw_transport``: the round trip of a message as large as the frame out and one as large as the
  prediction back, through pyzmq and msgpack and a bare echo process on the same transport: what any
  ZeroMQ daemon in Python would pay before doing anything.

With ``heads`` (``--head``), the session decodes as a closed loop would: each is a head file for the
benchmark's neuron count and model, or a kind (``raw``, ``backbone``, ``both``) for which a head of that
kind is made with random weights (the cost of a frame does not depend on them) in the largest shape
``rtcalm fit-head`` writes for a 2 s window at the model's rate: 8 time bins, 1 principal component,
8 classes. Their per-frame work is inside the ``model`` stage.

A warm-up of ``warmup_frames`` (numba and the backend's first calls, the subscription reaching the
daemon) precedes the measured frames and is excluded. The frames come from the synthetic generator; at
most ``MAX_UNIQUE_FRAMES`` distinct ones are generated and then cycled (the cost of a step does not
depend on the values).
"""

from __future__ import annotations

import gc
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rtcalm.client import ControlClient, Prediction, PredictionSubscriber, RigSender
from rtcalm.daemon.process import TRANSPORTS, DaemonProcess
from rtcalm.errors import RtcalmError

SESSION = "bench"
MAX_UNIQUE_FRAMES = 1800
REFERENCE_FRAMES = 600  # paced steps / round trips of each reference (20 s at 30 Hz)
# The closed-loop targets (issue 16), checked by check_targets for the runs they apply to.
TARGETS_512_AT_30HZ = {"p99_ms": 2.5, "p99_goal_ms": 2.0, "non_model_p50_ms": 0.3, "model_over_bare_step": 1.2}
TARGETS_4096_AT_30HZ = {"p99_ms": 10.0}
WATERFALL = ("rig_to_daemon", "validate", "stats", "model", "daemon_other", "daemon_to_subscriber")


def percentiles_ms(values_ns) -> dict:
    values = np.asarray(values_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999)}


def pace(start: float, index: int, period: float) -> None:
    delay = start + index * period - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


HEAD_KINDS = ("raw", "backbone", "both")


def benchmark_head(kind: str, directory, *, neurons: int, model: str) -> Path:
    """A head of ``kind`` with random weights, shaped as fit-head writes one for a 2 s window (8 bins, 1
    component, 8 classes), for ``neurons`` and ``model``'s width: its per-frame cost is a fitted head's."""
    import torch

    from rtcalm.model.checkpoint import read_checkpoint_config, resolve_model
    from rtcalm.model.heads import TimeResolvedConfig, TimeResolvedHead, save_head

    config, _ = read_checkpoint_config(resolve_model(model))
    torch.manual_seed(0)
    head = TimeResolvedHead(TimeResolvedConfig(
        f"bench_{kind}", "classification", neurons, config.d_model, window_frames=int(round(2 * config.rate_hz)),
        n_bins=8, components=0 if kind == "raw" else 1, classes=[45.0 * k for k in range(8)], features=kind))
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(0.0, 0.01)
        for buffer in (getattr(head, "projection", None), getattr(head, "projection_mean", None)):
            if buffer is not None:
                buffer.normal_(0.0, 0.1)
    return save_head(head, directory)


def run_latency_benchmark(*, neurons: int = 512, rate_hz: float = 30.0, frames: int = 1800, model: str = "default",
                          warmup_frames: int = 60, seed: int = 0, transport: str = "tcp", references: bool = True,
                          progress=None, heads=()) -> dict:
    from rtcalm.sim import make_synthetic

    if neurons < 1 or frames < 1 or warmup_frames < 1 or not rate_hz > 0:
        raise RtcalmError("neurons, frames and warmup frames must be positive and the rate above 0")
    if transport not in TRANSPORTS:
        raise RtcalmError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    gc.collect()
    gc.freeze()  # a full collection over torch's and numba's objects here would show up as latency
    unique = make_synthetic(n_neurons=neurons, n_frames=max(2, min(frames + warmup_frames, MAX_UNIQUE_FRAMES)),
                            seed=seed).dff
    total = warmup_frames + frames
    send_perf = np.full(total, np.nan)
    send_wall = np.zeros(total, dtype=np.int64)
    # (seq, arrival perf_counter, arrival wall ns, stage_ns, t_recv_ns, t_pub_ns): not the forecasts
    # themselves, which at 4096 neurons for 10 minutes would be 9 GB.
    received: list[tuple] = []

    head_dir = tempfile.TemporaryDirectory(prefix="rtcalm-bench-heads-")
    head_paths = [str(benchmark_head(h, Path(head_dir.name) / h, neurons=neurons, model=model)) if h in HEAD_KINDS
                  else str(Path(h).resolve()) for h in heads]
    with DaemonProcess(model=model, transport=transport) as daemon, head_dir:
        control = ControlClient(daemon.endpoints["control"], timeout_ms=30000)
        subscriber = PredictionSubscriber(daemon.endpoints["publish"], sessions=SESSION, hwm=100000)
        sender = RigSender(daemon.endpoints["ingest"], session=SESSION, hwm=100000)
        served = control.status()["model"]
        loaded_heads = []
        if head_paths:
            control.start_session(SESSION, neurons)
            for path in head_paths:
                loaded_heads = control.load_head(SESSION, path)["heads"]
        time.sleep(0.2)  # let the subscription reach the daemon before the first prediction
        stop = threading.Event()

        def send_all():
            period, start = 1.0 / rate_hz, time.perf_counter()
            for seq in range(total):
                if stop.is_set():
                    return
                pace(start, seq, period)
                send_perf[seq] = time.perf_counter()
                send_wall[seq] = time.time_ns()
                sender.send(unique[seq % unique.shape[0]], seq=seq)

        thread = threading.Thread(target=send_all, name="rtcalm-bench-sender", daemon=True)
        thread.start()
        last_report = time.perf_counter()
        deadline = None
        try:
            while True:
                message = subscriber.receive(timeout_ms=100)
                now, now_wall = time.perf_counter(), time.time_ns()
                if isinstance(message, Prediction):
                    received.append((message.seq, now, now_wall, message.stage_ns, message.t_recv_ns,
                                     message.t_pub_ns))
                    if message.seq == total - 1:
                        break
                if deadline is None and not thread.is_alive():
                    deadline = now + 5.0  # everything is sent: give the daemon 5 s to answer the rest
                if deadline is not None and now > deadline:
                    break
                if progress is not None and now - last_report > 5.0:
                    last_report = now
                    progress(f"{len(received)} predictions, last seq {received[-1][0] if received else '-'} "
                             f"of {total - 1}")
        finally:
            stop.set()
            thread.join()
        sessions = {s["session"]: s for s in control.status()["sessions"]}
        accepted = sessions.get(SESSION, {}).get("accepted", 0)
        stage_summary = control.request("status", latency_frames=max(1, sum(
            1 for seq, *_ in received if seq >= warmup_frames)))["latency"]
        control.close()
        subscriber.close()
        sender.close()

    seqs = np.array([row[0] for row in received], dtype=np.int64)
    arrivals = np.array([row[1] for row in received])
    measured = np.arange(warmup_frames, total)
    index = np.searchsorted(seqs, measured)  # first prediction covering each frame
    answered = index < seqs.size
    latency_ns = (arrivals[index[answered]] - send_perf[measured[answered]]) * 1e9

    own = [row for row in received if row[0] >= warmup_frames]
    result = {"neurons": neurons, "rate_hz": rate_hz, "frames": frames, "transport": transport,
              **percentiles_ms(latency_ns), "lost_frames": int(total - accepted),
              "unanswered_frames": int((~answered).sum()), "batched_frames": int(frames - len(own)),
              "stages": _stages(own, send_perf, send_wall, stage_summary), "model": served["version"],
              "backend": served["backend"], "warmup_frames": warmup_frames,
              "heads": [{key: head[key] for key in head if key not in ("path", "pooled_frames")} for head in loaded_heads]}
    if references:
        if progress is not None:
            progress(f"references: the bare step on {served['backend']} and the raw {transport} round trip, "
                     f"{REFERENCE_FRAMES} each at {rate_hz:g} Hz")
        result["bare_step"] = bare_step(model, served["backend"], unique, rate_hz)
        result["raw_transport"] = raw_transport(transport, unique[0], neurons * served["horizon"] * 4 + 200, rate_hz)
        result["ratios"] = _ratios(result)
    result["targets"] = check_targets(result)
    return result


def _stages(own: list[tuple], send_perf, send_wall, stage_summary: dict) -> dict:
    """Percentiles of every stage of the waterfall, plus the daemon's publish stage (from its status) and
    the two sums the targets use."""
    if not own:
        return {name: percentiles_ms([]) for name in (*WATERFALL, "outside_daemon", "all_but_model")}
    seq = np.array([row[0] for row in own])
    arrival, arrival_wall = np.array([row[1] for row in own]), np.array([row[2] for row in own], dtype=np.int64)
    t_recv, t_pub = np.array([row[4] for row in own], dtype=np.int64), np.array([row[5] for row in own], dtype=np.int64)
    inside = {name: np.array([row[3].get(name, 0) for row in own], dtype=np.float64)
              for name in ("validate", "stats", "model")}
    closed = (arrival - send_perf[seq]) * 1e9
    stages = {"rig_to_daemon": percentiles_ms(t_recv - send_wall[seq]),
              **{name: percentiles_ms(values) for name, values in inside.items()},
              "daemon_other": percentiles_ms((t_pub - t_recv) - sum(inside.values())),
              "daemon_to_subscriber": percentiles_ms(arrival_wall - t_pub)}
    for name in ("publish", "receive_to_publish"):
        if name in stage_summary:
            stages[name] = {f"{key[:-3]}_ms": value / 1e3 for key, value in stage_summary[name].items()}
    stages["outside_daemon"] = percentiles_ms(closed - (t_pub - t_recv))
    stages["all_but_model"] = percentiles_ms(closed - inside["model"])
    return stages


def bare_step(model: str, backend: str, frames: np.ndarray, rate_hz: float) -> dict:
    """``StepEngine.step`` of ``model``, loaded here as the daemon loaded it (backend ``auto``, one thread),
    one frame per period, on the frames z-scored per neuron (what the daemon feeds the model).
    ``backend``: the daemon's; a different choice here is an error (the ratio would be meaningless)."""
    from rtcalm.engine import load_engine

    engine = load_engine(model, backend="auto", threads=1)
    if engine.backend != backend:
        raise RtcalmError(f"the bare step loaded {model} on {engine.backend}, the daemon served it on {backend}")
    z = ((frames - frames.mean(0)) / (frames.std(0) + 1e-6)).astype(np.float32)
    stream = engine.new_stream(frames.shape[1])
    times = []
    period, start = 1.0 / rate_hz, time.perf_counter()
    for i in range(REFERENCE_FRAMES + 30):
        pace(start, i, period)
        row = z[i % z.shape[0]][None]
        begin = time.perf_counter_ns()
        engine.step(row, stream)
        times.append(time.perf_counter_ns() - begin)
    return {"backend": engine.backend, "steps": REFERENCE_FRAMES, **percentiles_ms(times[30:])}


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
                  round_trips: int = REFERENCE_FRAMES) -> dict:
    """Round trips, paced at ``rate_hz``, of a frame message out and a ``reply_bytes`` message back through
    a bare echo process (no validation, statistics or model), with this process's pyzmq and msgpack."""
    import msgpack
    import zmq

    from rtcalm import protocol

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
            for seq in range(round_trips + 30):
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
            **percentiles_ms(times[30:])}


def _free_tcp_address() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _ratios(result: dict) -> dict:
    """The comparisons that hold across machines: the daemon's model stage against the bare step, and
    everything but the model against the raw transport round trip, medians of the same run."""
    stages, bare, raw = result["stages"], result["bare_step"], result["raw_transport"]
    model, non_model = stages["model"]["p50_ms"], stages["all_but_model"]["p50_ms"]
    return {"model_stage_over_bare_step": None if model is None else model / bare["p50_ms"],
            "all_but_model_over_raw_transport": None if non_model is None else non_model / raw["p50_ms"]}


def check_targets(result: dict) -> dict:
    """The targets that apply to this run, each with the measured value and whether it is met."""
    period_ms = 1e3 / result["rate_hz"]
    p99 = result["p99_ms"]
    targets = {"no_lost_frames": {"limit": 0, "value": result["lost_frames"], "met": result["lost_frames"] == 0},
               "p99_under_frame_period": {"limit_ms": period_ms, "value_ms": p99,
                                          "met": p99 is not None and p99 < period_ms}}
    if result["rate_hz"] != 30.0:
        return targets
    if result["neurons"] == 512:
        limits = TARGETS_512_AT_30HZ
        non_model = result["stages"]["all_but_model"]["p50_ms"]
        targets["p99_512_at_30hz"] = {"limit_ms": limits["p99_ms"], "value_ms": p99,
                                      "met": p99 is not None and p99 <= limits["p99_ms"],
                                      "goal_met": p99 is not None and p99 <= limits["p99_goal_ms"]}
        targets["all_but_model_p50"] = {"limit_ms": limits["non_model_p50_ms"], "value_ms": non_model,
                                        "met": non_model is not None and non_model <= limits["non_model_p50_ms"]}
        ratio = result.get("ratios", {}).get("model_stage_over_bare_step")
        if ratio is not None:
            targets["model_stage_within_bare_step"] = {"limit": limits["model_over_bare_step"], "value": ratio,
                                                       "met": ratio <= limits["model_over_bare_step"]}
    elif result["neurons"] == 4096:
        limit = TARGETS_4096_AT_30HZ["p99_ms"]
        targets["p99_4096_at_30hz"] = {"limit_ms": limit, "value_ms": p99, "met": p99 is not None and p99 <= limit}
    return targets


def format_report(result: dict) -> str:
    def ms(value):
        return "-" if value is None else f"{value:8.3f}"

    lines = [f"closed-loop latency, rig send -> prediction received: {result['neurons']} neurons at "
             f"{result['rate_hz']:g} Hz over {result['transport']}, {result['frames']} frames (after "
             f"{result['warmup_frames']} warm-up), model {result['model']} on {result['backend']}",
             "  decoding heads: " + (", ".join(f"{h['name']} ({h.get('features', 'ema')})" for h in result.get("heads", []))
                                     or "none"),
             f"  p50 {ms(result['p50_ms'])} ms   p99 {ms(result['p99_ms'])} ms   p99.9 {ms(result['p999_ms'])} ms",
             f"  lost frames {result['lost_frames']}, unanswered {result['unanswered_frames']}, "
             f"folded into a batch {result['batched_frames']}",
             f"  {'stage':<22} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}"]
    for name, row in result["stages"].items():
        lines.append(f"  {name:<22} {ms(row.get('p50_ms'))} {ms(row.get('p99_ms'))} {ms(row.get('p999_ms'))}")
    for name in ("bare_step", "raw_transport"):
        if name in result:
            row = result[name]
            what = row.get("backend") or row.get("transport")
            lines.append(f"  reference {name:<12} {ms(row['p50_ms'])} {ms(row['p99_ms'])} {ms(row['p999_ms'])}"
                         f"   ({what}, paced at {result['rate_hz']:g} Hz)")
    for name, value in result.get("ratios", {}).items():
        lines.append(f"  {name:<34} {'-' if value is None else f'{value:.2f}'}")
    lines.append("  targets:")
    for name, target in result["targets"].items():
        value = target.get("value_ms", target.get("value"))
        limit = target.get("limit_ms", target.get("limit"))
        lines.append(f"    {name:<30} {'met' if target['met'] else 'NOT met':8} (measured {value}, limit {limit})")
    return "\n".join(lines)
