"""Seeded synthetic two-photon recordings for tests, demos and scale tests.

The generative model (per neuron i, frame t, at ``rate_hz``):

- **Shared population dynamics**: ``n_latents`` smooth latent signals z(t) (AR(1) noise with time
  constant ``latent_timescale_s``); every neuron reads them through its own loadings, so other neurons
  carry information about a neuron's future (what a population forecaster can exploit).
- **Drifting-grating schedule**: trials of ``stimulus_s`` seconds of one of ``n_directions`` directions
  followed by ``gray_s`` seconds of gray; a fraction of neurons is direction-tuned (von Mises around a
  preferred direction).
- **Running**: a rectified slow process in cm/s that multiplies every neuron's drive by its own gain.
- **Cell classes** (as in the POYO-CAP summary):
  ``gaussian``: dense, rate-coded activity, near-Gaussian ΔF/F;
  ``regular``: rhythmically firing cells (a per-neuron oscillation at 1-3 Hz) — low skew, predictable;
  ``sparse``: rare bursts (Bernoulli events with geometric burst sizes) — heavy-tailed, high kurtosis.
- **GCaMP-like kernel**: difference of exponentials (rise ``rise_s``, decay ``decay_s``).
- **Noise**: shot noise growing with brightness, plus residual neuropil contamination (a shared slow
  neuropil signal times a per-neuron coefficient).

The whole generator is one numba kernel that walks time once per block of neurons and writes the
``(frames, neurons)`` output in place: 10,000 neurons x 30 min at 30 Hz take seconds on two cores
(and 2.2 GB for the float32 output itself). Results depend only on the config (seed included), not on
the number of threads.

``make_synthetic(cfg, return_raw=True)`` also returns raw ROI fluorescence and the neuropil trace, for
testing the streaming ΔF/F converter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba
import numpy as np

from rtcalm.data.recording import Recording, RecordingMeta, TrialTable

CELL_CLASSES = ("gaussian", "regular", "sparse")
_BLOCK = 64  # neurons per parallel work item; fixed so results do not depend on the thread count


@dataclass
class SyntheticConfig:
    n_neurons: int = 256
    n_frames: int = 9000
    rate_hz: float = 30.0
    seed: int = 0
    n_latents: int = 6
    latent_timescale_s: float = 1.5
    latent_coupling: float = 0.8  # how strongly the shared latents drive each neuron
    fraction_gaussian: float = 0.4
    fraction_regular: float = 0.2  # the rest is "sparse"
    fraction_tuned: float = 0.5
    tuning_strength: float = 1.5  # log-drive at the preferred direction
    tuning_concentration: float = 2.0  # von Mises kappa
    n_directions: int = 8
    stimulus_s: float = 2.0
    gray_s: float = 1.0
    running_gain_std: float = 0.3  # log-drive per (running speed / 10 cm/s)
    rise_s: float = 0.05
    decay_s: float = 0.6
    spike_amplitude: float = 0.3  # ΔF/F peak of one event
    shot_noise: float = 0.03
    neuropil_contamination: float = 0.05
    baseline_fluorescence: float = 100.0  # raw F0 for return_raw
    neuropil_coefficient: float = 0.7  # raw F = F_cell + r * F_neuropil, for return_raw

    def validate(self) -> None:
        if self.n_neurons < 1 or self.n_frames < 2:
            raise ValueError("need at least 1 neuron and 2 frames")
        if not self.rate_hz > 0:
            raise ValueError("rate_hz must be positive")
        if not (0 <= self.fraction_gaussian and 0 <= self.fraction_regular
                and self.fraction_gaussian + self.fraction_regular <= 1):
            raise ValueError("cell-class fractions must be in [0, 1] and sum to at most 1")
        if not 0 <= self.fraction_tuned <= 1:
            raise ValueError("fraction_tuned must be in [0, 1]")
        if self.n_directions < 1 or self.stimulus_s <= 0 or self.gray_s < 0:
            raise ValueError("bad trial schedule")
        if self.rise_s <= 0 or self.decay_s <= self.rise_s:
            raise ValueError("need 0 < rise_s < decay_s")


def _ar1(rng: np.random.Generator, n_frames: int, n_series: int, timescale_frames: float) -> np.ndarray:
    """Unit-variance AR(1) noise, (frames, series)."""
    from scipy.signal import lfilter

    a = np.exp(-1.0 / max(timescale_frames, 1e-3))
    noise = rng.standard_normal((n_frames, n_series)) * np.sqrt(1 - a * a)
    out = lfilter([1.0], [1.0, -a], noise, axis=0)
    out[0] = rng.standard_normal(n_series)  # start in the stationary distribution
    return out


@numba.njit(parallel=True, cache=True)
def _simulate(latents, loadings, direction_index, direction_response, running, running_gain,
              cell_class, base_level, osc_freq, osc_phase, neuropil, neuropil_coef,
              decay_a, rise_a, spike_amplitude, shot_noise, seed, out):
    n_frames, n_neurons = out.shape
    n_latents = latents.shape[1]
    n_blocks = (n_neurons + _BLOCK - 1) // _BLOCK
    for block in numba.prange(n_blocks):
        np.random.seed(seed + 7919 * block)
        lo = block * _BLOCK
        hi = min(n_neurons, lo + _BLOCK)
        width = hi - lo
        slow = np.zeros(width)
        fast = np.zeros(width)
        for t in range(n_frames):
            d = direction_index[t]
            for j in range(width):
                i = lo + j
                drive = 0.0
                for k in range(n_latents):
                    drive += latents[t, k] * loadings[k, i]
                drive += running[t] * running_gain[i]
                if d >= 0:
                    drive += direction_response[d, i]
                c = cell_class[i]
                if c == 0:  # gaussian: dense rate code, linear in the drive so ΔF/F stays near-Gaussian
                    event = base_level[i] * max(0.0, 1.0 + 0.4 * drive + 0.3 * np.random.standard_normal())
                elif c == 1:  # regular: rhythmic firing, gated by the drive
                    phase = 2.0 * np.pi * osc_freq[i] * t + osc_phase[i]
                    event = base_level[i] * (1.0 + np.sin(phase)) * np.exp(0.3 * drive)
                else:  # sparse: rare bursts
                    p = base_level[i] * np.exp(drive)
                    event = 0.0
                    if np.random.random() < p:
                        event = 1.0 + np.floor(-np.log(1.0 - np.random.random()) * 2.0)  # geometric-ish burst
                slow[j] = decay_a * slow[j] + event
                fast[j] = rise_a * fast[j] + event
                signal = spike_amplitude * (slow[j] - fast[j])
                noise_scale = shot_noise * np.sqrt(1.0 + max(signal, 0.0))
                out[t, i] = signal + noise_scale * np.random.standard_normal() + neuropil_coef[i] * neuropil[t]


def make_synthetic(cfg: SyntheticConfig | None = None, return_raw: bool = False, **overrides):
    """A synthetic :class:`Recording` (contiguous, ``(frames, neurons)``) with ground truth.

    Ground truth: ``neuron_info`` has ``cell_class`` (index into ``CELL_CLASSES``),
    ``preferred_direction_deg`` (NaN for untuned cells), ``tuning_strength``, ``running_gain`` and
    ``latent_loadings``; ``continuous_labels`` has ``running_speed`` (cm/s) and ``stimulus_on``;
    ``trials`` has the grating schedule (``onset_s``, ``direction_deg``, ``orientation_deg``,
    ``duration_s``).

    With ``return_raw=True`` returns ``(recording, raw_f, neuropil_f)``: ROI fluorescence including
    neuropil contamination (``raw_f - r * neuropil_f`` has baseline ``F0``) and the neuropil trace,
    both ``(frames, neurons)`` float32.
    """
    cfg = cfg or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    n, t_total, dt = cfg.n_neurons, cfg.n_frames, 1.0 / cfg.rate_hz

    # Population-level signals.
    latents = _ar1(rng, t_total, cfg.n_latents, cfg.latent_timescale_s * cfg.rate_hz)
    speed = np.maximum(0.0, 12.0 * (_ar1(rng, t_total, 1, 4.0 * cfg.rate_hz)[:, 0] - 0.2))  # cm/s
    neuropil = _ar1(rng, t_total, 1, 2.0 * cfg.rate_hz)[:, 0] * 0.5

    # Trial schedule: stimulus then gray, directions in random order.
    trial_frames = int(round((cfg.stimulus_s + cfg.gray_s) * cfg.rate_hz))
    stim_frames = int(round(cfg.stimulus_s * cfg.rate_hz))
    n_trials = t_total // trial_frames
    directions = rng.integers(0, cfg.n_directions, size=n_trials)
    direction_index = np.full(t_total, -1, dtype=np.int64)
    for k in range(n_trials):
        start = k * trial_frames
        direction_index[start:start + stim_frames] = directions[k]
    direction_deg = directions * (360.0 / cfg.n_directions)

    # Per-neuron parameters.
    u = rng.random(n)
    cell_class = np.where(u < cfg.fraction_gaussian, 0,
                          np.where(u < cfg.fraction_gaussian + cfg.fraction_regular, 1, 2)).astype(np.int64)
    loadings = rng.standard_normal((cfg.n_latents, n)) * (cfg.latent_coupling / np.sqrt(cfg.n_latents))
    tuned = rng.random(n) < cfg.fraction_tuned
    preferred = rng.integers(0, cfg.n_directions, size=n) * (360.0 / cfg.n_directions)
    tuning = np.where(tuned, cfg.tuning_strength * (0.5 + rng.random(n)), 0.0)
    grid = np.arange(cfg.n_directions) * (360.0 / cfg.n_directions)
    angle = np.deg2rad(grid[:, None] - preferred[None, :])
    # von Mises bump normalised to 1 at the preferred direction; > 0 only for tuned cells
    direction_response = tuning[None, :] * np.exp(cfg.tuning_concentration * (np.cos(angle) - 1.0))
    running_gain = rng.standard_normal(n) * cfg.running_gain_std / 10.0
    base_level = np.select([cell_class == 0, cell_class == 1, cell_class == 2],
                           [0.15 + 0.1 * rng.random(n), 0.08 + 0.05 * rng.random(n), 0.002 + 0.004 * rng.random(n)])
    osc_freq = (1.0 + 2.0 * rng.random(n)) * dt  # cycles per frame
    osc_phase = rng.random(n) * 2 * np.pi
    neuropil_coef = cfg.neuropil_contamination * rng.random(n)
    seed = int(rng.integers(0, 2**31 - 1))

    dff = np.empty((t_total, n), dtype=np.float32)
    _simulate(latents, loadings, direction_index, direction_response, speed, running_gain, cell_class,
              base_level, osc_freq, osc_phase, neuropil, neuropil_coef,
              np.exp(-dt / cfg.decay_s), np.exp(-dt / cfg.rise_s), cfg.spike_amplitude, cfg.shot_noise,
              seed, dff)

    trials = TrialTable({
        "onset_s": np.arange(n_trials) * trial_frames * dt,
        "direction_deg": direction_deg,
        "orientation_deg": np.mod(direction_deg, 180.0),
        "duration_s": np.full(n_trials, stim_frames * dt),
    })
    meta = RecordingMeta(source="synthetic", format="synthetic", mouse=f"synthetic-{cfg.seed}",
                         session=f"synthetic-{cfg.seed}", cre_line="synthetic", area="synthetic",
                         indicator="GCaMP-like", stimulus="drifting_gratings",
                         extra={"config": str(asdict(cfg)), "cell_classes": ",".join(CELL_CLASSES)})
    recording = Recording(
        dff=dff, rate_hz=cfg.rate_hz, neuron_ids=np.arange(n), meta=meta,
        continuous_labels={"running_speed": speed.astype(np.float32),
                           "stimulus_on": (direction_index >= 0).astype(np.float32)},
        trials=trials,
        neuron_info={"cell_class": cell_class,
                     "preferred_direction_deg": np.where(tuned, preferred, np.nan),
                     "tuning_strength": tuning,
                     "running_gain": running_gain,
                     "latent_loadings": loadings.T.copy()},
    )
    if not return_raw:
        return recording
    # Raw ROI fluorescence: F_roi = F0 (1 + dF/F) + r * F_neuropil, where the neuropil has its own
    # baseline and fluctuations; subtracting r * F_neuropil and normalising by F0 gives back dF/F.
    f0 = cfg.baseline_fluorescence * (0.5 + rng.random(n)).astype(np.float32)
    neuropil_f = (0.6 * cfg.baseline_fluorescence * (1.0 + 0.2 * neuropil))[:, None].astype(np.float32)
    neuropil_f = np.repeat(neuropil_f, n, axis=1)
    raw_f = f0[None, :] * (1.0 + dff) + cfg.neuropil_coefficient * neuropil_f
    return recording, raw_f.astype(np.float32), neuropil_f
