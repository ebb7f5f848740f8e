"""A simulated visual cortex watching a procedurally generated movie (for the movie decoder).

Two parts, usable separately:

- :func:`make_movie`: a seeded grayscale movie ``(frames, height, width)`` float32 in [0, 1] at the
  imaging rate, cut into segments of 1.5-4 s (hard cuts, like edited natural movies). Each segment is
  one scene: a **drifting sinusoidal grating**, soft-edged **moving bars**, **moving gaussian blobs**
  bouncing off the borders, or a **drifting 1/f noise texture**; some segments get moving blobs laid
  over them. Every segment has its own mean luminance.
- :func:`simulate_visual_cortex`: neurons watching any such movie (also an external one, e.g. a
  natural-movie template). Per neuron i and frame t (at ``rate_hz``):

  1. **Receptive field**: a Gabor filter at a random position, orientation, spatial frequency, phase
     and aspect ratio (envelope width tied to the spatial frequency, ~1.3 octaves bandwidth), applied to
     the contrast image ``frame - 0.5``. *Simple* cells use one Gabor (linear, phase-sensitive);
     *complex* cells use the energy of a quadrature pair (phase-invariant). The drive is normalised by
     the response to the cell's own optimal grating at full contrast, so 1.0 = best possible stimulus.
  2. **Temporal integration**: an exponential low-pass (``temporal_tau_s``) on the drive.
  3. **Static nonlinearity**: a rectified Naka-Rushton contrast response,
     ``rate = baseline + peak * x**n / (c50**n + x**n)`` with ``x = relu(drive)`` (Hz), times a shared
     slow gain (behavioural-state modulation, AR(1) in log-gain).
  4. **Spikes**: Poisson counts per frame.
  5. **Calcium**: the GCaMP-like difference of exponentials of :mod:`rtcalm.sim.synthetic`
     (rise ``rise_s``, decay ``decay_s``), per-neuron amplitude.
  6. **Noise**: shot noise growing with brightness plus residual neuropil contamination (a shared slow
     signal times a per-neuron coefficient), as in the existing generator.

Orientation convention (movie and receptive fields alike): ``orientation_deg`` is the angle of the
grating's wave vector (the direction across the bars), measured from the +x (column) axis towards +y
(row, i.e. downwards on screen), in [0, 180).

:func:`make_visual_cortex` does both and returns ``(recording, movie)``. The recording's ``trials`` table
has one row per movie segment (``onset_s``, ``scene`` index into :data:`SCENES`, ``duration_s``) and its
``neuron_info`` holds the receptive-field ground truth (``rf_x``, ``rf_y``, ``rf_orientation_deg``,
``rf_spatial_frequency``, ``rf_sigma``, ``rf_aspect``, ``rf_phase``, ``cell_type`` index into
:data:`CELL_TYPES`, ``peak_rate_hz``, ``spike_amplitude``). ``continuous_labels["gain"]`` is the shared
gain. Everything depends only on the config (seed included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import lfilter

from rtcalm.data.recording import Recording, RecordingMeta, TrialTable
from rtcalm.sim.synthetic import _ar1

SCENES = ("grating", "bars", "blobs", "texture")
CELL_TYPES = ("simple", "complex")


@dataclass
class VisualCortexConfig:
    # --- movie -----------------------------------------------------------------------------------
    n_frames: int = 14400  # 8 min at 30 Hz
    height: int = 32
    width: int = 64
    rate_hz: float = 30.0
    seed: int = 0
    segment_min_s: float = 1.5
    segment_max_s: float = 4.0
    scene_weights: tuple[float, float, float, float] = (0.25, 0.2, 0.25, 0.3)  # order of SCENES
    overlay_blobs_probability: float = 0.3  # chance that a non-blob segment also gets moving blobs
    # --- neurons ---------------------------------------------------------------------------------
    n_neurons: int = 1024
    fraction_complex: float = 0.4
    spatial_frequency_min: float = 0.04  # cycles per pixel (log-uniform between min and max)
    spatial_frequency_max: float = 0.2
    envelope_cycles: float = 0.45  # Gabor sigma = envelope_cycles / spatial frequency
    temporal_tau_s: float = 0.05
    semi_saturation: float = 0.1  # Naka-Rushton c50, in units of the optimal-grating drive
    exponent: float = 2.0
    peak_rate_hz: float = 30.0  # median saturated rate (per-neuron spread x0.5-1.5)
    baseline_rate_hz: float = 0.5
    gain_noise: float = 0.2  # std of the shared log-gain
    gain_timescale_s: float = 3.0
    # --- calcium and noise (meaning as in SyntheticConfig) ----------------------------------------
    rise_s: float = 0.05
    decay_s: float = 0.4
    spike_amplitude: float = 0.15  # ΔF/F scale of one spike (per-neuron spread x0.5-1.5)
    shot_noise: float = 0.03
    neuropil_contamination: float = 0.05

    def validate(self) -> None:
        if self.n_frames < 2 or self.n_neurons < 1:
            raise ValueError("need at least 2 frames and 1 neuron")
        if self.height < 4 or self.width < 4:
            raise ValueError("the movie must be at least 4x4 pixels")
        if not self.rate_hz > 0:
            raise ValueError("rate_hz must be positive")
        if not 0 < self.segment_min_s <= self.segment_max_s:
            raise ValueError("need 0 < segment_min_s <= segment_max_s")
        if len(self.scene_weights) != len(SCENES) or min(self.scene_weights) < 0 or sum(self.scene_weights) <= 0:
            raise ValueError(f"scene_weights needs {len(SCENES)} non-negative weights with a positive sum")
        if not 0 <= self.fraction_complex <= 1 or not 0 <= self.overlay_blobs_probability <= 1:
            raise ValueError("fractions and probabilities must be in [0, 1]")
        if not 0 < self.spatial_frequency_min <= self.spatial_frequency_max < 0.5:
            raise ValueError("need 0 < spatial_frequency_min <= spatial_frequency_max < 0.5 (Nyquist)")
        if min(self.envelope_cycles, self.temporal_tau_s, self.exponent, self.semi_saturation) <= 0:
            raise ValueError("envelope_cycles, temporal_tau_s, exponent and semi_saturation must be positive")
        if self.peak_rate_hz <= 0 or self.baseline_rate_hz < 0 or self.gain_noise < 0:
            raise ValueError("need peak_rate_hz > 0, baseline_rate_hz >= 0 and gain_noise >= 0")
        if self.rise_s <= 0 or self.decay_s <= self.rise_s:
            raise ValueError("need 0 < rise_s < decay_s")


# --- the movie ---------------------------------------------------------------------------------------

def _grating(rng, n, xx, yy, rate_hz):
    theta = rng.uniform(0, np.pi)
    sf = np.exp(rng.uniform(np.log(0.03), np.log(0.15)))  # cycles per pixel
    tf = rng.uniform(0.5, 2.5) * rng.choice([-1.0, 1.0])  # Hz, sign = drift direction
    contrast = rng.uniform(0.15, 0.45)
    phase0 = rng.uniform(0, 2 * np.pi)
    t = np.arange(n)[:, None, None] / rate_hz
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    return contrast * np.cos(2 * np.pi * (sf * proj[None] - tf * t) + phase0)


def _bars(rng, n, xx, yy, rate_hz):
    height, width = xx.shape
    period = float(height + width)  # bars wrap around, so one always comes back into view
    t = np.arange(n)[:, None, None] / rate_hz
    out = np.zeros((n, height, width))
    for _ in range(rng.integers(1, 4)):
        theta = rng.uniform(0, np.pi)
        half_width = rng.uniform(1.0, 3.5)
        amplitude = rng.uniform(0.2, 0.5) * rng.choice([-1.0, 1.0])
        speed = rng.uniform(8.0, 35.0) * rng.choice([-1.0, 1.0])  # pixels per second
        offset = rng.uniform(0, period)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        distance = np.mod(proj[None] - offset - speed * t + period / 2, period) - period / 2
        out += amplitude * 0.5 * (np.tanh((half_width - np.abs(distance)) / 0.7) + 1.0)
    return out


def _bounce(start, velocity, t, length):
    """Position bouncing between 0 and ``length`` (a triangle wave)."""
    return length - np.abs(np.mod(start + velocity * t, 2 * length) - length)


def _blobs(rng, n, xx, yy, rate_hz):
    height, width = xx.shape
    t = np.arange(n)[:, None, None] / rate_hz
    out = np.zeros((n, height, width))
    for _ in range(rng.integers(2, 6)):
        sigma = rng.uniform(2.0, 7.0)
        amplitude = rng.uniform(0.2, 0.5) * rng.choice([-1.0, 1.0])
        speed = rng.uniform(5.0, 30.0)
        direction = rng.uniform(0, 2 * np.pi)
        cx = _bounce(rng.uniform(0, width), speed * np.cos(direction), t, width - 1)
        cy = _bounce(rng.uniform(0, height), speed * np.sin(direction), t, height - 1)
        out += amplitude * np.exp(-((xx[None] - cx) ** 2 + (yy[None] - cy) ** 2) / (2 * sigma**2))
    return out


def _texture(rng, n, xx, yy, rate_hz):
    """1/f^alpha noise on the (height, width) torus, drifting at constant velocity. The drift is a phase
    shift in Fourier space, so sub-pixel motion is exact and the texture wraps around seamlessly."""
    height, width = xx.shape
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(kx**2 + ky**2)
    alpha = rng.uniform(1.0, 2.0)
    amplitude = 1.0 / (radius + 1.0 / max(height, width)) ** alpha
    amplitude[0, 0] = 0.0  # zero mean: the segment's luminance is set separately
    spectrum = amplitude * (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape))
    base = np.fft.irfft2(spectrum, s=(height, width))
    spectrum *= rng.uniform(0.12, 0.25) / max(base.std(), 1e-12)
    speed = rng.uniform(3.0, 20.0)
    direction = rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(direction), speed * np.sin(direction)  # pixels per second
    t = np.arange(n)[:, None, None] / rate_hz
    shift = np.exp(-2j * np.pi * (kx[None] * vx * t + ky[None] * vy * t))
    return np.fft.irfft2(spectrum[None] * shift, s=(height, width), axes=(1, 2))


_SCENE_MAKERS = {"grating": _grating, "bars": _bars, "blobs": _blobs, "texture": _texture}


def make_movie(cfg: VisualCortexConfig, rng: np.random.Generator | None = None):
    """The procedural movie: ``(frames (n_frames, height, width) float32 in [0, 1], segments)`` where
    ``segments`` is a list of ``(start_frame, n_frames, scene_index)``."""
    rng = rng if rng is not None else _streams(cfg.seed)["movie"]
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width].astype(np.float64)
    weights = np.asarray(cfg.scene_weights, dtype=np.float64)
    weights = weights / weights.sum()
    movie = np.empty((cfg.n_frames, cfg.height, cfg.width), dtype=np.float32)
    segments = []
    start = 0
    while start < cfg.n_frames:
        length = int(round(rng.uniform(cfg.segment_min_s, cfg.segment_max_s) * cfg.rate_hz))
        length = max(1, min(length, cfg.n_frames - start))
        scene = int(rng.choice(len(SCENES), p=weights))
        contrast = _SCENE_MAKERS[SCENES[scene]](rng, length, xx, yy, cfg.rate_hz)
        if SCENES[scene] != "blobs" and rng.random() < cfg.overlay_blobs_probability:
            contrast = contrast + _blobs(rng, length, xx, yy, cfg.rate_hz)
        luminance = rng.uniform(0.35, 0.65)
        movie[start:start + length] = np.clip(luminance + contrast, 0.0, 1.0)
        segments.append((start, length, scene))
        start += length
    return movie, segments


# --- receptive fields --------------------------------------------------------------------------------

def sample_receptive_fields(cfg: VisualCortexConfig, rng: np.random.Generator | None = None) -> dict:
    """Per-neuron Gabor parameters (all arrays of shape ``(n_neurons,)``)."""
    rng = rng if rng is not None else _streams(cfg.seed)["neurons"]
    n = cfg.n_neurons
    sf = np.exp(rng.uniform(np.log(cfg.spatial_frequency_min), np.log(cfg.spatial_frequency_max), n))
    return {
        "rf_x": rng.uniform(0, cfg.width - 1, n),
        "rf_y": rng.uniform(0, cfg.height - 1, n),
        "rf_orientation_deg": rng.uniform(0, 180, n),
        "rf_spatial_frequency": sf,
        "rf_sigma": cfg.envelope_cycles / sf,
        "rf_aspect": rng.uniform(0.5, 1.0, n),  # < 1: the envelope is longer along the bars
        "rf_phase": rng.uniform(0, 2 * np.pi, n),
        "cell_type": (rng.random(n) < cfg.fraction_complex).astype(np.int64),
    }


def gabor_filters(rf: dict, height: int, width: int, phase_shift: float = 0.0) -> np.ndarray:
    """The receptive fields as images, ``(neurons, height, width)`` float64, unit L2 norm."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    theta = np.deg2rad(np.asarray(rf["rf_orientation_deg"]))[:, None, None]
    dx = xx[None] - np.asarray(rf["rf_x"])[:, None, None]
    dy = yy[None] - np.asarray(rf["rf_y"])[:, None, None]
    across = dx * np.cos(theta) + dy * np.sin(theta)  # along the wave vector
    along = -dx * np.sin(theta) + dy * np.cos(theta)  # along the bars
    sigma = np.asarray(rf["rf_sigma"])[:, None, None]
    aspect = np.asarray(rf["rf_aspect"])[:, None, None]
    envelope = np.exp(-(across**2 + (aspect * along) ** 2) / (2 * sigma**2))
    carrier = np.cos(2 * np.pi * np.asarray(rf["rf_spatial_frequency"])[:, None, None] * across
                     + np.asarray(rf["rf_phase"])[:, None, None] + phase_shift)
    filters = envelope * carrier
    return filters / np.maximum(np.linalg.norm(filters.reshape(len(filters), -1), axis=1), 1e-12)[:, None, None]


