"""Daemon configuration: defaults, the TOML file (``configs/daemon.toml``), and command-line overrides.

Precedence: built-in defaults < ``--config FILE`` < command-line flags. Loading is strict: an unknown
section or key, a value of the wrong type or out of range, or a socket address that is not loopback
while the sockets have no CurveZMQ keys (``[security]``) and ``sockets.allow_non_loopback`` (``serve
--insecure``) is off raises :class:`ConfigError` naming the file and the key, before anything is bound. Every section is a frozen dataclass, so a config that exists is a valid one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rtcalm.engine.loading import BACKENDS
from rtcalm.errors import RtcalmError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_TCP_ADDRESS = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>\*|\d{1,5})")


class ConfigError(RtcalmError, ValueError):
    """A bad daemon configuration (file, key, value or command-line flag)."""


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(value: str, *, allow_non_loopback: bool, what: str) -> str:
    """Validate a ZeroMQ bind address and return it in the form ZeroMQ binds (port 0 -> ``*``,
    an ephemeral port). Accepted: ``tcp://HOST:PORT`` and ``ipc://PATH``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: an address must be a non-empty string, got {value!r}")
    if value.startswith("ipc://"):
        if len(value) <= len("ipc://"):
            raise ConfigError(f"{what}: {value!r} has no path")
        return value  # a filesystem socket: local by construction
    match = _TCP_ADDRESS.fullmatch(value)
    if match is None:
        raise ConfigError(f"{what}: {value!r} is not an address of the form tcp://HOST:PORT or ipc://PATH")
    host, port = match["host"], match["port"]
    if port != "*" and not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: port {port} is outside 0-65535")
    if not allow_non_loopback and not _is_loopback(host):
        raise ConfigError(f"{what}: {value!r} is not a loopback address; binding beyond this machine needs "
                          "CurveZMQ keys ([security], rtcalm serve --keys DIR; make them with rtcalm keys "
                          "generate DIR), or explicitly no security: sockets.allow_non_loopback = true "
                          "(rtcalm serve --insecure)")
    if port == "0":
        value = value[: -len(port)] + "*"
    return value


# --- sections ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SocketsConfig:
    ingest: str = "tcp://127.0.0.1:7750"  # rig PUSH -> daemon PULL
    publish: str = "tcp://127.0.0.1:7751"  # daemon PUB -> subscribers
    control: str = "tcp://127.0.0.1:7752"  # REQ -> daemon REP
    # Bind beyond loopback without keys (plain text, anyone who can reach the port): `serve --insecure`.
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class SecurityConfig:
    """CurveZMQ on all three sockets (rtcalm.security): both keys set, or neither (no encryption)."""

    server_secret_key: str | None = None  # DIR/server.key_secret from `rtcalm keys generate DIR`
    authorized_clients: str | None = None  # DIR/authorized_clients: public keys of the clients let in

    @property
    def enabled(self) -> bool:
        return self.server_secret_key is not None


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9750  # 0: an ephemeral port (reported by `status`)
    # Observe acquisition-to-publish latency: only meaningful when the rig stamps t_acq_ns with the
    # same clock as this machine's (same host, or PTP-synchronised).
    rig_clock_is_local: bool = True


@dataclass(frozen=True)
class ModelSection:
    name: str = "default"  # a shipped model name or a checkpoint directory
    threads: int = 1  # intra-op threads for the model step (torch's process-wide, ONNX Runtime's per engine)
    backend: str = "auto"  # rtcalm.engine.BACKENDS: auto | torch | onnx | tensorrt (docs/backends.md)
    # A compiled file (rtcalm compile) for the initial model; unset: <checkpoint>/compiled/ is searched.
    # Hot swaps always search the new checkpoint's compiled/ (an artifact belongs to one checkpoint).
    artifact: str | None = None


@dataclass(frozen=True)
class StatsSection:
    # Exponential forgetting of the running statistics in frames (0: none, every frame weighs the same).
    time_constant_frames: float = 0.0
    # A neuron is fed to the model as missing until it has this many valid values (its std is noise).
    warmup_frames: int = 30
    # Thresholds of the predictable mask (rtcalm.stats.selection): "poyo-cap" (the published values;
    # free) or "knee" (Kneedle over this session's neurons: ~15 ms at 512 neurons, ~190 ms at 4096,
    # so it is re-chosen only every thresholds_refresh_frames, when the ingest queue is empty).
    predictable_method: str = "poyo-cap"
    predictable_refresh_frames: int = 30  # re-apply the thresholds to the current statistics this often
    thresholds_refresh_frames: int = 1800


@dataclass(frozen=True)
class DffSection:
    """The streaming ΔF/F converter (rtcalm.stats.OnlineDff) for rigs that send raw fluorescence and
    neuropil instead of ΔF/F; see docs/statistics.md for the definition."""

    neuropil_coef: float = 0.7
    block_frames: int = 30
    window_frames: int = 1800
    percentile: float = 8.0
    min_baseline: float = 0.0


