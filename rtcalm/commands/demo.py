"""``rtcalm demo``: the daemon with the shipped model, fed by a real or simulated rig, with a live view.

Two streams by default, each its own session, at 30 Hz:

- ``allen``: a real Allen Brain Observatory recording of a mouse the default model was never trained on,
  when the real data folder (``../shared/data/real`` or ``$RTCALM_REAL_DATA``) is there; ``--file``
  streams another recording instead;
- ``sim``: a simulated rig whose calcium transients and noise are matched to the real excerpts
  (rtcalm/demo_sources.py), with the shipped demo decoding head loaded: it decodes the grating direction
  the simulated neurons see, and the simulator knows the truth.

The view shows, per stream, the forecast skill against copy-last at four horizons (``1 - MSE model / MSE
copy-last`` over every neuron with a forecast, after each stream's first 64 frames), frames, errors and
decoded values against the truth, and the closed-loop latency; it is redrawn in place on a terminal and
printed as blocks otherwise. A closing summary follows Ctrl-C or ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rtcalm.commands.arguments import add_model_argument

HORIZONS = (1, 5, 15, 30)  # frames ahead scored in the view
SCORE_FROM_STREAM_FRAME = 64  # a stream's first frames are the statistics' and the model's warm-up
DECODE_LATE_FRAMES = 5  # a stimulus is scored on the first prediction at most this many frames after it ends
SIM_SESSION, REAL_SESSION, FILE_SESSION = "sim", "allen", "recording"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the daemon, stream a real and a simulated rig into it, show live skill and decoding",
        description="Start the daemon (its own process, free loopback ports) with the shipped model and stream "
                    "into it at the recordings' frame rate: a real Allen recording of a held-out mouse (when "
                    "../shared/data/real or $RTCALM_REAL_DATA is there, or --file) and a simulated rig with "
                    "realistic calcium transients whose grating direction the shipped demo head decodes. Shows "
                    "forecast skill against copy-last, latency, frames and decoded values live, then a summary. "
                    "Ctrl-C stops everything cleanly.")
    add_model_argument(parser)
    parser.add_argument("--file", metavar="FILE",
                        help="stream this contiguous recording (any supported format) instead of the default real one")
    parser.add_argument("--synthetic", action="store_true", help="stream only the simulated rig")
    parser.add_argument("--neurons", type=int, default=None,
                        help="neurons of the simulated rig (default 256, the count the demo head was fitted for; "
                             "another count streams without the head)")
    parser.add_argument("--rate", type=float, metavar="HZ", help="frame rate of every stream (default: each one's own)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    parser.add_argument("--write-calibration", metavar="DIR",
                        help="write the simulated rig's calibration block (its first 10 minutes, a recording and a "
                             "label table) into DIR for rtcalm fit-head, and exit (rtcalm/demo_heads/README.md)")
    parser.add_argument("--plain", action="store_true",
                        help="print a block every 5 s instead of redrawing in place (the default when stdout "
                             "is not a terminal)")
    parser.set_defaults(handler=run)


# --- what is streamed -------------------------------------------------------------------------------

@dataclass
class Source:
    session: str
    description: str
    dff: np.ndarray  # (frames, neurons) float32, streamed in a loop (each pass a fresh stream)
    rate_hz: float
    first_frame: int = 0  # offset of dff[0] in the simulated recording (for the shown direction)
    directions: np.ndarray | None = None  # simulated rig: the direction of each trial of its recording


def _sources(args: argparse.Namespace) -> list[Source]:
    from rtcalm.commands.replay import check_rate
    from rtcalm.data import load_recording
    from rtcalm.demo_sources import (
        HEAD_FIT_FRAMES,
        SIMULATED_RIG,
        default_real_recording,
        describe_real_recording,
        simulated_rig,
    )
    from rtcalm.errors import RtcalmError
    from rtcalm.sim import make_synthetic

    if args.synthetic and args.file:
        raise RtcalmError("give --file or --synthetic, not both")
    if args.neurons is not None and args.neurons < 1:
        raise RtcalmError(f"--neurons must be positive, got {args.neurons}")
    sources = []
    path = args.file or (None if args.synthetic else default_real_recording())
    if path is not None:
        recording = load_recording(path)
        if recording.is_trial_structured:
            raise RtcalmError(f"{path}: trial-structured ({recording.n_trials} epochs); the demo streams contiguous "
                              "recordings only (gluing epochs would fake a continuous trace)")
        description = describe_real_recording(recording) if args.file is None else str(path)
        sources.append(Source(FILE_SESSION if args.file else REAL_SESSION, description, recording.dff,
                              check_rate(args.rate or recording.rate_hz)))
    n_neurons = SIMULATED_RIG["n_neurons"] if args.neurons is None else args.neurons
    recording = (simulated_rig() if n_neurons == SIMULATED_RIG["n_neurons"]
                 else make_synthetic(**{**SIMULATED_RIG, "n_neurons": n_neurons}))
    sources.append(Source(SIM_SESSION, f"simulated rig, {n_neurons} neurons with calcium kinetics and noise matched "
                                       "to the Allen excerpts, watching drifting gratings (8 directions)",
                          recording.dff[HEAD_FIT_FRAMES:], check_rate(args.rate or recording.rate_hz),
                          first_frame=HEAD_FIT_FRAMES,
                          directions=np.asarray(recording.trials["direction_deg"], dtype=float)))
    return sources


# --- scoring ----------------------------------------------------------------------------------------

class Skill:
    """Running MSE of the forecasts and of copy-last, per horizon, over every neuron with a forecast."""

    def __init__(self):
        self.sums = {h: [0.0, 0.0, 0] for h in HORIZONS}  # model squared error, copy-last's, values

    def add(self, forecast: np.ndarray, dff: np.ndarray, index: int) -> None:
        last = dff[index]
        for h in HORIZONS:
            if h > forecast.shape[1] or index + h >= dff.shape[0]:  # past this pass of the recording
                continue
            predicted, actual = forecast[:, h - 1], dff[index + h]
            valid = np.isfinite(predicted) & np.isfinite(actual) & np.isfinite(last)
            if valid.any():
                row = self.sums[h]
                row[0] += float(np.sum((predicted[valid] - actual[valid]) ** 2))
                row[1] += float(np.sum((last[valid] - actual[valid]) ** 2))
                row[2] += int(valid.sum())

    def skill(self, h: int) -> float | None:
        model, copy_last, count = self.sums[h]
        return 1.0 - model / copy_last if count and copy_last > 0 else None

    def line(self, rate_hz: float) -> str:
        cells = []
        for h in HORIZONS:
            skill = self.skill(h)
            cells.append(f"{_ahead(h, rate_hz)} {'   -  ' if skill is None else f'{skill:+6.1%}'}")
        values = sum(row[2] for row in self.sums.values())
        return "  ".join(cells) + f"   ({values:,} values)"

    def beaten(self) -> tuple[int, int]:
        scored = [s for s in (self.skill(h) for h in HORIZONS) if s is not None]
        return sum(s > 0 for s in scored), len(scored)


def _ahead(steps: int, rate_hz: float) -> str:
    ms = steps / rate_hz * 1e3
    return f"{ms / 1e3:g} s" if ms >= 1000 else f"{ms:.0f} ms"


class DirectionScore:
    """Decoded grating direction against the one shown, once per stimulus: on the first prediction at or
    just after the stimulus' last frame (the head pools the last 2 s, the stimulus' length)."""

    def __init__(self, source: Source):
        from rtcalm.demo_sources import STIMULUS_FRAMES, TRIAL_FRAMES

        self.source = source
        self.trial_frames, self.stimulus_frames = TRIAL_FRAMES, STIMULUS_FRAMES
        self.scored: set[tuple[int, int]] = set()
        self.correct = 0
        self.total = 0
        self.recent = deque(maxlen=20)

    def add(self, decoded: dict, seq: int, index: int) -> None:
        if "direction" not in decoded:
            return
        frame = self.source.first_frame + index
        trial, within = divmod(frame, self.trial_frames)
        trial_start = index - within  # in this pass
        key = (seq // self.source.dff.shape[0], trial)
        if (not self.stimulus_frames - 1 <= within < self.stimulus_frames + DECODE_LATE_FRAMES
                or trial_start < SCORE_FROM_STREAM_FRAME or key in self.scored):
            return
        self.scored.add(key)
        hit = float(decoded["direction"]) == float(self.source.directions[trial])
        self.correct += hit
        self.total += 1
        self.recent.append(hit)

    def line(self) -> str:
        if not self.total:
            return "no stimulus scored yet (the first ends 2 s after a stream's warm-up)"
        chance = 1.0 / len(set(self.source.directions.tolist()))
        return (f"{self.correct} of {self.total} stimuli correct ({self.correct / self.total:.0%}; last "
                f"{len(self.recent)}: {sum(self.recent) / len(self.recent):.0%}; chance {chance:.1%})")


@dataclass
class SessionView:
    source: Source
    sender: object = None
    skill: Skill = field(default_factory=Skill)
    decoding: DirectionScore | None = None
    head_note: str = ""
    latencies: deque = field(default_factory=lambda: deque(maxlen=3000))
    all_latencies: list = field(default_factory=list)
    predictions: int = 0
    folded: int = 0
    errors: int = 0
    last_error: str = ""
    decoded: dict = field(default_factory=dict)
    shown: float | None = None  # simulated rig: the direction on screen at the latest answered frame

    def record(self, message, received_ns: int) -> None:
        from rtcalm.demo_sources import shown_direction

        source = self.source
        # RigSender stamps t_acq_ns with time.time_ns() as it sends, on this machine's clock: the closed
        # loop from the rig's send to this process holding the prediction.
        latency = (received_ns - message.t_acq_ns) / 1e6
        self.latencies.append(latency)
        self.all_latencies.append(latency)
        self.predictions += 1
        self.folded += message.folded
        self.decoded = message.decoded
        index = message.seq % source.dff.shape[0]  # position in the current pass of the recording
        if message.stream_frame >= SCORE_FROM_STREAM_FRAME:
            self.skill.add(message.forecast, source.dff, index)
        if self.decoding is not None:
            self.decoding.add(message.decoded, message.seq, index)
        if source.directions is not None:
            self.shown = shown_direction(source.first_frame + index, source.directions)

    def decoded_line(self) -> str:
        if not self.decoded:
            return self.head_note or "none"
        value = self.decoded.get("direction")
        probabilities = self.decoded.get("direction_probabilities") or [float("nan")]
        if value is None:  # heads other than the demo's: show what they publish
            return json.dumps(self.decoded)
        text = (f"direction {value:5.0f}° (p {max(probabilities):.2f}), shown "
                f"{'gray' if self.shown is None else f'{self.shown:.0f}°'}")
        return text + (f"  |  {self.decoding.line()}" if self.decoding is not None else "")


def _percentiles(values) -> str:
    if not values:
        return "-"
    from rtcalm.stats.percentile import percentile

    p50, p99, p999 = percentile(values, [50, 99, 99.9])
    return f"p50 {p50:5.2f} ms  p99 {p99:5.2f} ms  p99.9 {p999:5.2f} ms"


# --- running ----------------------------------------------------------------------------------------

def _load_demo_head(control, view: SessionView, serving_version: str) -> None:
    """Load the shipped demo head for the simulated rig if it was fitted for this model and these neurons;
    otherwise say why not (a head reads one backbone's hidden state of one set of neurons)."""
    from rtcalm.client import DaemonError
    from rtcalm.demo_heads import DIRECTION_HEAD, REFIT

    try:
        document = json.loads(DIRECTION_HEAD.read_text())
        head_config, provenance = document["config"], document.get("provenance") or {}
    except (OSError, ValueError, KeyError) as exc:
        view.head_note = f"none (the demo head is missing: {exc}; {REFIT})"
        return
    fitted_on = (provenance.get("model") or {}).get("version")
    if fitted_on != serving_version:
        view.head_note = (f"none (the demo head reads {fitted_on}, the daemon serves {serving_version}; refit it "
                          f"for that model: {REFIT} --model NAME|PATH)")
        return
    n_neurons = view.source.dff.shape[1]
    if head_config.get("n_neurons") != n_neurons:
        view.head_note = f"none (the demo head is for {head_config.get('n_neurons')} simulated neurons, not {n_neurons})"
        return
    try:
        control.start_session(view.source.session, n_neurons)
        control.load_head(view.source.session, str(DIRECTION_HEAD))
    except DaemonError as exc:
        view.head_note = f"none (load_head refused the demo head: {exc})"
        return
    view.decoding = DirectionScore(view.source)
    view.head_note = "(waiting for the first prediction)"


def run(args: argparse.Namespace) -> int:
    from rtcalm.client import ControlClient, ErrorMessage, Prediction, PredictionSubscriber, RigSender
    from rtcalm.commands.replay import stream
    from rtcalm.daemon.process import DaemonProcess
    from rtcalm.errors import RtcalmError
    from rtcalm.model import resolve_model

    if args.write_calibration:
        from rtcalm.demo_sources import write_calibration

        recording, labels = write_calibration(args.write_calibration)
        print(f"wrote {recording} and {labels}; fit the demo head with\n  rtcalm fit-head {recording} --labels {labels} "
              "--task direction --out rtcalm/demo_heads")
        return 0
    if args.duration is not None and not args.duration > 0:
        raise RtcalmError(f"--duration must be a positive number of seconds, got {args.duration}")
    model_dir = resolve_model(args.model)  # a clear one-line error before anything starts
    sources = _sources(args)
    plain = args.plain or not sys.stdout.isatty()
    print(f"rtcalm demo: starting the daemon with model {model_dir.name} ...", file=sys.stderr)
    stop = threading.Event()
    views = {source.session: SessionView(source) for source in sources}

    with DaemonProcess(model=str(model_dir)) as daemon, \
            ControlClient(daemon.endpoints["control"], timeout_ms=20000) as control, \
            PredictionSubscriber(daemon.endpoints["publish"], sessions=list(views)) as subscriber:
        model = control.status()["model"]
        if SIM_SESSION in views:
            _load_demo_head(control, views[SIM_SESSION], model["version"])
        time.sleep(0.2)  # let the subscription reach the daemon
        threads = []
        for view in views.values():
            view.sender = RigSender(daemon.endpoints["ingest"], session=view.source.session)
            threads.append(threading.Thread(target=stream, args=(view.source.dff, view.sender, view.source.rate_hz),
                                            kwargs={"loop": True, "stop": stop}, daemon=True))
        screen = Screen(plain)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        last_draw = 0.0
        try:
            while args.duration is None or time.monotonic() - started < args.duration:
                message = subscriber.receive(timeout_ms=50)
                received_ns = time.time_ns()
                if isinstance(message, Prediction) and message.session in views:
                    views[message.session].record(message, received_ns)
                elif isinstance(message, ErrorMessage) and message.session in views:
                    view = views[message.session]
                    view.errors += 1
                    view.last_error = f"{message.code}: {message.message}"
                if time.monotonic() - last_draw >= (5.0 if plain else 0.5):
                    last_draw = time.monotonic()
                    screen.draw(_view_lines(views, model, daemon.endpoints, time.monotonic() - started))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for thread in threads:
                thread.join(5.0)
            for view in views.values():
                view.sender.close()
        elapsed = time.monotonic() - started
    print("\n".join(_summary_lines(views, model, elapsed)), flush=True)
    print("rtcalm demo: stopped", file=sys.stderr)
    return 0


class Screen:
    """Redraws a block of lines in place on a terminal (cursor up, clear below); prints blocks otherwise."""

    def __init__(self, plain: bool):
        self.plain = plain
        self.drawn = 0

    def draw(self, lines: list[str]) -> None:
        if self.plain:
            print("\n".join(lines) + "\n", flush=True)
            return
        width = max(40, shutil.get_terminal_size().columns - 1)
        lines = [line[:width] for line in lines]  # a wrapped line would break the cursor arithmetic
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        sys.stdout.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn = len(lines)


def _view_lines(views: dict[str, SessionView], model: dict, endpoints: dict, elapsed: float) -> list[str]:
    lines = [f"rtcalm demo: model {model['version']} ({model['backend']}), running {elapsed:4.0f} s, Ctrl-C stops",
             "forecast skill = 1 - MSE(model) / MSE(copy-last) over every neuron with a forecast "
             f"(> 0: the model beats copy-last), from each stream's frame {SCORE_FROM_STREAM_FRAME}"]
    for name, view in views.items():
        source = view.source
        lines += [f"[{name}] {source.description}",
                  f"  {source.dff.shape[1]} neurons at {source.rate_hz:g} Hz; sent {view.sender.sent}, predictions "
                  f"{view.predictions} (+{view.folded} folded), errors {view.errors}",
                  f"  skill   {view.skill.line(source.rate_hz)}",
                  f"  decoded {view.decoded_line()}"]
        if view.last_error:
            lines.append(f"  last error {view.last_error}")
    everything = [x for view in views.values() for x in view.latencies]
    lines += [f"latency rig send -> prediction received: {_percentiles(list(everything))}",
              f"metrics {endpoints.get('metrics', '-')}"]
    return lines


def _summary_lines(views: dict[str, SessionView], model: dict, elapsed: float) -> list[str]:
    lines = ["", f"rtcalm demo summary: {elapsed:.0f} s with {model['version']} ({model['backend']})"]
    for name, view in views.items():
        source = view.source
        beaten, scored = view.skill.beaten()
        lines += [f"[{name}] {source.description}",
                  f"  {view.sender.sent} frames sent, {view.predictions} predictions (+{view.folded} folded into "
                  f"them), {view.errors} errors",
                  f"  forecast skill vs copy-last: {view.skill.line(source.rate_hz)}",
                  f"  the model beats copy-last at {beaten} of {scored} scored horizons"]
        if view.decoding is not None:
            lines.append(f"  decoded direction: {view.decoding.line()}")
        elif view.head_note:
            lines.append(f"  decoded: {view.head_note}")
    everything = [x for view in views.values() for x in view.all_latencies]
    lines.append(f"latency rig send -> prediction received ({len(everything)} frames): {_percentiles(everything)}")
    return lines
