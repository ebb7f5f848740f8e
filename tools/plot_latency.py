"""The stage waterfall of ``rtcalm bench latency --json FILE`` records, as one PNG (docs/benchmarks.md).

One row per run: the median of every stage, left to right in the order a frame meets them (rig ->
daemon, validate, statistics, model, the rest of the daemon, daemon -> subscriber), then the run's
closed-loop p50 and p99 as ticks; under it, the references of the same run (the bare model step and the
raw ZeroMQ round trip, paced alike). Medians of stages do not add up exactly to the median of the sum.

    rtcalm bench latency --neurons 512 --json runs/latency/tcp-512.json
    rtcalm bench latency --neurons 512 --transport ipc --json runs/latency/ipc-512.json
    python tools/plot_latency.py runs/latency/*.json --out docs/figures/latency_waterfall.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtcalm.bench.latency import WATERFALL

COLOURS = {"rig_to_daemon": "#9ecae1", "validate": "#fdae6b", "stats": "#a1d99b", "model": "#756bb1",
           "daemon_other": "#d9d9d9", "daemon_to_subscriber": "#6baed6"}
LABELS = {"rig_to_daemon": "rig → daemon", "validate": "validate", "stats": "statistics", "model": "model",
          "daemon_other": "rest of daemon", "daemon_to_subscriber": "daemon → subscriber"}


def latency_result(path: Path) -> dict:
    """The result of one ``rtcalm bench latency --json`` record; SystemExit naming the file otherwise."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"plot_latency: {path}: not a readable JSON file ({error})") from None
    if not isinstance(record, dict) or not str(record.get("command", "")).startswith("rtcalm bench latency"):
        raise SystemExit(f"plot_latency: {path}: not a record of rtcalm bench latency --json")
    return record["result"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw the stage waterfall of bench latency JSON records.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/latency_waterfall.png"))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [latency_result(path) for path in args.files]
    fig, ax = plt.subplots(figsize=(10, 2.0 + 1.1 * len(runs)))
    labels, y = [], 0.0
    for run in runs:
        left = 0.0
        for stage in WATERFALL:
            width = run["stages"][stage]["p50_ms"] or 0.0
            ax.barh(y, width, left=left, height=0.5, color=COLOURS[stage], edgecolor="white",
                    label=LABELS[stage] if run is runs[0] else None)
            left += width
        ax.plot([run["p50_ms"]] * 2, [y - 0.3, y + 0.3], color="black", lw=1.5,
                label="closed loop p50" if run is runs[0] else None)
        ax.plot([run["p99_ms"]] * 2, [y - 0.3, y + 0.3], color="red", lw=1.5,
                label="closed loop p99" if run is runs[0] else None)
        labels.append((y, f"{run['neurons']} neurons, {run['transport']}\n{run['frames']} frames"))
        if "bare_step" in run:
            y += 0.5
            ax.barh(y, run["bare_step"]["p50_ms"], height=0.3, color=COLOURS["model"], alpha=0.45,
                    label="bare step (same pace)" if run is runs[0] else None)
            ax.barh(y, run["raw_transport"]["p50_ms"], left=run["bare_step"]["p50_ms"], height=0.3,
                    color=COLOURS["rig_to_daemon"], alpha=0.6,
                    label="raw ZeroMQ round trip (same pace)" if run is runs[0] else None)
            labels.append((y, "references"))
        y += 1.0
    ax.set_yticks([position for position, _ in labels], [text for _, text in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms (stage medians)")
    first = runs[0]
    ax.set_title(f"rig send → prediction received at {first['rate_hz']:g} Hz, model {first['model']} on "
                 f"{first['backend']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
