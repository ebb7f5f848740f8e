"""Numba kernels of the trigger rules: every rule's value, then every rule's gate, one compiled pass each.

A rule's value reduces a neuron set of one frame (the current one, or a forecast frame) to a number;
a forecast rule takes the most extreme of those over its window of future frames (the maximum for
``above``, the minimum for ``below``): "will the activity rule's value cross within frames a..b?".
Missing values (NaN) are skipped; a set with no valid value gives NaN, which never satisfies a rule.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, error_model="numpy")

# rule kinds, neuron-set modes, reductions, gate outcomes (the codes RuleSet compiles specs into)
ACTIVITY, FORECAST, DECODED = 0, 1, 2
ALL, PREDICTABLE, INDICES = 0, 1, 2
MEAN, MAX, COUNT_ABOVE = 0, 1, 2
QUIET, FIRED, REFRACTORY, RATE_LIMIT = 0, 1, 2, 3


@njit(inline="always", **_JIT)
def _set_size(mode, lo, hi, n_neurons):
    return hi - lo if mode == INDICES else n_neurons


@njit(inline="always", **_JIT)
def _neuron_at(j, mode, idx, lo, predictable):
    """The j-th neuron of a rule's set, or -1 where the predictable mask leaves it out."""
    if mode == INDICES:
        return idx[lo + j]
    if mode == PREDICTABLE and predictable[j] == 0:
        return -1
    return j


@njit(**_JIT)
def _reduce(x, mode, idx, lo, hi, predictable, reduce, level):
    """``reduce`` over the neuron set of the 1-D ``x`` (NaN skipped; NaN when nothing is valid)."""
    total = 0.0
    count = 0
    extreme = np.nan
    above = 0
    for j in range(_set_size(mode, lo, hi, x.shape[0])):
        i = _neuron_at(j, mode, idx, lo, predictable)
        if i < 0:
            continue
        v = x[i]
        if v != v:
            continue
        count += 1
        total += v
        if extreme != extreme or v > extreme:
            extreme = v
        if v > level:
            above += 1
    if count == 0:
        return np.nan
    if reduce == MEAN:
        return total / count
    if reduce == MAX:
        return extreme
    return float(above)


@njit(**_JIT)
def _reduce_window(future, first, last, mode, idx, lo, hi, predictable, reduce, level, sign, total, count, extreme,
                   above):
    """The forecast rule's value: ``reduce`` over the neuron set of each forecast frame ``first..last``,
    then the most extreme of those in the rule's direction. Neurons are the outer loop, so each neuron's
    forecast row is read once, contiguously; ``total`` .. ``above`` are per-frame scratch (horizon,)."""
    for step in range(first, last + 1):
        total[step] = 0.0
        count[step] = 0
        extreme[step] = np.nan
        above[step] = 0
    for j in range(_set_size(mode, lo, hi, future.shape[0])):
        i = _neuron_at(j, mode, idx, lo, predictable)
        if i < 0:
            continue
        row = future[i]
        # one branch-free inner loop per reduction (the hot part at thousands of neurons)
        if reduce == MEAN:
            for step in range(first, last + 1):
                v = row[step]
                valid = v == v
                total[step] += v if valid else 0.0
                count[step] += valid
        elif reduce == MAX:
            for step in range(first, last + 1):
                v = row[step]
                if v > extreme[step] or (v == v and extreme[step] != extreme[step]):
                    extreme[step] = v
        else:
            for step in range(first, last + 1):
                v = row[step]
                count[step] += v == v
                above[step] += v > level
    best = np.nan
    for step in range(first, last + 1):
        if reduce == MAX:
            v = extreme[step]  # NaN when no neuron had a value
        elif count[step] == 0:
            continue
        elif reduce == MEAN:
            v = total[step] / count[step]
        else:
            v = float(above[step])
        if v == v and (best != best or sign * (v - best) > 0.0):
            best = v
    return best


@njit(**_JIT)
def rule_values(kind, use_z, mode, idx, offsets, reduce, level, first, last, sign, forecasts_valid,
                dff, z, forecast_dff, forecast_z, predictable, values, total, count, extreme, above):
    """Write every activity and forecast rule's value into ``values`` (decoded rules are left as they
    are: their values come from the heads' outputs). ``forecasts_valid``: False while the model's
    receptive field is not full (forecast values are then NaN). ``total`` .. ``above``: scratch of the
    forecast's horizon."""
    for r in range(kind.shape[0]):
        k = kind[r]
        if k == DECODED:
            continue
        lo, hi = offsets[r], offsets[r + 1]
        if k == ACTIVITY:
            current = z if use_z[r] else dff
            values[r] = _reduce(current, mode[r], idx, lo, hi, predictable, reduce[r], level[r])
        elif not forecasts_valid:
            values[r] = np.nan
        else:
            future = forecast_z if use_z[r] else forecast_dff
            values[r] = _reduce_window(future, first[r], last[r], mode[r], idx, lo, hi, predictable, reduce[r],
                                       level[r], sign[r], total, count, extreme, above)


@njit(**_JIT)
def gate(values, threshold, sign, min_frames, refractory_frames, token_rate, token_cap, armed, held,
         streak, last_fire, tokens, clock, elapsed, outcome, events):
    """Advance every rule's gate by one evaluated frame at ``clock`` (frames consumed since the rules were
    loaded; ``elapsed`` of them since the previous evaluation). A rule *triggers* on the frame where its
    condition has held for exactly ``min_frames`` consecutive evaluated frames (once per crossing); it
    then fires, unless it is disarmed (nothing happens), within its refractory period or out of rate
    tokens (suppressed). ``held[r]``: the rule may not evaluate now (its streak restarts). Writes each
    rule's ``outcome`` and the indices of the rules that fired or were suppressed into ``events``;
    returns how many."""
    n_events = 0
    for r in range(values.shape[0]):
        outcome[r] = QUIET
        if token_rate[r] > 0.0:
            tokens[r] = min(token_cap[r], tokens[r] + token_rate[r] * elapsed)
        v = values[r]
        if held[r] or not (sign[r] * (v - threshold[r]) > 0.0):  # NaN compares False: never holds
            streak[r] = 0
            continue
        streak[r] += 1
        if streak[r] != min_frames[r] or not armed[r]:
            continue
        if clock - last_fire[r] < refractory_frames[r]:
            outcome[r] = REFRACTORY
        elif token_rate[r] > 0.0 and tokens[r] < 1.0:
            outcome[r] = RATE_LIMIT
        else:
            outcome[r] = FIRED
            last_fire[r] = clock
            if token_rate[r] > 0.0:
                tokens[r] -= 1.0
        events[n_events] = r
        n_events += 1
    return n_events
