"""TLS credentials and bearer tokens for the sync and async clients.

A token is sent with every RPC as ``authorization: Bearer <token>``, read from its *token source*
at each RPC: a plain string, a callable returning the current token (refresh it however your
identity provider wants: the client asks again every time), or :class:`FileToken`, which re-reads
a file when it changes (a Kubernetes projected service-account token, a sidecar that renews it).
Tokens go only over TLS, or to a loopback address: never in the clear across a network.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from callqos import wire

__all__ = ["FileToken", "TokenSource", "tls_credentials"]

#: A token, or what gives the current one.
TokenSource = str | Callable[[], str]
PathLike = str | os.PathLike[str]


def _read(value: PathLike | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def tls_credentials(
    ca: PathLike | bytes | None = None,
    cert: PathLike | bytes | None = None,
    key: PathLike | bytes | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials: `ca` (PEM file or bytes) verifies the server, the system's roots
    when None; `cert` and `key` (together) are the client's own certificate, for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))


class FileToken:
    """A token kept in a file, re-read whenever the file changes (its modification time, size or
    inode), so a rotated token is used from the next RPC on. Thread-safe."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        status = os.stat(self.path)
        signature = (status.st_mtime_ns, status.st_size, status.st_ino)
        with self._lock:
            if signature != self._seen:
                self._token = self.path.read_text().strip()
                self._seen = signature
            return self._token


def token_getter(token: TokenSource | None) -> Callable[[], str] | None:
    if token is None:
        return None
    if isinstance(token, str):
        fixed = token
        return lambda: fixed
    return token


def bearer_metadata(get: Callable[[], str] | None) -> tuple[tuple[str, str], ...]:
    """The authorization metadata of one RPC (nothing without a token source)."""
    if get is None:
        return ()
    return ((wire.AUTHORIZATION_HEADER, wire.BEARER_PREFIX + get()),)


def is_loopback_target(target: str) -> bool:
    """Whether `target` (host:port, or a unix: address) stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(target: str, token: TokenSource | None, credentials: grpc.ChannelCredentials | None) -> None:
    if token is not None and credentials is None and not is_loopback_target(target):
        raise ValueError(
            f"a bearer token would cross the network to {target} in the clear: give TLS credentials "
            "(callqos.client.tls_credentials) or use a loopback address"
        )


def env_credentials() -> grpc.ChannelCredentials | None:
    """TLS from the environment: CALLQOS_TLS_CA (turns TLS on), CALLQOS_TLS_CLIENT_CERT/_KEY."""
    ca, cert, key = (os.environ.get(name) or None for name in (wire.TLS_CA_ENV, wire.TLS_CERT_ENV, wire.TLS_KEY_ENV))
    if ca is None and cert is None:
        return None
    return tls_credentials(ca, cert, key)


def env_token() -> TokenSource | None:
    """CALLQOS_TOKEN, else the file CALLQOS_TOKEN_FILE (re-read when it changes)."""
    if os.environ.get(wire.TOKEN_ENV):
        return os.environ[wire.TOKEN_ENV]
    if os.environ.get(wire.TOKEN_FILE_ENV):
        return FileToken(os.environ[wire.TOKEN_FILE_ENV])
    return None
