"""``rtcalm demo``'s view model: what it keeps of each stream it shows, updated per prediction received.

Everything is bounded, so the demo can run for days: the skill's sums and rings, the decoding score's
counts and last results, and a preallocated ring of the most recent latencies (the summary's percentiles
are over those). Formatting is :mod:`rtcalm.commands.demo_render`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rtcalm.demo_sources import STIMULUS_FRAMES, TRIAL_FRAMES, shown_direction
from rtcalm.stats.skill import RollingSkill

HORIZONS = (1, 5, 15, 30)  # frames ahead scored in the view
SCORE_FROM_STREAM_FRAME = 64  # a stream's first frames are the statistics' and the model's warm-up
DECODE_LATE_FRAMES = 5  # a stimulus is scored on the first prediction at most this many frames after it ends
LIVE_LATENCIES = 3000  # the live view's latency percentiles: the last 100 s of a 30 Hz stream
KEPT_LATENCIES = 108_000  # the summary's: the last hour of a 30 Hz stream


@dataclass
class Source:
    session: str
    description: str
    dff: np.ndarray  # (frames, neurons) float32, streamed in a loop (each pass a fresh stream)
    rate_hz: float
    first_frame: int = 0  # offset of dff[0] in the simulated recording (for the shown direction)
    directions: np.ndarray | None = None  # simulated rig: the direction of each trial of its recording


class StreamSkill:
    """Forecast skill against copy-last of one looping stream at :data:`HORIZONS` (those within the model's
    horizon): :class:`rtcalm.stats.skill.RollingSkill` forgetting nothing, so ``1 - MSE(model) /
    MSE(copy-last)`` over every neuron with a forecast, since the start.

    The recording's frames are the truth, fed in stream order with the forecast made at each (none for
    frames folded into a later prediction, lost, or in a stream's warm-up). Each pass of the recording is
    a fresh stream, so max(horizons) missing frames go in before a pass starts: no forecast is scored
    against the next pass's frames."""

    def __init__(self, source: Source, horizon: int):
        n_neurons = source.dff.shape[1]
        self.dff = source.dff
        self.horizons = tuple(h for h in HORIZONS if h <= horizon)
        self.rolling = RollingSkill(n_neurons, horizon, self.horizons, time_constant_frames=None)
        self.no_forecast = np.full((n_neurons, horizon), np.nan, np.float32)
        self.missing_frame = np.full(n_neurons, np.nan, np.float32)
        self.next_seq = 0  # the first frame not fed yet (the rig numbers frames from 0 across passes)
        self.forecasts = 0  # forecasts fed (each is scored as the frames it predicts arrive)

    def add(self, seq: int, forecast: np.ndarray | None) -> None:
        """The prediction made at frame ``seq`` (the rig's sequence number); ``forecast`` None: not scored."""
        pass_frames = self.dff.shape[0]
        for frame in range(self.next_seq, seq + 1):  # one frame, unless frames were folded or lost
            index = frame % pass_frames
            if index == 0 and frame > 0:
                for _ in range(max(self.horizons)):
                    self.rolling.update(self.missing_frame, self.no_forecast)
            scored = forecast is not None and frame == seq
            self.rolling.update(self.dff[index], forecast if scored else self.no_forecast)
            self.forecasts += scored
        self.next_seq = max(self.next_seq, seq + 1)

    def skill(self, h: int) -> float | None:
        """Skill at ``h`` frames ahead; None until scored, or for a horizon past the model's."""
        if h not in self.horizons:
            return None
        value = float(self.rolling.skill[self.horizons.index(h)])
        return None if np.isnan(value) else value

    def beaten(self) -> tuple[int, int]:
        """(horizons where the model beats copy-last, horizons scored)."""
        scored = [s for s in (self.skill(h) for h in self.horizons) if s is not None]
        return sum(s > 0 for s in scored), len(scored)


class DirectionScore:
    """Decoded grating direction against the one shown, once per stimulus: on the first prediction at or
    just after the stimulus' last frame (the head pools the last 2 s, the stimulus' length)."""

    def __init__(self, source: Source):
        self.source = source
        self.last_scored: tuple[int, int] | None = None  # (pass, trial): stimuli come in order
        self.correct = 0
        self.total = 0
        self.recent = deque(maxlen=20)

    def add(self, decoded: dict, seq: int, index: int) -> None:
        if "direction" not in decoded:
            return
        frame = self.source.first_frame + index
        trial, within = divmod(frame, TRIAL_FRAMES)
        trial_start = index - within  # in this pass
        key = (seq // self.source.dff.shape[0], trial)
        if (not STIMULUS_FRAMES - 1 <= within < STIMULUS_FRAMES + DECODE_LATE_FRAMES
                or trial_start < SCORE_FROM_STREAM_FRAME or key == self.last_scored):
            return
        self.last_scored = key
        hit = float(decoded["direction"]) == float(self.source.directions[trial])
        self.correct += hit
        self.total += 1
        self.recent.append(hit)

    @property
    def chance(self) -> float:
        return 1.0 / len(set(self.source.directions.tolist()))


class LatencyRing:
    """The most recent ``capacity`` latencies (ms) in a preallocated ring."""

    def __init__(self, capacity: int):
        self.values = np.empty(capacity)
        self.seen = 0

    def add(self, ms: float) -> None:
        self.values[self.seen % self.values.size] = ms
        self.seen += 1

    def recent(self, count: int | None = None) -> np.ndarray:
        """The last ``count`` (default: all kept) latencies, oldest first (a new array)."""
        kept = min(self.seen, self.values.size if count is None else count, self.values.size)
        return self.values[np.arange(self.seen - kept, self.seen) % self.values.size]


def latency_percentiles(values: np.ndarray) -> tuple[float, float, float]:
    """(p50, p99, p99.9) of ``values``."""
    from rtcalm.stats.percentile import percentile

    p50, p99, p999 = percentile(values, [50, 99, 99.9])
    return float(p50), float(p99), float(p999)


class SessionView:
    """What the demo shows of one stream."""

    def __init__(self, source: Source, horizon: int):
        self.source = source
        self.sender = None  # the stream's RigSender, once it streams
        self.skill = StreamSkill(source, horizon)
        self.decoding: DirectionScore | None = None  # with the demo head loaded
        self.head_note = ""  # why no head decodes, or that one waits for its first prediction
        self.latencies = LatencyRing(KEPT_LATENCIES)
        self.predictions = 0
        self.folded = 0
        self.errors = 0
        self.last_error = ""
        self.decoded: dict = {}
        self.shown: float | None = None  # simulated rig: the direction on screen at the latest answered frame

    def record(self, message, received_ns: int) -> None:
        """A prediction for this stream, received at ``received_ns`` (time.time_ns())."""
        source = self.source
        # RigSender stamps t_acq_ns with time.time_ns() as it sends, on this machine's clock: the closed
        # loop from the rig's send to this process holding the prediction.
        self.latencies.add((received_ns - message.t_acq_ns) / 1e6)
        self.predictions += 1
        self.folded += message.folded
        self.decoded = message.decoded
        index = message.seq % source.dff.shape[0]  # position in the current pass of the recording
        self.skill.add(message.seq, message.forecast if message.stream_frame >= SCORE_FROM_STREAM_FRAME else None)
        if self.decoding is not None:
            self.decoding.add(message.decoded, message.seq, index)
        if source.directions is not None:
            self.shown = shown_direction(source.first_frame + index, source.directions)

    def error(self, code: str, message: str) -> None:
        self.errors += 1
        self.last_error = f"{code}: {message}"
