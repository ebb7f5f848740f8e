"""``rtcalm demo``'s text: the live view (redrawn in place on a terminal, printed as blocks otherwise) and
the closing summary, from the view model (:mod:`rtcalm.commands.demo_view`)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np

from rtcalm.commands.demo_view import (
    HORIZONS,
    LIVE_LATENCIES,
    SCORE_FROM_STREAM_FRAME,
    DirectionScore,
    SessionView,
    StreamSkill,
    latency_percentiles,
)


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


def ahead(steps: int, rate_hz: float) -> str:
    ms = steps / rate_hz * 1e3
    return f"{ms / 1e3:g} s" if ms >= 1000 else f"{ms:.0f} ms"


def skill_line(skill: StreamSkill, rate_hz: float) -> str:
    cells = []
    for h in HORIZONS:
        value = skill.skill(h)
        cells.append(f"{ahead(h, rate_hz)} {'   -  ' if value is None else f'{value:+6.1%}'}")
    return "  ".join(cells) + f"   ({skill.forecasts:,} forecasts)"


def direction_line(score: DirectionScore) -> str:
    if not score.total:
        return "no stimulus scored yet (the first ends 2 s after a stream's warm-up)"
    return (f"{score.correct} of {score.total} stimuli correct ({score.correct / score.total:.0%}; last "
            f"{len(score.recent)}: {sum(score.recent) / len(score.recent):.0%}; chance {score.chance:.1%})")


def decoded_line(view: SessionView) -> str:
    if not view.decoded:
        return view.head_note or "none"
    value = view.decoded.get("direction")
    probabilities = view.decoded.get("direction_probabilities") or [float("nan")]
    if value is None:  # heads other than the demo's: show what they publish
        return json.dumps(view.decoded)
    text = (f"direction {value:5.0f}° (p {max(probabilities):.2f}), shown "
            f"{'gray' if view.shown is None else f'{view.shown:.0f}°'}")
    return text + (f"  |  {direction_line(view.decoding)}" if view.decoding is not None else "")


def latency_text(values: np.ndarray) -> str:
    if not values.size:
        return "-"
    p50, p99, p999 = latency_percentiles(values)
    return f"p50 {p50:5.2f} ms  p99 {p99:5.2f} ms  p99.9 {p999:5.2f} ms"


def view_lines(views: dict[str, SessionView], model: dict, endpoints: dict, elapsed: float) -> list[str]:
    lines = [f"rtcalm demo: model {model['version']} ({model['backend']}), running {elapsed:4.0f} s, Ctrl-C stops",
             "forecast skill = 1 - MSE(model) / MSE(copy-last) over every neuron with a forecast "
             f"(> 0: the model beats copy-last), from each stream's frame {SCORE_FROM_STREAM_FRAME}"]
    for name, view in views.items():
        source = view.source
        lines += [f"[{name}] {source.description}",
                  f"  {source.dff.shape[1]} neurons at {source.rate_hz:g} Hz; sent {view.sender.sent}, predictions "
                  f"{view.predictions} (+{view.folded} folded), errors {view.errors}",
                  f"  skill   {skill_line(view.skill, source.rate_hz)}",
                  f"  decoded {decoded_line(view)}"]
        if view.last_error:
            lines.append(f"  last error {view.last_error}")
    recent = np.concatenate([view.latencies.recent(LIVE_LATENCIES) for view in views.values()])
    lines += [f"latency rig send -> prediction received: {latency_text(recent)}",
              f"metrics {endpoints.get('metrics', '-')}"]
    return lines


def summary_lines(views: dict[str, SessionView], model: dict, elapsed: float) -> list[str]:
    lines = ["", f"rtcalm demo summary: {elapsed:.0f} s with {model['version']} ({model['backend']})"]
    for name, view in views.items():
        source = view.source
        beaten, scored = view.skill.beaten()
        lines += [f"[{name}] {source.description}",
                  f"  {view.sender.sent} frames sent, {view.predictions} predictions (+{view.folded} folded into "
                  f"them), {view.errors} errors",
                  f"  forecast skill vs copy-last: {skill_line(view.skill, source.rate_hz)}",
                  f"  the model beats copy-last at {beaten} of {scored} scored horizons"]
        if view.decoding is not None:
            lines.append(f"  decoded direction: {direction_line(view.decoding)}")
        elif view.head_note:
            lines.append(f"  decoded: {view.head_note}")
    kept = np.concatenate([view.latencies.recent() for view in views.values()])
    seen = sum(view.latencies.seen for view in views.values())
    which = f"{seen} frames" if kept.size == seen else f"the last {kept.size} of {seen} frames"
    lines.append(f"latency rig send -> prediction received ({which}): {latency_text(kept)}")
    return lines
