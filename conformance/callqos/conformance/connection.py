"""How the suite connects to `--target`: plaintext, or TLS (`--tls-ca`, with `--tls-cert` and
`--tls-key` for mTLS), and, for a server that authenticates callers, bearer tokens.

The checks name their callers by the x-callqos-principal header (the suite's own principal, and
an "intruder" for the ownership checks). A server with authenticators ignores that header, so the
suite sends a token with each RPC instead: `--intruder-token` on requests made as the intruder,
`--token` on every other. The two tokens must be of two principals of one tenant, each with the
`caller` role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from callqos.wire import AUTHORIZATION_HEADER, BEARER_PREFIX


@dataclass(frozen=True)
class Connection:
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    intruder_token: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))

    def bearer(self, intruder: bool = False) -> tuple[tuple[str, str], ...]:
        """The authorization metadata of an RPC made as the suite (or as its intruder)."""
        token = self.intruder_token if intruder and self.intruder_token else self.token
        return ((AUTHORIZATION_HEADER, BEARER_PREFIX + token),) if token else ()


def open_channel(target: str, connection: Connection | None) -> grpc.aio.Channel:
    """A channel to `target` as `connection` says (plaintext without one)."""
    if connection is not None and connection.tls:
        return grpc.aio.secure_channel(target, connection.credentials())
    return grpc.aio.insecure_channel(target)