@dataclass(frozen=True)
class SessionsSection:
    # A frame for an unknown session starts it (a rig needs no control socket). When false, sessions
    # must be started with the `start` control command.
    auto_start: bool = True
    # A session that has had no frame for this long is stopped and its state freed (logged, counted in
    # rtcalm_sessions_expired_total), so that rigs which come back under new session ids cannot use up
    # limits.max_sessions. 0: sessions never expire. Started and pinned sessions expire too.
    idle_timeout_s: float = 600.0


@dataclass(frozen=True)
class QualitySection:
    """Live forecast quality (docs/daemon.md#forecast-quality): every frame's truth scored against the
    forecasts made for it, per session."""

    # Skill against copy-last at these horizons (frames ahead): rtcalm_forecast_skill{session, horizon}.
    skill_horizons: tuple = (1, 5, 15, 30)
    # Forecast intervals at these coverage levels in every prediction (docs/intervals.md), and their
    # rolling coverage in rtcalm_forecast_interval_coverage; empty: off (the message is as without them).
    interval_levels: tuple = ()
    # The window of the rolling skill and coverage: forgetting time constant, in frames (1 min at 30 Hz).
    window_frames: float = 1800.0


@dataclass(frozen=True)
class TriggersSection:
    """Outputs of the trigger rules (docs/triggers.md). Triggers always go out on the publish socket; a
    serial port adds a hardware line: one byte per fired rule (the rule's serial_byte), 8N1."""

    serial_port: str | None = None  # e.g. "/dev/ttyACM0" or "COM3"; unset: no serial line
    serial_baudrate: int = 115200


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 4 * 1024 * 1024
    max_neurons: int = 65536
    max_sessions: int = 16  # sessions served at once; a new one beyond this is refused ('too_many_sessions')
    # Neurons over all sessions: what bounds the daemon's memory (per-session buffers and model state grow
    # with the neuron count: the default model needs about 7 KB per neuron).
    max_total_neurons: int = 262144
    # Bounds on the magnitude of frame values: a larger finite value is refused ('value_out_of_range')
    # before it reaches the statistics. ΔF/F is a ratio to the baseline; 1e4 is far beyond any real
    # transient (tens), so a value above it is a unit or scaling error. Raw fluorescence is in the
    # rig's own units (16-bit counts, or sums over an ROI's pixels).
    max_abs_dff: float = 1e4
    max_abs_fluorescence: float = 1e9
    max_gap_frames: int = 90  # gaps up to this are filled with missing frames; larger ones restart the session
    max_backlog_frames: int = 256  # messages drained from the ingest socket in one batch
    history_frames: int = 256  # normalised frames kept per session to warm a hot-swapped model
    ingest_hwm: int = 10000  # ZeroMQ receive high-water mark (messages)
    publish_hwm: int = 1000  # per subscriber: a slow subscriber loses messages, the daemon never blocks


