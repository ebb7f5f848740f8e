"""``rtcalm decode FILE --head DIR|JSON [--labels TABLE] [--model M] [--json]``.

Decodes a recording offline, frame by frame, through the daemon's own per-frame path with the head loaded
as ``load_head`` loads it (:class:`rtcalm.daemon.offline.OfflineStream`): every frame's ``decoded`` map is
what a daemon would have published for that frame (tests/daemon/test_fit_serve_live.py holds the two
equal). The frames are streamed as ``rtcalm fit-head`` streams them (trial epochs one after another,
resampled to the model's rate). When the recording has the labels of the head's task (its provenance
names the task), each trial's decoded value at the end of its response window is scored against them.
"""

from __future__ import annotations

import argparse
import json
import sys

from rtcalm.commands.arguments import add_backend_argument, add_json_argument, head_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode", help="decode a recording frame by frame through the daemon's path (what it would publish)",
        description="Streams FILE through the daemon's statistics, normalisation and model step with the head "
                    "loaded, one frame at a time, and reports each frame's decoded values (--json: all of them) "
                    "and, when the file has the head task's labels, each trial's decoded value at the end of its "
                    "response window against its label.")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--head", required=True, metavar="DIR|JSON",
                        help="the head: its .json, or the directory rtcalm fit-head wrote it to")
    parser.add_argument("--labels", metavar="TABLE", help="a label table for FILE (a contiguous recording)")
    parser.add_argument("--model", help="the model (default: the one the head's provenance names, else 'default')")
    add_backend_argument(parser)
    parser.add_argument("--config", metavar="FILE", help="the daemon's TOML config (its [stats]; default: defaults)")
    parser.add_argument("--trial-order", choices=("shuffled", "recorded"),
                        help="trial-structured files: the order the epochs are streamed in (default: the head's, "
                             "as fit-head streamed them; shuffled for a head without provenance)")
    add_json_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rtcalm.daemon.config import DaemonConfig, load_config
    from rtcalm.data import load_recording, read_label_table
    from rtcalm.engine import load_engine
    from rtcalm.errors import RtcalmError
    from rtcalm.eval.calibration import CalibrationError, calibration, stream_of
    from rtcalm.eval.linear import score
    from rtcalm.eval.served import decode_frames
    from rtcalm.model.heads import HeadError, read_provenance

    path = head_json(args.head)
    try:
        provenance = read_provenance(path) or {}
    except HeadError as error:
        raise RtcalmError(str(error)) from None
    head_config = json.loads(path.read_text()).get("config") or {}
    model = args.model or (provenance.get("model") or {}).get("spec") or "default"
    if args.trial_order is None:
        args.trial_order = provenance.get("trial_order") if provenance.get("trial_order") in ("shuffled", "recorded") \
            else "shuffled"
    config = load_config(args.config) if args.config else DaemonConfig()
    recording = load_recording(args.file)
    table = read_label_table(args.labels, recording) if args.labels else None
    engine = load_engine(model, backend=args.backend)
    fitted_on = (provenance.get("model") or {}).get("version")
    if fitted_on and fitted_on != engine.version:
        if head_config.get("features", "backbone") != "raw":
            raise RtcalmError(f"the head reads the hidden state of {fitted_on}; the model given is {engine.version} "
                              "(give --model as the head was fitted, or refit the head)")
        print(f"rtcalm decode: note: the head was chosen beside {fitted_on}; it reads only the normalised frames, "
              f"so {engine.version} serves it the same way", file=sys.stderr)

    cal, why_unscored = None, None
    task = provenance.get("task")
    if task:
        try:
            cal = calibration([recording], task, engine.rate_hz, response_end_s=float(provenance.get("window_s", 2.0)),
                              labels=None if table is None else [table], regression=provenance.get("metric") == "r2",
                              trial_order=args.trial_order)
        except CalibrationError as error:
            why_unscored = str(error)
    else:
        why_unscored = "the head has no provenance naming its task"
    if table is not None and cal is None:
        raise RtcalmError(f"--labels {args.labels!r}: {why_unscored}")
    from rtcalm.eval.report import file_digest

    digest = file_digest(args.file)
    in_sample = any(item.get("sha256") == digest for item in provenance.get("inputs") or [])
    frames = cal.stream if cal is not None else stream_of(recording, engine.rate_hz, args.trial_order)
    decoded = decode_frames(engine, frames, [path], config)
    name = head_config.get("name")

    trials, result_score = [], None
    if cal is not None:
        labels = cal.target_values()
        if cal.class_names is not None:  # text classes: the head's numbering (its provenance), not this file's
            names = provenance.get("class_names") or []
            labels = np.array([float(names.index(n)) if n in names else np.nan for n in np.asarray(cal.class_names)[cal.data.targets]])
        ends = cal.onsets + cal.window_frames - 1
        values = np.array([float(decoded[t][name]) for t in ends])
        trials = [{"trial": k, "onset_frame": int(o), "decoded_frame": int(e), "label": float(labels[k]),
                   "decoded": decoded[e][name]} for k, (o, e) in enumerate(zip(cal.onsets, ends, strict=True))]
        known = np.isfinite(labels)
        metric = "accuracy" if cal.classification else "r2"
        result_score = {"metric": metric, "value": score(values[known], labels[known], metric), "trials": int(known.sum())}
    if args.json:
        print(json.dumps({"file": str(args.file), "head": str(path), "model_version": engine.version,
                          "rate_hz": engine.rate_hz, "frames": len(decoded), "trial_order": args.trial_order
                          if recording.is_trial_structured else "recorded", "decoded": decoded, "trials": trials,
                          "score": result_score, "in_sample": in_sample,
                          "unscored_because": why_unscored if cal is None else None}))
        return 0
    print(f"decode: {args.file}: {len(decoded)} frames at {engine.rate_hz:g} Hz through the daemon's path, head "
          f"{name!r} ({path}), model {engine.version}")
    if cal is None:
        print(f"no trial scores: {why_unscored}")
        step = max(1, int(round(engine.rate_hz)))
        for t in range(0, len(decoded), step):
            print(f"  frame {t:7d}  {name} = {decoded[t][name]}")
        return 0
    print(f"{'trial':>5s} {'frame':>7s} {'label':>9s} {'decoded':>9s}")
    for row in trials:
        print(f"{row['trial']:5d} {row['decoded_frame']:7d} {row['label']:9.4g} {row['decoded']:9.4g}")
    print(f"{result_score['metric']} over {result_score['trials']} trials: {result_score['value']:.3f} (each trial's "
          f"decoded value at the last frame of its {cal.window_frames}-frame response window)")
    if in_sample:
        print("note: the head was fitted on this file, so this score is in-sample; fit-head's cross-validated score "
              "is the honest one")
    return 0
