"""The decoder the daemon serves: time-resolved heads chosen by inner cross-validation on features read
off the daemon's own per-frame path, averaged, fitted, and scored on held-out trials.

The candidates are time-resolved heads (:class:`rtcalm.model.heads.TimeResolvedHead`) on

- ``raw``: the ΔF/F frames as the daemon receives them;
- ``backbone``: the model's hidden state, projected per neuron on its first principal axis (fitted on
  the training trials, label-free);
- ``both``: the two side by side;

each with 1, 2, 4 or 8 time bins of the response window (nested: the edges of n bins are among those of
2n, :func:`rtcalm.model.heads.linear.nested_bin_sizes`, so an average of them has at most 8 bins), read
out by Ledoit-Wolf shrinkage LDA (classification) or ridge with alpha by inner CV (regression). ``features="auto"`` lets every kind
compete; one kind restricts the candidates to it. The inner CV (4 folds, stratified for classification,
:func:`rtcalm.eval.linear.inner_splits`; each candidate's score averaged over :data:`INNER_REPEATS` fold
assignments) sees only the trials it is given.

What is served is the **average of every candidate within one standard error of the best inner-CV
score** (:func:`rtcalm.model.heads.average_heads`: the mean of their logits, itself one time-resolved
head, so the daemon streams it at the cost of one). With ~100 trials the candidates' inner-CV scores
differ by less than their standard error (binomial over the trials for accuracy; for R², the bootstrap of
:func:`rtcalm.eval.linear.standard_error` on the best candidate's inner predictions), so picking the single
best is partly picking by chance, and the pick changes from fold to fold. Breiman's one-standard-error
rule keeps the simplest candidate in that band; averaging the band keeps every candidate's evidence
instead (tools/served_rules.py compares the rules on the grating mice: docs/results.md). A band of one is
the single best candidate.

:class:`ServedDecoder` is decode-eval's ``served`` row: per outer fold, the choice and the fit on the
training trials only, the prediction on the test trials, exactly what ``rtcalm fit-head`` would have
written had it been given only the training trials. :func:`fit_served_head` is ``fit-head``'s final fit
on every trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rtcalm.eval.calibration import Calibration, Windows
from rtcalm.eval.linear import BIN_COUNTS, penalties

# One principal component per neuron (docs/results.md, issue 14: more decode worse at ~100 trials), so every
# kind offers the inner CV the same number of candidates: the best of more candidates is the more
# optimistic inner-CV score, which would favour a kind for having more of them.
BACKBONE_COMPONENTS = (1,)
FEATURE_CHOICES = ("auto", "raw", "backbone", "both")
# Inner fold assignments averaged per candidate score: with ~100 trials one assignment's score varies by
# several points between assignments, enough to pick a kind by chance.
INNER_REPEATS = 3


@dataclass(frozen=True)
class Candidate:
    features: str  # raw | backbone | both
    components: int  # 0 for raw
    bins: int
    penalty: float | None  # ridge alpha; None for LDA

    def describe(self) -> str:
        parts = [self.features]
        if self.components:
            parts.append(f"{self.components} component{'s' if self.components > 1 else ''}")
        parts.append(f"{self.bins} bin{'s' if self.bins > 1 else ''}")
        if self.penalty is not None:
            parts.append(f"alpha {self.penalty:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Choice:
    """The candidates within ``band`` (one standard error) of the best inner-CV score ``best_score``,
    simplest first, every usable candidate's inner-CV score, and the principal axes their backbone features
    were projected on."""
    members: tuple[Candidate, ...]
    scores: dict  # Candidate -> inner-CV score, every usable candidate (the members among them)
    best_score: float
    band: float
    projection: tuple | None

    @property
    def features(self) -> str:
        """What the averaged head reads: raw, backbone or both."""
        raw = any(m.features in ("raw", "both") for m in self.members)
        backbone = any(m.features in ("backbone", "both") for m in self.members)
        return "both" if raw and backbone else ("raw" if raw else "backbone")

    def record(self) -> dict:
        """JSON-ready: the averaged head's features, the best score, the band and every member."""
        return {"features": self.features, "inner_cv": self.best_score, "band": self.band,
                "members": [{**asdict(m), "inner_cv": self.scores[m]} for m in self.members]}

    def describe(self) -> str:
        if len(self.members) == 1:
            return self.members[0].describe()
        return (f"{self.features}, the average of {len(self.members)} heads within one standard error "
                f"({self.band:.3f}) of the best: " + "; ".join(m.describe() for m in self.members))


def candidates(features: str, metric: str, window_frames: int, d_model: int,
               bin_counts: Sequence[int] = BIN_COUNTS) -> list[Candidate]:
    """Every candidate of ``features`` (auto: all kinds), simplest first."""
    if features not in FEATURE_CHOICES:
        raise ValueError(f"features must be one of {', '.join(FEATURE_CHOICES)}, got {features!r}")
    kinds = ("raw", "backbone", "both") if features == "auto" else (features,)
    estimator = "lda" if metric == "accuracy" else "ridge"
    found = []
    for kind in kinds:
        for components in ((0,) if kind == "raw" else tuple(k for k in BACKBONE_COMPONENTS if k <= d_model)):
            for bins in (b for b in bin_counts if b <= window_frames):
                for penalty in penalties(estimator):
                    found.append(Candidate(kind, components, bins, penalty))
    return found


