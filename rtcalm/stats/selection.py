"""Thresholds on skewness and kurtosis, and the predictable / unpredictable split (POYO-CAP).

A neuron is *predictable* when its skewness and its excess kurtosis are both at or below their
thresholds: its ΔF/F is close to symmetric and thin-tailed, as opposed to sparse and bursting. A
neuron whose statistics are undefined (constant trace, too few values) is not predictable.

Thresholds come from one of two sources:

- ``"poyo-cap"``: the published POYO-CAP values, skewness <= 3.51 and kurtosis <= 22.62 (knee of the
  per-Cre-line means over 13 Allen Brain Observatory lines).
- ``"knee"``: Kneedle (Satopaa et al. 2011, via ``kneed``) on the values sorted in ascending order,
  one point per neuron, or one point per Cre line (the line's mean, as POYO-CAP does) when enough
  lines are known. Sorted ascending, a right-tailed statistic is a convex, increasing curve: flat
  while neurons are near-Gaussian, then rising steeply through the heavy-tailed ones, so
  ``curve="convex", direction="increasing"`` and the knee value is where the tail starts. kneed
  reports every knee candidate; we keep the most pronounced one (largest normalised distance below the
  chord from the first to the last point, Kneedle's own score). kneed's default, the first candidate,
  lands on a jag in the sparse far tail when there are hundreds of neurons.

When the knee cannot be found (too few points, a flat distribution, no candidate) the threshold falls
back to the POYO-CAP value; every threshold records the method that produced it and why it fell back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from rtcalm.stats.errors import StatsError

POYO_CAP_SKEWNESS = 3.51
POYO_CAP_KURTOSIS = 22.62
MIN_NEURONS_FOR_KNEE = 10
MIN_LINES_FOR_KNEE = 5
THRESHOLD_METHODS = ("knee", "poyo-cap")
KNEE_OVER = ("auto", "neurons", "cre-lines")


@dataclass(frozen=True)
class Threshold:
    value: float
    method: str  # "knee over neurons", "knee over cre lines" or "poyo-cap preset"
    fallback: str | None = None  # why the requested method was not used, if it was not

    def to_dict(self) -> dict:
        return {"value": self.value, "method": self.method, "fallback": self.fallback}


@dataclass(frozen=True)
class Thresholds:
    skewness: Threshold
    kurtosis: Threshold
    requested: str  # the method asked for: "knee" or "poyo-cap"
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"requested": self.requested, "skewness": self.skewness.to_dict(),
                "kurtosis": self.kurtosis.to_dict(), "notes": list(self.notes)}


POYO_CAP = Thresholds(Threshold(POYO_CAP_SKEWNESS, "poyo-cap preset"),
                      Threshold(POYO_CAP_KURTOSIS, "poyo-cap preset"), requested="poyo-cap")


@dataclass(frozen=True)
class KneeResult:
    value: float | None  # the knee's y value, or None when there is no knee
    reason: str | None = None  # why there is no knee


def sorted_knee(values, *, min_points: int = MIN_NEURONS_FOR_KNEE) -> KneeResult:
    """Knee of ``values`` sorted ascending (Kneedle, convex increasing); NaNs are ignored."""
    from kneed import KneeLocator  # imported here: only selection needs it

    values = np.asarray(values, dtype=np.float64).ravel()
    y = np.sort(values[np.isfinite(values)])
    if y.size < max(min_points, 3):
        return KneeResult(None, f"too few values for a knee ({y.size} < {max(min_points, 3)})")
    spread = y[-1] - y[0]
    if not spread > 1e-9 * max(1.0, abs(y[-1])):
        return KneeResult(None, f"flat distribution (all values within {spread:.3g})")
    x = np.arange(y.size, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kneed warns "no knee found"; we report that ourselves
        locator = KneeLocator(x, y, curve="convex", direction="increasing", online=True)
    candidates = sorted({int(c) for c in locator.all_knees})
    if not candidates:
        return KneeResult(None, "kneed found no knee")
    # Kneedle's score for a convex increasing curve: how far the normalised curve lies below the chord.
    x_norm = x / x[-1]
    y_norm = (y - y[0]) / spread
    best = max(candidates, key=lambda i: (x_norm[i] - y_norm[i], -i))
    return KneeResult(float(y[best]))


def choose_thresholds(skewness, kurtosis, *, method: str = "knee", cre_lines=None, knee_over: str = "auto",
                      min_neurons: int = MIN_NEURONS_FOR_KNEE, min_lines: int = MIN_LINES_FOR_KNEE) -> Thresholds:
    """Thresholds for ``skewness`` and ``kurtosis`` (one value per neuron).

    ``cre_lines``: one label per neuron (``None`` where unknown). With ``knee_over="auto"`` the knee is
    taken over per-line means when at least ``min_lines`` lines are known, otherwise over neurons.
    """
    if method not in THRESHOLD_METHODS:
        raise StatsError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    if knee_over not in KNEE_OVER:
        raise StatsError(f"unknown knee_over {knee_over!r}; choose one of {', '.join(KNEE_OVER)}")
    skewness, kurtosis = _per_neuron_pair(skewness, kurtosis)
    if method == "poyo-cap":
        return POYO_CAP

    notes = []
    over = "neurons"
    if knee_over in ("auto", "cre-lines"):
        table = line_table(skewness, kurtosis, cre_lines) if cre_lines is not None else []
        if len(table) >= min_lines:
            over = "cre lines"
        else:
            why = ("no Cre-line metadata" if not table
                   else f"only {len(table)} Cre line{'s' if len(table) != 1 else ''} known (< {min_lines})")
            notes.append(f"knee over neurons: {why}")
    if over == "cre lines":
        points = {name: np.array([row[name] for row in table]) for name in ("mean_skewness", "mean_kurtosis")}
        skew_knee = sorted_knee(points["mean_skewness"], min_points=min_lines)
        kurt_knee = sorted_knee(points["mean_kurtosis"], min_points=min_lines)
    else:
        skew_knee = sorted_knee(skewness, min_points=min_neurons)
        kurt_knee = sorted_knee(kurtosis, min_points=min_neurons)
    method_name = f"knee over {over}"
    return Thresholds(_or_preset(skew_knee, POYO_CAP_SKEWNESS, method_name),
                      _or_preset(kurt_knee, POYO_CAP_KURTOSIS, method_name),
                      requested="knee", notes=tuple(notes))


def _or_preset(knee: KneeResult, preset: float, method_name: str) -> Threshold:
    if knee.value is not None:
        return Threshold(knee.value, method_name)
    return Threshold(preset, "poyo-cap preset", fallback=f"{method_name}: {knee.reason}; used the POYO-CAP value")


def line_table(skewness, kurtosis, cre_lines) -> list[dict]:
    """Per-Cre-line neuron count and mean skewness/kurtosis (over neurons where both are defined),
    sorted by line name. Neurons with no line are left out."""
    skewness, kurtosis = _per_neuron_pair(skewness, kurtosis)
    labels = np.asarray([None if c is None else str(c) for c in cre_lines], dtype=object)
    if labels.shape != skewness.shape:
        raise StatsError(f"{labels.shape[0]} Cre-line labels for {skewness.shape[0]} neurons")
    defined = np.isfinite(skewness) & np.isfinite(kurtosis)
    rows = []
    for line in sorted({c for c in labels if c is not None}):
        members = (labels == line) & defined
        if members.any():
            rows.append({"cre_line": line, "neurons": int(members.sum()),
                         "mean_skewness": float(skewness[members].mean()),
                         "mean_kurtosis": float(kurtosis[members].mean())})
    return rows


@dataclass
class Selection:
    """The predictable / unpredictable split of a set of neurons."""

    thresholds: Thresholds
    predictable: np.ndarray  # bool per neuron
    undefined: np.ndarray  # bool per neuron: skewness or kurtosis is NaN (never predictable)
    lines: list[dict] = field(default_factory=list)  # line_table rows plus "predictable" per line

    @property
    def n_neurons(self) -> int:
        return int(self.predictable.size)

    def summary(self) -> dict:
        n = self.n_neurons
        n_pred = int(self.predictable.sum())
        return {"neurons": n, "predictable": n_pred, "unpredictable": n - n_pred,
                "undefined": int(self.undefined.sum()),
                "fraction_predictable": (n_pred / n) if n else None}


def is_predictable(skewness, kurtosis, thresholds: Thresholds) -> np.ndarray:
    """True where both statistics are defined and at or below their thresholds."""
    skewness, kurtosis = _per_neuron_pair(skewness, kurtosis)
    with np.errstate(invalid="ignore"):
        return (skewness <= thresholds.skewness.value) & (kurtosis <= thresholds.kurtosis.value)


def select_predictable(skewness, kurtosis, *, method: str = "knee", cre_lines=None, knee_over: str = "auto",
                       min_neurons: int = MIN_NEURONS_FOR_KNEE, min_lines: int = MIN_LINES_FOR_KNEE) -> Selection:
    """Choose thresholds (see :func:`choose_thresholds`) and split the neurons with them."""
    skewness, kurtosis = _per_neuron_pair(skewness, kurtosis)
    thresholds = choose_thresholds(skewness, kurtosis, method=method, cre_lines=cre_lines, knee_over=knee_over,
                                   min_neurons=min_neurons, min_lines=min_lines)
    lines = line_table(skewness, kurtosis, cre_lines) if cre_lines is not None else []
    for row in lines:
        row["predictable"] = bool(row["mean_skewness"] <= thresholds.skewness.value
                                  and row["mean_kurtosis"] <= thresholds.kurtosis.value)
    return Selection(thresholds=thresholds, predictable=is_predictable(skewness, kurtosis, thresholds),
                     undefined=~(np.isfinite(skewness) & np.isfinite(kurtosis)), lines=lines)


def _per_neuron_pair(skewness, kurtosis) -> tuple[np.ndarray, np.ndarray]:
    try:
        skewness = np.asarray(skewness, dtype=np.float64)
        kurtosis = np.asarray(kurtosis, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"skewness and kurtosis must be numeric arrays ({exc})") from None
    if skewness.ndim != 1 or skewness.shape != kurtosis.shape:
        raise StatsError(f"skewness and kurtosis must be 1-D and of equal length, got shapes "
                         f"{skewness.shape} and {kurtosis.shape}")
    return skewness, kurtosis
