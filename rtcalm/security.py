"""CurveZMQ keys for the daemon's sockets: generation (``rtcalm keys``), loading, and applying them.

With keys, every connection to the ingest, publish and control sockets is encrypted and authenticated
(CurveZMQ, elliptic-curve Diffie-Hellman): the daemon proves it holds the server secret key, and only
clients whose public key is in the daemon's ``authorized_clients`` directory are let in (checked by a
ZAP authenticator in the daemon). A peer without keys, or with keys the daemon does not know, cannot
complete the handshake: its frames and commands never reach the daemon.

Key directory written by ``rtcalm keys generate DIR`` (``zmq.auth.create_certificates``)::

    DIR/server.key                 public: give to every client (clients check they talk to this daemon)
    DIR/server.key_secret          secret: the daemon's only (mode 0600)
    DIR/authorized_clients/NAME.key  public keys the daemon accepts (one per client)
    DIR/clients/NAME.key_secret    secret: give to client NAME only (mode 0600), with DIR/server.key

Imports pyzmq only, so the client side stays torch-free.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from rtcalm.errors import RtcalmError

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"
CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class CurveKeyError(RtcalmError):
    """A key file that is missing, unreadable, or not a CurveZMQ certificate of the expected kind."""


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveKeyError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE support")


def _load(path, *, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise CurveKeyError(f"{path}: key file not found")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"{path}: not a CurveZMQ certificate ({exc})") from None
    if secret and secret_key is None:
        raise CurveKeyError(f"{path}: holds no secret key (give the .key_secret file)")
    return public, secret_key


@dataclass(frozen=True)
class ServerKeys:
    """The daemon's key pair and the directory of client public keys it accepts."""

    public: bytes
    secret: bytes
    authorized_clients: Path

    @classmethod
    def load(cls, secret_file, authorized_clients) -> ServerKeys:
        _require_curve()
        public, secret = _load(secret_file, secret=True)
        directory = Path(authorized_clients)
        if not directory.is_dir():
            raise CurveKeyError(f"{directory}: authorized client key directory not found")
        if not any(directory.glob("*.key")):
            raise CurveKeyError(f"{directory}: holds no client public key (*.key); no client could connect "
                                "(rtcalm keys add-client)")
        return cls(public, secret, directory)

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before bind) a CURVE server; the context's ZAP authenticator checks clients."""
        socket.curve_server = True
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the daemon's public key (the client refuses any other server)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_file, client_secret_file) -> ClientKeys:
        _require_curve()
        server_public, _ = _load(server_public_file, secret=False)
        public, secret = _load(client_secret_file, secret=True)
        return cls(server_public, public, secret)

    @classmethod
    def from_directory(cls, directory, name: str = "client") -> ClientKeys:
        """Keys of client ``name`` from a directory written by ``rtcalm keys generate``."""
        directory = Path(directory)
        return cls.load(directory / SERVER_PUBLIC, directory / CLIENTS_DIR / f"{name}.key_secret")

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (before connect) a CURVE client of the daemon."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def _check_name(name: str) -> str:
    if not CLIENT_NAME.fullmatch(name):
        raise CurveKeyError(f"client name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


def add_client(directory, name: str) -> Path:
    """Generate client ``name``'s key pair in ``DIR/clients`` and authorize its public key. Returns the
    secret key file to hand to that client (with ``DIR/server.key``)."""
    _require_curve()
    directory, name = Path(directory), _check_name(name)
    clients, authorized = directory / CLIENTS_DIR, directory / AUTHORIZED_DIR
    if (clients / f"{name}.key_secret").exists() or (authorized / f"{name}.key").exists():
        raise CurveKeyError(f"{directory}: client {name!r} already has keys")
    clients.mkdir(parents=True, exist_ok=True)
    authorized.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(clients, name)
    os.chmod(secret_file, 0o600)
    shutil.copyfile(public_file, authorized / f"{name}.key")
    return Path(secret_file)


def generate_keys(directory, clients: list[str] = ("client",)) -> dict[str, Path]:
    """Write a new server key pair and one key pair per client name into ``directory`` (which must not
    already hold a server key: overwriting it would lock every existing client out)."""
    _require_curve()
    directory = Path(directory)
    if (directory / SERVER_SECRET).exists():
        raise CurveKeyError(f"{directory}: already holds a server key; use a new directory, or "
                            "rtcalm keys add-client to add a client")
    for name in clients:
        _check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, "server")
    os.chmod(secret_file, 0o600)
    written = {"server_public": Path(public_file), "server_secret": Path(secret_file)}
    for name in clients:
        written[f"client:{name}"] = add_client(directory, name)
    return written