class ServedDecoder:
    """fit_predict(train, test) of the served head on a calibration's streamed windows; ``selected``
    records each call's choice (with its inner-CV score)."""

    def __init__(self, cal: Calibration, windows: Windows, features: str = "auto", seed: int = 0,
                 window_frames: int | None = None, repeats: int = INNER_REPEATS):
        self.cal, self.features, self.seed, self.repeats = cal, features, seed, repeats
        self.windows = windows if window_frames is None else windows.until(window_frames)
        self.window_frames = self.windows.dff.shape[1]
        self.targets = cal.data.targets
        self.metric = cal.data.metric
        self.candidates = candidates(features, self.metric, self.window_frames, self.windows.hidden.shape[-1])
        self.selected: list[dict] = []

    # --- per-fold pieces ---
    def _config(self, candidate: Candidate, name: str = "task"):
        from rtcalm.model.heads import TimeResolvedConfig
        from rtcalm.model.heads.linear import nested_bin_sizes

        cal = self.cal
        return TimeResolvedConfig(name=name, kind="classification" if cal.classification else "regression",
                                  n_neurons=cal.n_neurons, d_model=self.windows.hidden.shape[-1],
                                  window_frames=self.window_frames, n_bins=candidate.bins,
                                  components=candidate.components, classes=list(cal.classes),
                                  features=candidate.features,
                                  bin_sizes=nested_bin_sizes(self.window_frames, candidate.bins))

    def _projection(self, train: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        from rtcalm.model.heads.linear import principal_projection

        widest = max((c.components for c in self.candidates), default=0)
        return principal_projection(self.windows.hidden[train], widest) if widest else None

    def _binned(self, train: np.ndarray, projection) -> dict[tuple[str, int, int], np.ndarray]:
        """Every candidate's binned features of every trial, from the head's own frame features (with the
        training trials' principal axes)."""
        import torch

        from rtcalm.model.heads import TimeResolvedHead
        from rtcalm.model.heads.fitting import window_features
        from rtcalm.model.heads.linear import nested_bin_sizes, time_binned

        binned = {}
        for kind, components in dict.fromkeys((c.features, c.components) for c in self.candidates):
            head = TimeResolvedHead(self._config(Candidate(kind, components, 1, None)))
            if components:
                with torch.no_grad():
                    head.projection_mean.copy_(torch.from_numpy(projection[0]))
                    head.projection.copy_(torch.from_numpy(projection[1][:, :components]))
            per_frame = window_features(head, self.windows.dff if head.config.uses_raw else None,
                                        self.windows.hidden if head.config.uses_backbone else None)
            for bins in dict.fromkeys(c.bins for c in self.candidates if (c.features, c.components) == (kind, components)):
                binned[kind, components, bins] = time_binned(per_frame, bins,
                                                               nested_bin_sizes(self.window_frames, bins))
        return binned

    def scores(self, train: np.ndarray, projection) -> dict[Candidate, tuple[float, np.ndarray]]:
        """Every usable candidate's inner-CV score on the trials ``train`` (the pooled score over the
        validation folds, averaged over ``repeats`` inner fold assignments, seeds ``seed``, ``seed + 1``...)
        and its pooled validation predictions of the first assignment."""
        from rtcalm.eval.linear import inner_splits, make_estimator, score

        binned = self._binned(train, projection)
        targets = self.targets[train]
        estimator = "lda" if self.metric == "accuracy" else "ridge"
        assignments = [inner_splits(targets, self.metric, seed=self.seed + r) for r in range(self.repeats)]
        found = {}
        for candidate in self.candidates:
            x = binned[candidate.features, candidate.components, candidate.bins][train]
            if np.ptp(x, axis=0).max() <= 1e-5 * (1.0 + np.abs(x).max()):
                continue  # nothing varies across trials beyond float32 rounding (a backbone blind to its input)
            total, finite, first = 0.0, True, None
            for splits in assignments:
                predictions = np.empty(targets.shape[0], dtype=np.float64)
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    for inner_train, validation in splits:
                        model = make_estimator(estimator, candidate.penalty).fit(x[inner_train], targets[inner_train])
                        finite &= bool(np.isfinite(getattr(model, "coef_", 0.0)).all())
                        predictions[validation] = model.predict(x[validation])
                finite &= bool(np.isfinite(predictions).all())
                total += score(predictions, targets, self.metric)
                first = predictions if first is None else first
            if finite:  # else a degenerate fit (features that do not vary within the classes): not a candidate
                found[candidate] = (total / self.repeats, first)
        return found

    def choose(self, train: np.ndarray) -> Choice:
        """The candidates within one standard error of the best inner-CV score on the trials ``train``."""
        from rtcalm.eval.linear import standard_error

        projection = self._projection(train)
        found = self.scores(train, projection)
        if not found:  # nothing varies across the trials: the simplest candidate, as before
            return Choice((self.candidates[0],), {self.candidates[0]: float("-inf")}, float("-inf"), 0.0, projection)
        best = max(found, key=lambda c: found[c][0])  # the first (simplest) of equal scores
        best_score, best_predictions = found[best]
        targets = self.targets[train]
        if self.metric == "accuracy":
            band = float(np.sqrt(max(best_score * (1.0 - best_score), 0.0) / len(train)))
        else:
            band = standard_error(best_predictions, targets, self.metric)
            band = band if np.isfinite(band) else 0.0
        members = [c for c in self.candidates if c in found and found[c][0] >= best_score - band - 1e-12]
        scores = {c: float(score) for c, (score, _predictions) in found.items()}
        return Choice(tuple(members), scores, float(best_score), band, projection)

    def fit(self, train: np.ndarray, choice: Choice, name: str = "task"):
        """The average of the choice's heads, each fitted on the trials ``train``."""
        from rtcalm.model.heads import average_heads, fit_time_resolved_head

        heads = []
        for candidate in choice.members:
            config = self._config(candidate, name)
            heads.append(fit_time_resolved_head(
                config, self.cal.target_values()[train],
                dff=self.windows.dff[train] if config.uses_raw else None,
                hidden=self.windows.hidden[train] if config.uses_backbone else None,
                alpha=candidate.penalty, projection=choice.projection if candidate.components else None))
        return average_heads(heads)

    def predict(self, head, test: np.ndarray) -> np.ndarray:
        """What the head decodes at the last frame of each test trial's window: class indices or values."""
        import torch

        dff = torch.from_numpy(self.windows.dff[test]) if head.config.uses_raw else None
        hidden = torch.from_numpy(self.windows.hidden[test]) if head.config.uses_backbone else None
        with torch.inference_mode():
            logits = head.window_logits(dff, hidden).numpy()
        return logits.argmax(axis=1) if self.cal.classification else logits[:, 0].astype(np.float64)

    def __call__(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        choice = self.choose(train)
        self.selected.append(choice.record())
        return self.predict(self.fit(train, choice), test)


def fit_served_head(cal: Calibration, windows: Windows, *, name: str, features: str = "auto", seed: int = 0):
    """``rtcalm fit-head``'s head: the candidates chosen by inner CV on every trial, each fitted on every
    trial, averaged. Returns (head, the :class:`Choice`)."""
    decoder = ServedDecoder(cal, windows, features, seed)
    every = np.arange(len(cal.onsets))
    choice = decoder.choose(every)
    return decoder.fit(every, choice, name), choice


def decode_frames(engine, frames: np.ndarray, head_paths: Sequence[str], config=None) -> list[dict]:
    """Every frame's ``decoded`` map as the daemon would publish it, the heads at ``head_paths`` loaded (as
    ``load_head`` loads them) into one session whose frames are ``frames`` (ΔF/F at the model's rate,
    one at a time, in order): :class:`rtcalm.daemon.offline.OfflineStream`."""
    from rtcalm.daemon.offline import OfflineStream

    stream = OfflineStream(engine, frames.shape[1], config=config)
    for path in head_paths:
        stream.load_head(str(path))
    decoded = []
    for frame in frames:
        stream.push(frame)
        decoded.append(stream.decoded)
    return decoded


class StreamedCalibrations:
    """Each recording's calibration and streamed windows, computed once (the latest ``max_cached`` files)
    and shared by every fold seed and every ``--timecourse`` point."""

    def __init__(self, engine, task: str, config=None, response_end_s: float = 2.0, max_cached: int = 8,
                 trial_order: str = "shuffled"):
        self.engine, self.task, self.config, self.trial_order = engine, task, config, trial_order
        self.response_end_s, self.max_cached = response_end_s, max_cached
        self._cache: dict[str, tuple[Calibration, Windows]] = {}

    def __call__(self, recording) -> tuple[Calibration, Windows]:
        from rtcalm.eval.calibration import calibration, stream_windows

        key = recording.meta.source or str(id(recording))
        if key not in self._cache:
            while len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            cal = calibration([recording], self.task, self.engine.rate_hz, response_end_s=self.response_end_s,
                              trial_order=self.trial_order)
            self._cache[key] = (cal, stream_windows(self.engine, cal, self.config))
        return self._cache[key]


def served_decoder(streamed: StreamedCalibrations, features: str = "auto", seed: int = 0,
                   available_s: float | None = None):
    """decode-eval's ``served`` row as a fold decoder (:data:`rtcalm.eval.decode.FoldDecoderFactory`):
    what ``rtcalm fit-head --features FEATURES`` serves, chosen and fitted inside each outer fold;
    ``available_s``: from the frames up to that long after the onset only (``--timecourse``)."""

    def factory(recording, data) -> ServedDecoder:
        cal, windows = streamed(recording)
        if not np.array_equal(cal.data.targets, data.targets):
            raise AssertionError("the calibration's targets differ from decode-eval's")
        frames = None if available_s is None else cal.window_frames_until(available_s)
        return ServedDecoder(cal, windows, features, seed, window_frames=frames)

    return factory
