"""Reactive against predictive triggers on the held-out mice, stored for docs/results.md.

    python tools/trigger_experiment.py    # replays the test mice's recordings; writes docs/results/trigger_compare.json

``run`` calls ``rtcalm.eval.triggers.compare`` (what ``rtcalm trigger-eval --compare`` runs) for each event
file in configs/events/ and each forecast window below, on every Allen excerpt of the test mice of
configs/pretrain_default.json, with the shipped default model on ONNX Runtime. ``python docs/render.py``
writes the block in docs/results.md and the figure from the stored JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from rtcalm.eval.report import code_state

REPOSITORY = Path(__file__).resolve().parents[1]
RESULT = REPOSITORY / "docs" / "results" / "trigger_compare.json"
EVENTS = ("transients", "population", "population-2sd")
FORECAST_WINDOWS = ((1, 5), (3, 10), (1, 15))
COMMAND = "python tools/trigger_experiment.py"


def run() -> dict:
    from rtcalm.data import load_recording
    from rtcalm.demo_sources import TEST_MICE, real_data_dirs
    from rtcalm.engine import load_engine
    from rtcalm.eval.triggers import compare, read_event_file

    data = next((d for d in real_data_dirs() if d.is_dir()), None)
    if data is None:
        raise SystemExit("the real recordings are not there (../shared/data/real or $RTCALM_REAL_DATA)")
    recordings = [r for r in (load_recording(p) for p in sorted(data.glob("yueqiw_neurod-io/data/*/*/rec_data.npz")))
                  if r.meta.mouse in TEST_MICE]
    engine = load_engine("default", backend="onnx")
    runs, started = [], time.time()
    for name in EVENTS:
        event = read_event_file(REPOSITORY / "configs" / "events" / f"{name}.toml")
        for window in FORECAST_WINDOWS:
            result = compare(engine, recordings, event, forecast_frames=window)
            runs.append({"event_file": f"configs/events/{name}.toml", **result})
            print(f"{name} forecast {window}: {json.dumps(result['compare'])}", file=sys.stderr)
    return {"command": COMMAND, "commit": code_state(REPOSITORY), "machine": f"{platform.machine()}, {platform.node()}",
            "model": engine.version, "backend": engine.backend, "rate_hz": engine.rate_hz,
            "files": [str(Path(r.meta.source).relative_to(data)) for r in recordings],
            "mice": sorted({r.meta.mouse for r in recordings}), "seconds": round(time.time() - started, 1),
            "runs": runs}


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(run(), indent=1) + "\n")
    print(f"wrote {RESULT}; python docs/render.py renders it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
