"""``rtcalm serve``: run the real-time daemon until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

# rtcalm.engine.BACKENDS, spelled out here so that `rtcalm --help` does not import torch
# (tests/daemon/test_config.py checks that the two agree).
BACKENDS = ("auto", "torch", "onnx", "tensorrt")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the real-time daemon (ZeroMQ in, predictions out, Prometheus metrics)",
        description="Run the real-time daemon: frames in on the ingest socket, running statistics and the "
                    "incremental CalM step, predictions out on the publish socket, commands on the control "
                    "socket, Prometheus metrics over HTTP. Settings: built-in defaults, then --config FILE "
                    "(see configs/daemon.toml), then these flags. Addresses are loopback unless the config "
                    "allows otherwise; port 0 picks a free port. Stops cleanly on Ctrl-C or SIGTERM.")
    parser.add_argument("--model", help="shipped model name or checkpoint directory (default: config, 'default')")
    parser.add_argument("--config", metavar="FILE", help="daemon TOML config (e.g. configs/daemon.toml)")
    parser.add_argument("--ingest", metavar="ADDR", help="ingest (PULL) address, e.g. tcp://127.0.0.1:7750")
    parser.add_argument("--publish", metavar="ADDR", help="publish (PUB) address, e.g. tcp://127.0.0.1:7751")
    parser.add_argument("--control", metavar="ADDR", help="control (REP) address, e.g. tcp://127.0.0.1:7752")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="where the model step runs (default: config, 'auto': TensorRT with a GPU, else ONNX "
                             "Runtime, else torch; see docs/backends.md)")
    parser.add_argument("--artifact", metavar="PATH",
                        help="compiled model file (rtcalm compile) for the initial model (default: search "
                             "<checkpoint>/compiled/)")
    parser.add_argument("--keys", metavar="DIR",
                        help="CurveZMQ: encrypt all sockets and admit only the clients authorized in DIR "
                             "(written by `rtcalm keys generate DIR`; DIR/server.key_secret and "
                             "DIR/authorized_clients)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow binding to non-loopback addresses without keys (plain text, no "
                             "authentication: anyone who reaches the port can send frames and commands)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="Prometheus metrics port on the metrics host (0: pick a free one; -1: no metrics)")
    parser.add_argument("--max-sessions", type=int, metavar="N",
                        help="sessions served at once (default: config, 16); more are refused (too_many_sessions)")
    parser.add_argument("--session-idle-timeout", type=float, metavar="S",
                        help="stop a session after S seconds without a frame (default: config, 600; 0: never)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="once listening, write the bound endpoints as JSON to FILE (for scripts and tests)")
    parser.set_defaults(handler=run)


def build_config(args: argparse.Namespace):
    """Defaults < --config < flags, validated."""
    from rtcalm.daemon.config import ConfigError, DaemonConfig, load_config

    config = load_config(args.config) if args.config else DaemonConfig()
    sockets = {name: getattr(args, name) for name in ("ingest", "publish", "control") if getattr(args, name)}
    metrics = {}
    if args.metrics_port is not None:
        if args.metrics_port == -1:
            metrics["enabled"] = False
        elif not 0 <= args.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be 0-65535 (or -1 for no metrics), got {args.metrics_port}")
        else:
            metrics["port"] = args.metrics_port
    model = {key: getattr(args, key) for key in ("backend", "artifact") if getattr(args, key)}
    if args.model:
        model["name"] = args.model
    if args.insecure:
        sockets["allow_non_loopback"] = True
    security = {}
    if args.keys:
        from rtcalm.security import AUTHORIZED_DIR, SERVER_SECRET

        security = {"server_secret_key": os.path.join(args.keys, SERVER_SECRET),
                    "authorized_clients": os.path.join(args.keys, AUTHORIZED_DIR)}
    limits = {} if args.max_sessions is None else {"max_sessions": args.max_sessions}
    sessions = {} if args.session_idle_timeout is None else {"idle_timeout_s": args.session_idle_timeout}
    return config.replace(sockets=sockets, security=security, metrics=metrics, model=model, limits=limits,
                          sessions=sessions)


def run(args: argparse.Namespace) -> int:
    from rtcalm.daemon import Daemon

    config = build_config(args)
    daemon = Daemon(config)
    endpoints = daemon.start()
    try:
        engine = daemon.pipeline.engine
        print(f"rtcalm serve: model {engine.version} ({engine.backend}, horizon {engine.horizon} frames at "
              f"{engine.rate_hz:g} Hz)", file=sys.stderr)
        print(f"rtcalm serve: backend  {engine.selection}", file=sys.stderr)
        for name, address in endpoints.items():
            print(f"rtcalm serve: {name:8s} {address}", file=sys.stderr)
        if args.ready_file:
            with open(args.ready_file + ".tmp", "w") as f:
                json.dump(endpoints, f)
            os.replace(args.ready_file + ".tmp", args.ready_file)

        def request_stop(signum, _frame):
            daemon.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        daemon.run()
        print("rtcalm serve: stopped", file=sys.stderr)
    finally:
        daemon.close()
    return 0
