"""Numba kernels behind :class:`rtcalm.stats.StreamingStats`. Private: use that class, which validates
input before anything here changes state.

Layout. All per-neuron accumulators live in one float64 array ``state`` of shape ``(N_ROWS, neurons)``,
one row per quantity (the ``ROW_*`` constants). One 2-D array rather than a dozen 1-D ones matters on
the hot path: the numba dispatcher type-checks every argument on every call (tens of ns each), and
LLVM vectorises the neuron loop over rows of one array but gave up (scalar code, ~5x slower) on a
dozen separate views.

Speed. At 4096 neurons the state (~0.5 MB) lives in L2, so the per-frame cost is set by how many rows
the frame loop reads and writes. That loop (``_add_frame``) touches only rows 0-6:
the moments, the previous value and the sum of squared successive differences. The lag-1
autocorrelation is then recovered exactly from those plus a few statistics of the values where a run
of consecutive valid frames starts or ends (see ``moments.py``). Runs start and end only at missing
values and epoch boundaries, so those rows are updated in a separate, rarely taken pass
(``_record_run_edges``), and with forgetting their decay is applied lazily (``ROW_EDGE_STAMP``).

Update formulas: Pébay (2008), "Formulas for robust, one-pass parallel computation of covariances and
arbitrary-order statistical moments", eqs. 1.1-1.4, written with a general (non-integer) weight ``n_a``
for the old values so that the forgetting mode (every old weight multiplied by ``decay`` before each
frame) uses the same code. With ``decay == 1.0`` the multiplications are exact: plain running
statistics.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EPS = np.finfo(np.float64).eps  # scipy's zero-variance rule: variance <= (EPS * mean)^2 counts as none

# Rows touched by every frame.
ROW_COUNT = 0  # number (with forgetting: total weight) of valid values
ROW_MEAN = 1
ROW_M2 = 2  # sum of squared deviations from the mean
ROW_M3 = 3  # sum of cubed deviations
ROW_M4 = 4  # sum of fourth-power deviations
ROW_PREV = 5  # the previous frame's value; NaN when it was missing or after an epoch boundary
ROW_SQ_DIFF = 6  # sum of (x[t] - x[t-1])**2 over lag-1 pairs (both frames valid, same epoch)
# Rows touched only where a run of consecutive valid values starts or ends (weighted Welford
# accumulators of those edge values), kept up to date lazily with forgetting.
ROW_START_WEIGHT = 7
ROW_START_MEAN = 8
ROW_START_M2 = 9
ROW_END_WEIGHT = 10  # closed runs only; the open run's end is the current ROW_PREV
ROW_END_MEAN = 11
ROW_END_M2 = 12
ROW_EDGE_STAMP = 13  # the edge rows are valid "as of the end of" this frame index
ROW_HEAD = 14  # the first frame's values (to join runs across a contiguous merge)
N_ROWS = 15

# Fused multiply-add is allowed (it only makes results more accurate); everything else stays IEEE, so
# the NaN tests survive ("nnan" fast-math would delete them). error_model="numpy": no ZeroDivisionError
# branch inside the loops, which would stop vectorisation.
_JIT = dict(cache=True, fastmath={"contract"}, error_model="numpy")


@njit(**_JIT)
def count_infinite(values):
    """Number of +-inf entries in a 1-D array (NaN is allowed: it means "missing")."""
    bad = 0
    for i in range(values.shape[0]):
        if np.abs(values[i]) == np.inf:
            bad += 1
    return bad


@njit(**_JIT)
def _scan_frame(state, frame):
    """(number of +-inf values, number of neurons where a run starts or ends with this frame)."""
    infinite = 0
    edges = 0
    for i in range(frame.shape[0]):
        x = frame[i]
        prev = state[ROW_PREV, i]
        if np.abs(x) == np.inf:
            infinite += 1
        if (x == x) != (prev == prev):
            edges += 1
    return infinite, edges


@njit(**_JIT)
def _welford_step(weight, mean, m2, value, value_weight):
    """Weighted Welford: (weight, mean, M2) after adding ``value`` with ``value_weight``."""
    total = weight + value_weight
    delta = value - mean
    new_mean = mean + delta * (value_weight / total)
    return total, new_mean, m2 + value_weight * delta * (value - new_mean)


@njit(**_JIT)
def _decay_factor(decay, frame_index, stamp):
    """Forgetting owed to edge rows last brought up to date at frame ``stamp``."""
    return 1.0 if decay == 1.0 else decay ** (frame_index - stamp)


# The two edge passes below write the state rows inline rather than through small helpers taking the
# state array: numba wraps every such call in reference counting (atomic increments, ~50 ns a call),
# which here would cost more than the work.

@njit(**_JIT)
def _record_run_edges(state, frame, frame_index, decay):
    """Before frame ``frame_index`` is added: record every run that starts (valid after missing) or
    ends (missing after valid) with it. Taken only on frames that have such edges (the first frame,
    the first frame of each epoch, frames with missing values)."""
    # Where the edges are first (a vectorised min/max scan), so that a frame with one missing value
    # costs ~0.3 us instead of a ~3 us scalar walk over every neuron.
    n = frame.shape[0]
    first, last = n, -1
    for i in range(n):
        x = frame[i]
        prev = state[ROW_PREV, i]
        edge = (x == x) != (prev == prev)
        first = min(first, i if edge else n)
        last = max(last, i if edge else -1)
    for i in range(first, last + 1):
        x = np.float64(frame[i])
        prev = state[ROW_PREV, i]
        if (x == x) == (prev == prev):
            continue
        factor = _decay_factor(decay, frame_index, state[ROW_EDGE_STAMP, i])
        state[ROW_EDGE_STAMP, i] = frame_index
        state[ROW_START_WEIGHT, i] *= factor
        state[ROW_START_M2, i] *= factor
        state[ROW_END_WEIGHT, i] *= factor
        state[ROW_END_M2, i] *= factor
        if x == x:  # a run starts here; weight 1 at the end of this frame
            w, mean, m2 = _welford_step(state[ROW_START_WEIGHT, i], state[ROW_START_MEAN, i],
                                        state[ROW_START_M2, i], x, 1.0)
            state[ROW_START_WEIGHT, i] = w
            state[ROW_START_MEAN, i] = mean
            state[ROW_START_M2, i] = m2
        else:  # the run ended on the previous frame, whose weight is one decay older
            w, mean, m2 = _welford_step(state[ROW_END_WEIGHT, i], state[ROW_END_MEAN, i],
                                        state[ROW_END_M2, i], prev, decay)
            state[ROW_END_WEIGHT, i] = w
            state[ROW_END_MEAN, i] = mean
            state[ROW_END_M2, i] = m2


@njit(**_JIT)
def end_runs(state, last_frame_index, decay):
    """Epoch boundary after frame ``last_frame_index``: close every open run and forget the previous
    values so no lag-1 pair spans the boundary."""
    for i in range(state.shape[1]):
        prev = state[ROW_PREV, i]
        if prev != prev:
            continue
        factor = _decay_factor(decay, last_frame_index, state[ROW_EDGE_STAMP, i])
        state[ROW_EDGE_STAMP, i] = last_frame_index
        state[ROW_START_WEIGHT, i] *= factor
        state[ROW_START_M2, i] *= factor
        w, mean, m2 = _welford_step(state[ROW_END_WEIGHT, i] * factor, state[ROW_END_MEAN, i],
                                    state[ROW_END_M2, i] * factor, prev, 1.0)
        state[ROW_END_WEIGHT, i] = w
        state[ROW_END_MEAN, i] = mean
        state[ROW_END_M2, i] = m2
        state[ROW_PREV, i] = np.nan


@njit(**_JIT)
def _add_frame(state, frame, decay):
    """The hot loop: add one frame (NaN = missing) to every neuron's moments and successive-difference
    sum. Branch-free on purpose: a missing value becomes a zero-weight update (its delta is 0, so
    every increment is 0), which lets LLVM vectorise the loop over neurons."""
    for i in range(frame.shape[0]):
        x = np.float64(frame[i])
        valid = x == x
        weight = 1.0 if valid else 0.0

        # Pébay eqs. 1.1-1.4 with n_a = decayed old weight and n_b = weight.
        mean = state[ROW_MEAN, i]
        n_a = state[ROW_COUNT, i] * decay
        m2 = state[ROW_M2, i] * decay
        m3 = state[ROW_M3, i] * decay
        m4 = state[ROW_M4, i] * decay
        n = n_a + weight
        delta = (x if valid else mean) - mean
        delta_n = delta / max(n, 1.0)  # n < 1 only when delta == 0 (nothing seen yet, or decayed)
        delta_n2 = delta_n * delta_n
        term1 = delta * delta_n * n_a
        state[ROW_COUNT, i] = n
        state[ROW_MEAN, i] = mean + delta_n
        state[ROW_M4, i] = m4 + term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * m2 - 4.0 * delta_n * m3
        state[ROW_M3, i] = m3 + term1 * delta_n * (n - 2.0) - 3.0 * delta_n * m2
        state[ROW_M2, i] = m2 + term1

        diff = x - state[ROW_PREV, i]  # NaN unless both this and the previous value are present
        state[ROW_SQ_DIFF, i] = state[ROW_SQ_DIFF, i] * decay + (diff * diff if diff == diff else 0.0)
        state[ROW_PREV, i] = x


@njit(**_JIT)
def update_one(state, frame, frame_index, decay):
    """Hot path: add ``frame`` as frame number ``frame_index``. Returns the number of +-inf values;
    when that is not 0 nothing was changed."""
    infinite, edges = _scan_frame(state, frame)
    if infinite:
        return infinite
    if edges:
        _record_run_edges(state, frame, frame_index, decay)
    _add_frame(state, frame, decay)
    return 0


@njit(**_JIT)
def update_many(state, frames, first_index, decay):
    """Add ``frames`` (time, neurons) in order as one contiguous piece, numbered from ``first_index``.
    Checks every frame first and returns the number of +-inf values; when not 0 nothing was changed."""
    infinite = 0
    for t in range(frames.shape[0]):
        infinite += count_infinite(frames[t])
    if infinite:
        return infinite
    for t in range(frames.shape[0]):
        _, edges = _scan_frame(state, frames[t])
        if edges:
            _record_run_edges(state, frames[t], first_index + t, decay)
        _add_frame(state, frames[t], decay)
    return 0


# No fastmath here: the daemon normalises with these numbers and they must not depend on the compiler.
@njit(cache=True, error_model="numpy")
def scale_into(state, warmup, mean_out, std_out, inv_std_out):
    """Per neuron: float32 mean and std (population std, numpy's ddof=0) of the running statistics in
    ``state``; std and 1/std are NaN unless the neuron has at least ``warmup`` valid values (weight, with
    forgetting) and a positive variance. The mean is written even while a neuron warms up."""
    for i in range(mean_out.shape[0]):
        count = state[ROW_COUNT, i]
        mean_out[i] = np.float32(state[ROW_MEAN, i])
        std = np.sqrt(state[ROW_M2, i] / count) if count > 0.0 else np.nan
        if count >= warmup and std > 0.0:
            std32 = np.float32(std)
            std_out[i] = std32
            inv_std_out[i] = np.float32(1.0) / std32
        else:
            std_out[i] = np.nan
            inv_std_out[i] = np.nan


# The same arithmetic as StreamingStats.snapshot's skewness and kurtosis (and scipy's zero-variance rule),
# so the mask equals is_predictable(snapshot) bit for bit; no fastmath for the same reason as scale_into.
@njit(cache=True, error_model="numpy")
def shape_mask_into(state, skewness_max, kurtosis_max, mask):
    """``mask`` (bool) = skewness <= ``skewness_max`` and kurtosis (excess) <= ``kurtosis_max``, both
    defined (a neuron with no values or no variance is not in it); returns how many are."""
    inside = 0
    for i in range(mask.shape[0]):
        count = state[ROW_COUNT, i]
        mask[i] = False
        if not count > 0.0:
            continue
        mean = state[ROW_MEAN, i]
        m2 = state[ROW_M2, i] / count
        if not m2 > (EPS * mean) ** 2:
            continue
        skewness = (state[ROW_M3, i] / count) / m2 ** 1.5
        kurtosis = (state[ROW_M4, i] / count) / m2 ** 2 - 3.0
        if skewness <= skewness_max and kurtosis <= kurtosis_max:
            mask[i] = True
            inside += 1
    return inside
