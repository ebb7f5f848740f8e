"""How the served decoder turns its inner-CV scores into one head: four rules on the grating mice.

    python tools/served_rules.py            # ~10 min on two cores; writes docs/results/served_rules.json

Every rule sees the same candidates (rtcalm.eval.served: raw / backbone / both heads, 1, 2, 4 or 8 time
bins, shrinkage LDA) with the same inner-CV scores (the library's ``ServedDecoder.scores``), on the same
features (the daemon's per-frame path), inside the same outer folds as decode-eval's baselines
(``rtcalm.eval.decode.evaluate``: 5-fold stratified CV over each mouse's trials, fold seeds 0, 1, 2):

- ``best``: the candidate with the best inner-CV score (the served rule until this comparison);
- ``one_se_simplest``: Breiman's one-standard-error rule, the simplest candidate (fewest features per
  frame times bins; raw before backbone before both) within one standard error of the best score;
- ``average_band``: the average (``rtcalm.model.heads.average_heads``) of every candidate within one
  standard error of the best score (the served rule since);
- ``average_all``: the average of every candidate.

The standard error is the served decoder's (binomial over the training trials). All four rules are run
on the six grating mice we have and compared with the baselines on them: the comparison that chose
``average_band`` used these mice, so its margin here is optimistic; the kept-back mice are the
independent test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "docs" / "results" / "served_rules.json"
GRATING_GLOB = "surlab_Park_et_al/sample-data/glm/*_data.mat"
SEEDS = (0, 1, 2)
RULES = ("best", "one_se_simplest", "average_band", "average_all")


def real_data_dir() -> Path:
    return Path(os.environ.get("RTCALM_REAL_DATA", REPOSITORY.parent / "shared" / "data" / "real"))


def complexity(candidate) -> tuple[int, int]:
    """Features per frame and neuron times bins, then raw < backbone < both."""
    width = {"raw": 1, "backbone": candidate.components, "both": 1 + candidate.components}[candidate.features]
    return width * candidate.bins, ("raw", "backbone", "both").index(candidate.features)


def members(rule: str, choice) -> list:
    """The candidates a rule averages (one for a rule that picks), from the library's choice: its band and
    every candidate's inner-CV score."""
    if rule == "average_band":
        return list(choice.members)
    if rule == "average_all":
        return list(choice.scores)
    if rule == "best":
        return [max(choice.scores, key=choice.scores.get)]
    return [min(choice.members, key=complexity)]


class RuleDecoders:
    """Per (recording, outer training trials): the served decoder's scores and choice and every
    candidate's fitted head, computed once and shared by the four rules."""

    def __init__(self, streamed, seed: int):
        self.streamed, self.seed = streamed, seed
        self.cache: dict = {}
        self.bands: list[int] = []  # members of the band, per outer fold

    def fold(self, recording, train: np.ndarray):
        from rtcalm.eval.served import Choice, ServedDecoder

        key = (recording.meta.source, train.tobytes())
        if key not in self.cache:
            cal, windows = self.streamed(recording)
            decoder = ServedDecoder(cal, windows, "auto", seed=self.seed)
            choice = decoder.choose(train)
            heads = {c: decoder.fit(train, Choice((c,), choice.scores, choice.best_score, 0.0, choice.projection))
                     for c in choice.scores}
            self.bands.append(len(choice.members))
            if any(k[0] != key[0] for k in self.cache):
                self.cache.clear()  # decode-eval runs one recording's folds for every rule, then the next
            self.cache[key] = (decoder, choice, heads)
        return self.cache[key]

    def factory(self, rule: str):
        from rtcalm.model.heads import average_heads

        def for_recording(recording, data):
            def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
                decoder, choice, heads = self.fold(recording, train)
                return decoder.predict(average_heads([heads[c] for c in members(rule, choice)]), test)
            return fit_predict
        return for_recording


def run(args: argparse.Namespace) -> int:
    from rtcalm.data import load_recording
    from rtcalm.engine import load_engine
    from rtcalm.eval.decode import BASELINES, evaluate_recording
    from rtcalm.eval.served import StreamedCalibrations

    files = sorted(real_data_dir().glob(GRATING_GLOB))
    if len(files) != 6:
        raise SystemExit(f"expected the 6 grating files under {real_data_dir()}, found {len(files)}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPOSITORY).stdout.strip()
    start = time.perf_counter()
    engine = load_engine("default", backend="auto")
    streamed = StreamedCalibrations(engine, "direction")
    recordings = [load_recording(path) for path in files]
    baselines = BASELINES["accuracy"]
    runs = {}
    for seed in SEEDS:
        rules = RuleDecoders(streamed, seed)
        per_mouse = {}
        for recording in recordings:
            row = evaluate_recording(recording, "direction", None, seed=seed,
                                     fold_decoders={rule: rules.factory(rule) for rule in RULES})
            per_mouse[row["mouse"]] = {name: row[name] for name in (*RULES, *baselines)} | {
                "standard_errors": {name: row["standard_errors"][name] for name in (*RULES, *baselines)}}
            print(f"seed {seed} {row['mouse']}: " + " ".join(f"{r} {row[r]:.3f}" for r in RULES), file=sys.stderr)
        runs[f"direction_seed{seed}"] = {
            "per_mouse": per_mouse,
            "mean": {name: float(np.mean([m[name] for m in per_mouse.values()])) for name in (*RULES, *baselines)},
            "band_sizes": rules.bands,
        }
    document = {"made_by": "python tools/served_rules.py", "commit": commit, "rules": list(RULES),
                "baselines": list(baselines), "mice": [r.meta.mouse for r in recordings],
                "compute_minutes": round((time.perf_counter() - start) / 60, 1), "runs": runs}
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
