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
printed as blocks otherwise. A closing summary follows Ctrl-C or ``--duration``. What it keeps per stream
is :mod:`rtcalm.commands.demo_view`, the text :mod:`rtcalm.commands.demo_render`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import TYPE_CHECKING

from rtcalm.commands.arguments import add_model_argument

if TYPE_CHECKING:
    from rtcalm.commands.demo_view import SessionView, Source

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

def _sources(args: argparse.Namespace) -> list[Source]:
    import numpy as np

    from rtcalm.commands.demo_view import Source
    from rtcalm.commands.streaming import check_rate
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


# --- running ----------------------------------------------------------------------------------------

def _load_demo_head(control, view: SessionView, serving_version: str) -> None:
    """Load the shipped demo head for the simulated rig if it was fitted for this model and these neurons;
    otherwise say why not (a head reads one backbone's hidden state of one set of neurons)."""
    from rtcalm.client import DaemonError
    from rtcalm.commands.demo_view import DirectionScore
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
    from rtcalm.commands.demo_render import Screen, summary_lines, view_lines
    from rtcalm.commands.demo_view import SessionView
    from rtcalm.commands.streaming import stream
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

    with DaemonProcess(model=str(model_dir)) as daemon, \
            ControlClient(daemon.endpoints["control"], timeout_ms=20000) as control, \
            PredictionSubscriber(daemon.endpoints["publish"], sessions=[s.session for s in sources]) as subscriber:
        model = control.status()["model"]
        views = {source.session: SessionView(source, model["horizon"]) for source in sources}
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
                    views[message.session].error(message.code, message.message)
                if time.monotonic() - last_draw >= (5.0 if plain else 0.5):
                    last_draw = time.monotonic()
                    screen.draw(view_lines(views, model, daemon.endpoints, time.monotonic() - started))
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for thread in threads:
                thread.join(5.0)
            for view in views.values():
                view.sender.close()
        elapsed = time.monotonic() - started
    print("\n".join(summary_lines(views, model, elapsed)), flush=True)
    print("rtcalm demo: stopped", file=sys.stderr)
    return 0
