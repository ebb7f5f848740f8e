"""rtcalm: streaming, real-time CalM inference for live two-photon calcium imaging.

The runtime package. ``rtcalm.client`` must stay importable without torch, so this top-level module
imports nothing heavy.
"""

__version__ = "0.1.0"
