"""The real-time daemon: ZeroMQ in, running statistics + incremental CalM, predictions out, Prometheus metrics.

    from rtcalm.daemon import Daemon, DaemonConfig, load_config
    daemon = Daemon(load_config("configs/daemon.toml"))
    daemon.start(); daemon.run()

Modules: ``config`` (TOML + overrides), ``server`` (sockets and the event loop), ``pipeline`` (the
per-frame path), ``session`` (per-session state and normalisation), ``engine`` (hot
swaps of the :class:`rtcalm.engine.StepEngine` that runs the model), ``control`` (control commands), ``metrics`` (Prometheus). See docs/daemon.md.
"""

from rtcalm.daemon.config import ConfigError, DaemonConfig, config_from_dict, load_config
from rtcalm.daemon.engine import StepEngine, load_engine
from rtcalm.daemon.server import Daemon

__all__ = ["ConfigError", "Daemon", "DaemonConfig", "StepEngine", "config_from_dict", "load_config", "load_engine"]