@dataclass(frozen=True)
class DaemonConfig:
    sockets: SocketsConfig = field(default_factory=SocketsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    model: ModelSection = field(default_factory=ModelSection)
    stats: StatsSection = field(default_factory=StatsSection)
    dff: DffSection = field(default_factory=DffSection)
    sessions: SessionsSection = field(default_factory=SessionsSection)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    triggers: TriggersSection = field(default_factory=TriggersSection)
    quality: QualitySection = field(default_factory=QualitySection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> DaemonConfig:
        """Override single keys: ``config.replace(sockets={"ingest": ...}, model={"name": ...})``; the
        result is validated like a file."""
        merged = self.to_dict()
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        return config_from_dict(merged, source="command line")


# Range checks per key: (low, high) inclusive; None = unbounded on that side.
_RANGES = {
    ("metrics", "port"): (0, 65535),
    ("model", "threads"): (1, 256),
    ("stats", "time_constant_frames"): (0.0, None),
    ("stats", "warmup_frames"): (2, 10**7),
    ("stats", "predictable_refresh_frames"): (1, 10**7),
    ("stats", "thresholds_refresh_frames"): (1, 10**9),
    ("dff", "neuropil_coef"): (0.0, 10.0),
    ("dff", "block_frames"): (1, 10**6),
    ("dff", "window_frames"): (1, 10**7),
    ("dff", "percentile"): (0.0, 100.0),
    ("dff", "min_baseline"): (None, None),
    ("limits", "max_message_bytes"): (1024, 1 << 30),
    ("limits", "max_neurons"): (1, 1 << 22),
    ("limits", "max_sessions"): (1, 10000),
    ("limits", "max_total_neurons"): (1, 1 << 26),
    ("limits", "max_gap_frames"): (0, 10**6),
    ("limits", "max_abs_dff"): (1.0, 1e30),
    ("limits", "max_abs_fluorescence"): (1.0, 1e30),
    ("sessions", "idle_timeout_s"): (0.0, 1e9),
    ("limits", "max_backlog_frames"): (1, 100000),
    ("limits", "history_frames"): (1, 100000),
    ("limits", "ingest_hwm"): (1, 10**7),
    ("limits", "publish_hwm"): (1, 10**7),
    ("triggers", "serial_baudrate"): (50, 4_000_000),
    ("quality", "window_frames"): (1.0, 1e9),
}
_CHOICES = {("stats", "predictable_method"): ("knee", "poyo-cap"), ("model", "backend"): BACKENDS}
_SECTION_CLASSES = {"sockets": SocketsConfig, "security": SecurityConfig, "metrics": MetricsConfig, "model": ModelSection,
                    "stats": StatsSection, "dff": DffSection, "sessions": SessionsSection, "limits": LimitsConfig,
                    "triggers": TriggersSection, "quality": QualitySection}


# Keys that may be left unset (None; in a file: absent). Set, they are non-empty strings.
_OPTIONAL_STRINGS = {("model", "artifact"), ("security", "server_secret_key"), ("security", "authorized_clients"),
                     ("triggers", "serial_port")}


def _check_list(where: str, value, item_type: type, low, high, most: int) -> tuple:
    """A list of distinct, increasing ``item_type`` values within [low, high] (an open bound for floats)."""
    if isinstance(value, tuple):
        value = list(value)
    ok = isinstance(value, list) and len(value) <= most and all(
        type(v) is item_type or (item_type is float and type(v) is int) for v in value)
    if ok:
        value = [item_type(v) for v in value]
        inside = (lambda v: low <= v <= high) if item_type is int else (lambda v: low < v < high)
        ok = all(inside(v) for v in value) and all(a < b for a, b in zip(value, value[1:], strict=False))
    if not ok:
        kind = f"integers from {low} to {high}" if item_type is int else f"numbers strictly between {low} and {high}"
        raise ConfigError(f"{where} must be a list of at most {most} increasing {kind}, got {value!r}")
    return tuple(value)


_LISTS = {("quality", "skill_horizons"): (int, 1, 1000, 8), ("quality", "interval_levels"): (float, 0.0, 1.0, 4)}


def _check_value(section: str, key: str, value, default, source: str):
    where = f"{source}: [{section}] {key}"
    if (section, key) in _LISTS:
        return _check_list(where, value, *_LISTS[(section, key)])
    if (section, key) in _OPTIONAL_STRINGS:
        if value is not None and (type(value) is not str or not value):
            raise ConfigError(f"{where} must be a non-empty string (or left out), got {value!r}")
        return value
    if isinstance(default, bool):
        if type(value) is not bool:
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if type(value) is not int:
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if type(value) is not str or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    low, high = _RANGES.get((section, key), (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where} = {value!r} is outside [{low}, {'inf' if high is None else high}]")
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} = {value!r}; choose one of {', '.join(choices)}")
    return value


def config_from_dict(document: dict, *, source: str = "config") -> DaemonConfig:
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a table of sections")
    unknown = sorted(set(document) - set(_SECTION_CLASSES))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(_SECTION_CLASSES)}")
    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        values = document.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        defaults = cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown_keys = sorted(set(values) - known)
        if unknown_keys:
            raise ConfigError(f"{source}: unknown key(s) {unknown_keys} in [{name}]; known: {sorted(known)}")
        checked = {key: _check_value(name, key, value, getattr(defaults, key), source)
                   for key, value in values.items()}
        sections[name] = cls(**{**dataclasses.asdict(defaults), **checked})

    security = sections["security"]
    if (security.server_secret_key is None) != (security.authorized_clients is None):
        raise ConfigError(f"{source}: [security] server_secret_key and authorized_clients go together "
                          "(give both, or neither for no encryption)")
    sockets = sections["sockets"]
    allow = sockets.allow_non_loopback or security.enabled
    sections["sockets"] = dataclasses.replace(
        sockets, **{name: check_address(getattr(sockets, name), allow_non_loopback=allow,
                                        what=f"{source}: [sockets] {name}")
                    for name in ("ingest", "publish", "control")})
    bound = [getattr(sections["sockets"], name) for name in ("ingest", "publish", "control")]
    fixed = [a for a in bound if not a.endswith(":*")]
    if len(set(fixed)) != len(fixed):
        raise ConfigError(f"{source}: [sockets] ingest, publish and control must be different addresses, got {bound}")
    dff = sections["dff"]
    if dff.window_frames < dff.block_frames:
        raise ConfigError(f"{source}: [dff] window_frames ({dff.window_frames}) must be at least block_frames "
                          f"({dff.block_frames})")
    metrics = sections["metrics"]
    if not sockets.allow_non_loopback and not _is_loopback(metrics.host):  # plain HTTP, even with keys
        raise ConfigError(f"{source}: [metrics] host {metrics.host!r} is not loopback; the metrics endpoint "
                          "is plain HTTP (set sockets.allow_non_loopback = true to expose it anyway)")
    return DaemonConfig(**sections)


def load_config(path) -> DaemonConfig:
    """Read a daemon TOML file (see configs/daemon.toml for every key and its meaning)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(document, source=str(path))
