"""The daemon's per-frame path for one session, driven by a loop over a recording instead of sockets.

:class:`OfflineStream` runs, for every frame, the objects and calls the daemon runs
(:class:`~rtcalm.daemon.session.Session` for statistics and normalisation, :func:`step_session` for
the model and the decoding heads, :class:`~rtcalm.triggers.ruleset.RuleSet` for the trigger rules,
the predictable mask refreshed on the daemon's schedule), so what it computes is what a daemon would
have computed for the same frames arriving one at a time in order. ``rtcalm trigger-eval`` is built on
it, and so are ``rtcalm fit-head`` (the features a head is fitted on: :meth:`OfflineStream.frame_inputs`)
and ``rtcalm decode`` (a head loaded as the ``load_head`` command loads it: :meth:`OfflineStream.load_head`);
tests/daemon/test_triggers_live.py and tests/daemon/test_fit_serve_live.py hold it to a real daemon fed
through real sockets.
"""

from __future__ import annotations

import numpy as np

from rtcalm.daemon.config import DaemonConfig
from rtcalm.daemon.heads import LoadedHead, read_head
from rtcalm.daemon.pipeline import fold_frames, refresh_due_mask, step_session
from rtcalm.daemon.session import Session
from rtcalm.engine import StepEngine
from rtcalm.triggers.rules import RuleSpec
from rtcalm.triggers.ruleset import RuleSet


class OfflineStream:
    """One session's stream of ``n_neurons`` on ``engine``, with trigger rules ``rules`` (None: none)."""

    def __init__(self, engine: StepEngine, n_neurons: int, *, config: DaemonConfig | None = None,
                 rules: list[RuleSpec] | None = None):
        self.engine = engine
        self.config = config or DaemonConfig()
        self.session = Session("offline", n_neurons, 1, engine, self.config, pinned=True)
        if rules is not None:
            self.session.rules = RuleSet(rules, n_neurons=n_neurons, horizon=engine.horizon, rate_hz=engine.rate_hz,
                                         receptive_field=engine.receptive_field, heads=self.session.heads.classes())
        self.decoded: dict = {}

    def load_head(self, path: str) -> dict:
        """Add the head at ``path`` (its .json) as the daemon's ``load_head`` command does: the same checks
        (ProtocolError for a head that does not fit), a fresh stream state. Returns its description."""
        head = read_head(path, n_neurons=self.session.n_neurons, d_model=self.engine.config.d_model)
        self.session.heads.check_room(head)
        loaded = LoadedHead(head, path)
        self.session.heads.install(loaded)
        if self.session.rules is not None:
            self.session.rules.bind_heads(self.session.heads.classes())
        return loaded.describe()

    def frame_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """What the session's heads were handed for the newest frame: (its hidden state (N, d_model), its
        ΔF/F as received (N,), NaN = missing); buffers valid until the next push."""
        return self.engine.hidden(self.session.model_state), self.session.pending_dff[0]

    def push(self, dff: np.ndarray) -> int:
        """One frame of ΔF/F (N,), NaN = missing, answered as the daemon answers an in-order frame. Returns
        the number of rule events (``self.session.rules.events[:count]``); the forecast in ΔF/F is
        ``self.session.forecast`` and the decoded values ``self.decoded``, until the next push."""
        session = self.session
        if session.pending_full():
            fold_frames(self.engine, session, session.take_pending())
        session.add_frame(dff)
        forecast, self.decoded = step_session(self.engine, session)
        session.scale.denormalise_into(forecast, session.forecast)
        count = 0
        if session.rules is not None:
            count = session.rules.evaluate(stream_frames=session.stream_frames, dff=dff,
                                           z=session.newest_normalised(), forecast_dff=session.forecast,
                                           forecast_z=forecast, predictable=session.predictable,
                                           decoded=self.decoded)
        # what the daemon does after it sends the prediction, and (knee thresholds due) in its housekeeping,
        # which at a rig's pace runs before the next frame arrives
        stats = self.config.stats
        if refresh_due_mask(session, stats) is None and \
                session.stream_frames - session.frames_at_mask >= stats.predictable_refresh_frames:
            session.refresh_predictable(stats.predictable_method, stats.thresholds_refresh_frames)
        return count
