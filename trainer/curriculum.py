"""POYO-CAP's neuron curriculum for stage 2: which neurons the training crops draw from, step by step.

Every training neuron is labelled predictable or not with ``rtcalm.stats``: skewness and excess kurtosis
over its whole recording, thresholds chosen once over all training neurons together (``knee``: Satopaa
knees of the sorted values, or ``poyo-cap``: the paper's published 3.51 / 22.62), a neuron being
predictable when it is at or under both. Regimes (``transformer.neuron_curriculum``):

    mixed               all neurons, every step (the default)
    curriculum          predictable neurons for the first first_phase_fraction of the steps, then the
                        unpredictable ones (POYO-CAP: pretrain on the regular, fine-tune on the rest)
    reverse             unpredictable first, then predictable
    unpredictable_only  the curriculum's second phase alone, from a fresh model: the "from scratch" row,
                        with the same fine-tuning steps and no pretraining phase before them

One learning-rate schedule spans the run's steps; the phases only change which neurons are sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtcalm.stats import select_predictable, stats_of_epochs
from trainer.config import TransformerStage


@dataclass
class Phase:
    name: str  # "all" | "predictable" | "unpredictable"
    first_step: int  # the phase runs from this step to the next phase's first step (or the end)
    neurons: list[np.ndarray] | None  # per training session: the neuron indices crops may use; None = all


def first_phase_steps(stage: TransformerStage) -> int:
    return round(stage.steps * stage.first_phase_fraction)


def total_steps(stage: TransformerStage) -> int:
    """Optimizer steps of stage 2: ``steps``, less the skipped first phase for ``unpredictable_only``."""
    if stage.neuron_curriculum == "unpredictable_only":
        return stage.steps - first_phase_steps(stage)
    return stage.steps


def predictable_masks(sessions, thresholds: str) -> tuple[list[np.ndarray], dict]:
    """Per session (in memory or memory-mapped, trainer.data) a bool mask of its predictable neurons, and
    the thresholds / split as a dict."""
    stats = [stats_of_epochs(s.raw_epochs(), s.n_neurons) for s in sessions]
    selection = select_predictable(np.concatenate([st.skewness for st in stats]),
                                   np.concatenate([st.kurtosis for st in stats]), method=thresholds)
    bounds = np.cumsum([0] + [s.n_neurons for s in sessions])
    masks = [selection.predictable[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    report = {"method": thresholds, "skewness": selection.thresholds.skewness.value,
              "kurtosis": selection.thresholds.kurtosis.value, **selection.summary()}
    return masks, report


def training_phases(sessions, stage: TransformerStage) -> tuple[list[Phase], dict | None]:
    """The phases of a run (first_step counts the run's own steps, see :func:`total_steps`) and the
    predictable split they use (None for ``mixed``)."""
    if stage.neuron_curriculum == "mixed":
        return [Phase("all", 0, None)], None
    masks, report = predictable_masks(sessions, stage.predictable_thresholds)
    predictable = [np.flatnonzero(m) for m in masks]
    unpredictable = [np.flatnonzero(~m) for m in masks]
    split = first_phase_steps(stage)
    if stage.neuron_curriculum == "curriculum":
        return [Phase("predictable", 0, predictable), Phase("unpredictable", split, unpredictable)], report
    if stage.neuron_curriculum == "reverse":
        return [Phase("unpredictable", 0, unpredictable), Phase("predictable", split, predictable)], report
    return [Phase("unpredictable", 0, unpredictable)], report  # unpredictable_only


def phase_at(phases: list[Phase], step: int) -> int:
    """Index of the phase that step ``step`` belongs to."""
    return max(i for i, phase in enumerate(phases) if phase.first_step <= step)