def optimal_gratings(rf: dict, height: int, width: int, contrast: float = 0.5) -> np.ndarray:
    """Each neuron's best full-field static grating (its own carrier), as frames in [0, 1]:
    ``(neurons, height, width)``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    theta = np.deg2rad(np.asarray(rf["rf_orientation_deg"]))[:, None, None]
    across = (xx[None] - np.asarray(rf["rf_x"])[:, None, None]) * np.cos(theta) + \
             (yy[None] - np.asarray(rf["rf_y"])[:, None, None]) * np.sin(theta)
    return 0.5 + contrast * np.cos(2 * np.pi * np.asarray(rf["rf_spatial_frequency"])[:, None, None] * across
                                   + np.asarray(rf["rf_phase"])[:, None, None])


def stimulus_drive(movie: np.ndarray, rf: dict) -> np.ndarray:
    """Instantaneous drive of each neuron, ``(frames, neurons)``: the Gabor response (simple cells) or
    quadrature energy (complex cells) of the contrast image ``frame - 0.5``, divided by the same
    quantity for the cell's optimal full-contrast grating (so 1.0 is the best a stimulus can do)."""
    movie = np.asarray(movie, dtype=np.float32)
    n_frames, height, width = movie.shape
    even = gabor_filters(rf, height, width).reshape(-1, height * width)
    odd = gabor_filters(rf, height, width, phase_shift=np.pi / 2).reshape(-1, height * width)
    best = (optimal_gratings(rf, height, width).reshape(-1, height * width) - 0.5)
    reference = np.maximum(np.sum(even * best, axis=1), 1e-6)  # even filter on its own carrier
    contrast = (movie.reshape(n_frames, -1) - 0.5)
    even_response = contrast @ even.T.astype(np.float32)  # (frames, neurons)
    odd_response = contrast @ odd.T.astype(np.float32)
    complex_cell = np.asarray(rf["cell_type"]) == CELL_TYPES.index("complex")
    drive = np.where(complex_cell[None, :], np.sqrt(even_response**2 + odd_response**2), even_response)
    return (drive / reference[None, :].astype(np.float32)).astype(np.float32)


