"""The decoder the daemon serves against the best linear decoder, on the grating mice (issue 22).

    python tools/served_experiment.py [--out runs/served]     # ~15 min on two cores: decode-eval x 8

It calls ``rtcalm decode-eval`` (unchanged protocol: 5-fold stratified CV over each mouse's 128
trials, response 0-2 s, every choice by inner CV on the outer training trials) on the six grating files
in ``$RTCALM_REAL_DATA`` (default ../shared/data/real): direction for fold seeds 0, 1, 2; running speed
and pupil for seed 0; ``--timecourse`` for direction, seed 0; and direction, seed 0, with and without
``--timecourse``, with the epochs streamed in their recorded (cyclic-stimulus) order
(``--trial-order recorded``), the control for what the backbone's memory of the previous trial carries. Each full decode-eval document goes to
``--out``; the scores, standard errors and the served row's per-fold choices go to
docs/results/decoding_served.json (with the commands, the commit and the compute time), from which
``python docs/render.py`` writes the served block of docs/results.md and docs/figures/decoding_timecourse.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "docs" / "results" / "decoding_served.json"
GRATING_GLOB = "surlab_Park_et_al/sample-data/glm/*_data.mat"
SEEDS = (0, 1, 2)


def real_data_dir() -> Path:
    return Path(os.environ.get("RTCALM_REAL_DATA", REPOSITORY.parent / "shared" / "data" / "real"))


def decode_eval(files: list[Path], out: Path, *args: str) -> tuple[dict, list[str], float]:
    command = ["rtcalm", "decode-eval", *(str(f) for f in files), *args, "--json"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rtcalm", *command[1:]], capture_output=True, text=True,
                            cwd=REPOSITORY)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    elapsed = time.perf_counter() - start
    out.write_text(result.stdout)
    return json.loads(result.stdout), command, elapsed


def compact_choice(choice: dict) -> dict:
    """One outer fold's served choice, its averaged candidates one line each: {description: inner-CV score}."""
    from rtcalm.eval.served import Candidate

    members = {Candidate(**{k: m[k] for k in ("features", "components", "bins", "penalty")}).describe(): m["inner_cv"]
               for m in choice["members"]}
    return {"features": choice["features"], "inner_cv": choice["inner_cv"], "band": choice["band"], "members": members}


def compact(document: dict) -> dict:
    """Means, standard errors and per-mouse scores of every decoder, and the served row's choices."""
    names = [n for n in document if isinstance(document[n], float) and n not in ("folds", "seed")]
    names += list(document["baselines"])
    return {
        "task": document["task"], "metric": document["metric"], "seed": document["seed"],
        "model_version": document.get("model_version"),
        "mean": {n: document[n] if n in document and n not in document["baselines"] else document["baselines"][n]
                 for n in names},
        "standard_errors": document["standard_errors"],
        "per_mouse": {row["mouse"]: {"trials": row["trials"], "neurons": row["neurons"],
                                     **{n: row[n] for n in names},
                                     "standard_errors": row["standard_errors"],
                                     "served_choices": [compact_choice(c) for c in row["selected"].get("served", [])]}
                      for row in document["per_file"]},
    }


def run(args: argparse.Namespace) -> int:
    files = sorted(real_data_dir().glob(GRATING_GLOB))
    if len(files) != 6:
        raise SystemExit(f"expected the 6 grating files under {real_data_dir()}, found {len(files)}")
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPOSITORY).stdout.strip()
    runs, commands, seconds = {}, [], 0.0
    jobs = [(f"direction_seed{s}", ("--task", "direction", "--seed", str(s))) for s in SEEDS]
    jobs += [(f"{task}_seed0", ("--task", task)) for task in ("speed", "pupil")]
    jobs += [("direction_seed0_recorded_order", ("--task", "direction", "--trial-order", "recorded"))]
    for key, extra in jobs:
        document, command, elapsed = decode_eval(files, args.out / f"{key}.json", *extra)
        runs[key] = compact(document)
        commands.append(" ".join(command))
        seconds += elapsed
        print(f"{key}: served {document['served']:.4f} ({elapsed:.0f} s)", file=sys.stderr)
    courses = {}
    for key, extra in (("timecourse", ()), ("timecourse_recorded_order", ("--trial-order", "recorded"))):
        course, command, elapsed = decode_eval(files, args.out / f"{key}.json", "--task", "direction", "--timecourse",
                                               *extra)
        commands.append(" ".join(command))
        seconds += elapsed
        course["per_file"] = [{k: v for k, v in row.items() if k != "file"} for row in course["per_file"]]
        courses[key] = course
    document = {"made_by": "python tools/served_experiment.py", "commit": commit, "commands": commands,
                "compute_minutes": round(seconds / 60, 1), "runs": runs, **courses}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPOSITORY / "runs" / "served",
                        help="where each decode-eval document goes (the summary goes to docs/results/)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
