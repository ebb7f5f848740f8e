"""Simulated recordings, for tests, benchmarks, the demo and training the movie decoder (never on the
per-frame path)::

    from rtcalm.sim import make_synthetic
    recording = make_synthetic(n_neurons=512, n_frames=9000, seed=0)

- :mod:`rtcalm.sim.synthetic`: calcium traces of several cell classes, with trials and behaviour;
- :mod:`rtcalm.sim.visual_cortex`: neurons driven by a natural movie, for the U-Net movie decoder.
"""

from rtcalm.sim.synthetic import SyntheticConfig, make_synthetic

__all__ = ["SyntheticConfig", "make_synthetic"]