def firing_rate(drive: np.ndarray, cfg: VisualCortexConfig, peak_rate_hz: np.ndarray | float | None = None) -> np.ndarray:
    """The static nonlinearity (Hz), applied to a (temporally filtered) drive: a rectified Naka-Rushton
    contrast-response function, which saturates as V1 responses do, so low-contrast stimuli still
    evoke responses while strong ones cannot run away."""
    peak = cfg.peak_rate_hz if peak_rate_hz is None else peak_rate_hz
    x = np.maximum(drive, 0.0) ** cfg.exponent
    return cfg.baseline_rate_hz + peak * x / (cfg.semi_saturation**cfg.exponent + x)


# --- the simulation ----------------------------------------------------------------------------------

def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams, so that e.g. the receptive fields do not change with the movie length."""
    movie, neurons, activity = np.random.SeedSequence(seed).spawn(3)
    return {"movie": np.random.default_rng(movie), "neurons": np.random.default_rng(neurons),
            "activity": np.random.default_rng(activity)}


def simulate_visual_cortex(movie: np.ndarray, cfg: VisualCortexConfig | None = None, **overrides) -> Recording:
    """Neurons watching ``movie`` ``(frames, height, width)`` in [0, 1], one movie frame per imaging
    frame at ``cfg.rate_hz``. The movie-related config fields are ignored (the movie's own shape is
    used). Returns a contiguous :class:`Recording` with the ground truth described in the module
    docstring."""
    cfg = cfg or VisualCortexConfig()
    if overrides:
        cfg = VisualCortexConfig(**{**asdict(cfg), **overrides})
    movie = np.asarray(movie, dtype=np.float32)
    if movie.ndim != 3 or movie.shape[0] < 2:
        raise ValueError(f"movie must be (frames >= 2, height, width), got shape {movie.shape}")
    if not np.isfinite(movie).all() or movie.min() < 0 or movie.max() > 1:
        raise ValueError("movie values must be finite and in [0, 1]")
    n_frames, height, width = movie.shape
    cfg = VisualCortexConfig(**{**asdict(cfg), "n_frames": n_frames, "height": height, "width": width})
    cfg.validate()
    streams = _streams(cfg.seed)
    rf = sample_receptive_fields(cfg, streams["neurons"])
    n, dt = cfg.n_neurons, 1.0 / cfg.rate_hz
    peak_rate = cfg.peak_rate_hz * streams["neurons"].uniform(0.5, 1.5, n)
    amplitude = cfg.spike_amplitude * streams["neurons"].uniform(0.5, 1.5, n)
    neuropil_coef = cfg.neuropil_contamination * streams["neurons"].random(n)

    rng = streams["activity"]
    drive = stimulus_drive(movie, rf)
    a = np.exp(-dt / cfg.temporal_tau_s)
    drive = lfilter([1.0 - a], [1.0, -a], drive, axis=0)  # unit-gain exponential low-pass
    log_gain = cfg.gain_noise * _ar1(rng, n_frames, 1, cfg.gain_timescale_s * cfg.rate_hz)[:, 0]
    rate = firing_rate(drive, cfg, peak_rate[None, :]) * np.exp(log_gain)[:, None]
    spikes = rng.poisson(rate * dt).astype(np.float64)  # (frames, neurons)

    # GCaMP-like kernel: difference of exponentials, as in rtcalm.sim.synthetic
    slow = lfilter([1.0], [1.0, -np.exp(-dt / cfg.decay_s)], spikes, axis=0)
    fast = lfilter([1.0], [1.0, -np.exp(-dt / cfg.rise_s)], spikes, axis=0)
    signal = amplitude[None, :] * (slow - fast)
    neuropil = 0.5 * _ar1(rng, n_frames, 1, 2.0 * cfg.rate_hz)[:, 0]
    noise = cfg.shot_noise * np.sqrt(1.0 + np.maximum(signal, 0.0)) * rng.standard_normal(signal.shape)
    dff = (signal + noise + neuropil_coef[None, :] * neuropil[:, None]).astype(np.float32)

    meta = RecordingMeta(source="synthetic-visual-cortex", format="synthetic", mouse=f"synthetic-vc-{cfg.seed}",
                         session=f"synthetic-vc-{cfg.seed}", cre_line="synthetic", area="VISp (simulated)",
                         indicator="GCaMP-like", stimulus="procedural_movie",
                         extra={"config": str(asdict(cfg)), "cell_types": ",".join(CELL_TYPES),
                                "scenes": ",".join(SCENES)})
    return Recording(
        dff=dff, rate_hz=cfg.rate_hz, neuron_ids=np.arange(n), meta=meta,
        continuous_labels={"gain": np.exp(log_gain).astype(np.float32)},
        neuron_info={**rf, "peak_rate_hz": peak_rate, "spike_amplitude": amplitude},
    )


def make_visual_cortex(cfg: VisualCortexConfig | None = None, **overrides) -> tuple[Recording, np.ndarray]:
    """``(recording, movie)``: a procedural movie (see :func:`make_movie`) and the simulated neurons
    watching it (see :func:`simulate_visual_cortex`). ``movie`` is ``(frames, height, width)`` float32
    in [0, 1], frame t shown during imaging frame t. ``recording.trials`` lists the movie segments."""
    cfg = cfg or VisualCortexConfig()
    if overrides:
        cfg = VisualCortexConfig(**{**asdict(cfg), **overrides})
    cfg.validate()
    movie, segments = make_movie(cfg)
    recording = simulate_visual_cortex(movie, cfg)
    starts = np.array([s for s, _, _ in segments], dtype=np.float64)
    recording.trials = TrialTable({
        "onset_s": starts / cfg.rate_hz,
        "scene": np.array([k for _, _, k in segments], dtype=np.int64),
        "duration_s": np.array([length for _, length, _ in segments], dtype=np.float64) / cfg.rate_hz,
    })
    return recording, movie
