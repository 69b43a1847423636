"""Who may talk to a writer: the loopback rule and ZeroMQ CURVE keys.

An endpoint on loopback (``127.0.0.0/8``, ``::1``, ``localhost``) or a Unix
socket (``ipc://``) is reachable from this machine only. Any other address is
reachable from the network, where anyone could end, poison or kill a
recording: it is bound only with CURVE keys (the stream is encrypted, and a
ZAP handler admits only the authorised client keys) or on purpose, with
``insecure=True`` (``--insecure``).

``trackflow keys DIR`` (:func:`create_keys`) writes, owner-only::

    DIR/server.key_secret   the writer's key pair (stays on the writer's host)
    DIR/server.key          the writer's public key (the publisher needs it)
    DIR/client.key_secret   the publisher's key pair (the publisher needs it)
    DIR/client.key          the publisher's public key
    DIR/authorized/         client public keys the writer admits (*.key)

The files are pyzmq's certificate format (:mod:`zmq.auth`). To admit another
publisher, copy its public ``.key`` file into ``authorized/``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["CurveServer", "create_keys", "curve_client", "curve_server", "is_local", "require_local"]

log = logging.getLogger("trackflow.acquire")

SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"
_LOG_FIRST = 10  # refusals logged before only every 1000th is


def is_local(endpoint: str) -> bool:
    """Whether ``endpoint`` is reachable from this machine only (ipc,
    inproc, or tcp on a loopback address)."""
    transport, sep, address = str(endpoint).partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rsplit(":", 1)[0]
    if ";" in host:  # "source;destination": the destination decides
        host = host.split(";", 1)[1]
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: not provably local
        return False


def require_local(endpoint: str, *, insecure: bool, what: str) -> None:
    """Refuse to bind a network-reachable ``endpoint`` without keys.

    Raises
    ------
    ValueError
        ``endpoint`` is not loopback or ipc and ``insecure`` is false.
    """
    if insecure or is_local(endpoint):
        return
    raise ValueError(
        f"{what}: {endpoint} is not a loopback or ipc endpoint, so anyone who can reach it could send, "
        "end or read the stream; create keys with 'trackflow keys DIR' and pass --keys DIR (keys=), "
        "or pass --insecure (insecure=True) on a network you trust"
    )


def create_keys(directory: str | os.PathLike) -> dict[str, Path]:
    """Write a writer (server) and a publisher (client) CURVE key pair.

    Every file is owner-only (0o600) from the moment it exists: the
    certificates are made in a private temporary folder and moved in.

    Parameters
    ----------
    directory : path-like
        Where the keys go (created if missing, 0o700).

    Returns
    -------
    dict
        The paths written, by name (``server.key_secret``, ...).

    Raises
    ------
    FileExistsError
        A key file already exists (replacing it would lock out every
        publisher that has the old keys).
    """
    directory = Path(directory)
    names = [f"{SERVER}.key", f"{SERVER}.key_secret", f"{CLIENT}.key", f"{CLIENT}.key_secret"]
    targets = {name: directory / name for name in names}
    targets[f"{AUTHORIZED}/{CLIENT}.key"] = directory / AUTHORIZED / f"{CLIENT}.key"
    for path in targets.values():
        if path.exists():
            raise FileExistsError(f"{path} exists; remove the old keys first (publishers using them stop working)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))  # 0o700: nobody else sees the secrets
    try:
        for name in (SERVER, CLIENT):
            zmq.auth.create_certificates(staging, name)
        shutil.copyfile(staging / f"{CLIENT}.key", staging / "authorized.key")
        for path in staging.iterdir():
            path.chmod(0o600)
        sources = {name: staging / name for name in names}
        sources[f"{AUTHORIZED}/{CLIENT}.key"] = staging / "authorized.key"
        for name, target in targets.items():
            os.replace(sources[name], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the CURVE key {path} ({exc}); create keys with 'trackflow keys DIR'") from None
    if secret and secret_key is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret_key


class CurveServer:
    """A ZAP handler admitting only the authorised client keys, and counting
    the peers it refuses (:attr:`refused`)."""

    def __init__(self, context: zmq.Context, keys: str | os.PathLike, where: str):
        self.where = where
        folder = Path(keys) / AUTHORIZED
        self.allowed = set(zmq.auth.load_certificates(folder)) if folder.is_dir() else set()
        if not self.allowed:
            raise ValueError(f"{where}: no authorised client keys (*.key) in {folder}")
        self.refused = 0
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """Called by the ZAP thread for every CURVE handshake."""
        if client_key in self.allowed:
            return True
        self.refused += 1
        if self.refused <= _LOG_FIRST or self.refused % 1000 == 0:
            log.warning(
                "%s: refused a peer with an unauthorised CURVE key %s (%d so far)",
                self.where, client_key.decode(errors="replace"), self.refused,
            )
        return False

    def stop(self) -> None:
        self.auth.stop()


def curve_server(sock: zmq.Socket, keys: str | os.PathLike, where: str) -> CurveServer:
    """Make ``sock`` (not yet bound) a CURVE server with the writer's keys;
    the returned handler must be stopped before its context is terminated."""
    public, secret = _load(Path(keys) / f"{SERVER}.key_secret", secret=True)
    server = CurveServer(sock.context, keys, where)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return server


def curve_client(sock: zmq.Socket, keys: str | os.PathLike) -> None:
    """Give ``sock`` (not yet connected) the publisher's keys and the
    writer's public key."""
    public, secret = _load(Path(keys) / f"{CLIENT}.key_secret", secret=True)
    server_public, _ = _load(Path(keys) / f"{SERVER}.key", secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
