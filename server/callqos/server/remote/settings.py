"""The settings of a remote provider: the `[providers.<id>]` table with `plugin = "remote"`.

    [providers.acme]
    plugin = "remote"
    command = ["/opt/acme/bin/acme-provider", "--config", "/etc/acme.toml"]  # the host launches it
    # or: endpoint = "unix:///run/acme/provider.sock"   an operator runs it
    # or: endpoint = "provider.example:7000"             over TCP: [providers.acme.tls] required
    env = { ACME_LOG = "debug" }          # command mode: added to the provider's environment

    [providers.acme.tls]                  # endpoint mode over TCP (optional on loopback)
    ca_file = "/etc/callqos/acme-ca.pem"  # the CA that signed the provider's certificate
    cert_file = "/etc/callqos/host.pem"   # mutual TLS: the host's own certificate and key
    key_file = "/etc/callqos/host.key"
    server_name = "acme-provider"         # the name to expect in the provider's certificate

Every other key has a default (see `RemoteSettings`); an unknown key is an error, so a typo is
not silently ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(root certificates, private key, certificate chain) for grpc.ssl_channel_credentials."""

        def load(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return load(self.ca_file), load(self.key_file), load(self.cert_file)


@dataclass(frozen=True)
class RemoteSettings:
    endpoint: str = ""
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    tls: TlsSettings | None = None
    # Launch to handshake, and connection to SERVING: how long the host waits, at start-up
    # (where a provider not reached in time fails the server's start) and on each reconnection.
    start_timeout_seconds: float = 10.0
    # The deadline of protocol calls no request waits for (Restore, acknowledgements, listing
    # links for metrics); requests themselves get the host's provider deadline.
    call_timeout_seconds: float = 5.0
    # Between reconnection attempts (and restarts of a launched provider): doubling from the
    # first to the largest, back to the first once a connection has lasted a minute.
    restart_backoff_initial_seconds: float = 0.2
    restart_backoff_max_seconds: float = 10.0
    # SIGTERM to SIGKILL when a launched provider is stopped.
    stop_grace_seconds: float = 2.0
    # grpc.health.v1 checks while connected; after `health_failures` failed ones in a row the
    # connection is given up (and a launched provider killed and restarted).
    health_interval_seconds: float = 1.0
    health_failures: int = 3

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> RemoteSettings:
        """The settings table, checked: ValueError naming the key and what is wrong."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"unknown remote provider setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        endpoint = str(settings.get("endpoint", ""))
        raw_command = settings.get("command", ())
        if isinstance(raw_command, str) or not all(isinstance(part, str) for part in raw_command):
            raise ValueError("command must be a list of strings: the program and its arguments")
        command = tuple(raw_command)
        if bool(endpoint) == bool(command):
            raise ValueError("a remote provider needs exactly one of endpoint (it runs already) or command (launch it)")
        raw_tls = settings.get("tls")
        tls = None
        if raw_tls is not None:
            if not isinstance(raw_tls, Mapping):
                raise ValueError("tls must be a table (ca_file, cert_file, key_file, server_name)")
            extra = sorted(set(raw_tls) - {f.name for f in fields(TlsSettings)})
            if extra:
                raise ValueError(f"unknown tls setting(s): {', '.join(extra)}")
            tls = TlsSettings(**{key: str(value) for key, value in raw_tls.items()})
            if bool(tls.cert_file) != bool(tls.key_file):
                raise ValueError("tls: cert_file and key_file go together (the host's certificate for mutual TLS)")
        env = settings.get("env", {})
        if not isinstance(env, Mapping):
            raise ValueError("env must be a table of environment variables")
        numbers: dict[str, Any] = {}
        for name in (
            "start_timeout_seconds",
            "call_timeout_seconds",
            "restart_backoff_initial_seconds",
            "restart_backoff_max_seconds",
            "stop_grace_seconds",
            "health_interval_seconds",
        ):
            if name in settings:
                value = float(settings[name])
                if value <= 0:
                    raise ValueError(f"{name} must be positive")
                numbers[name] = value
        if "health_failures" in settings:
            numbers["health_failures"] = int(settings["health_failures"])
            if numbers["health_failures"] < 1:
                raise ValueError("health_failures must be at least 1")
        parsed = cls(endpoint, command, {str(k): str(v) for k, v in env.items()}, tls, **numbers)
        if endpoint:
            parsed.check_endpoint()
        return parsed

    @property
    def target(self) -> str:
        """The gRPC target of `endpoint`: `unix:///path` stays as it is; `host:port` too."""
        return self.endpoint

    def check_endpoint(self) -> None:
        if self.endpoint.startswith("unix:"):
            if self.tls is not None and not self.tls.ca_file:
                raise ValueError("tls over a Unix socket needs ca_file")
            return
        host, sep, port = self.endpoint.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"endpoint must be unix:///path or HOST:PORT, not {self.endpoint!r}")
        if self.tls is None and not is_loopback(host):
            raise ValueError(
                f"endpoint {self.endpoint!r} is not a loopback address: set [tls] (mutual TLS keeps other "
                "clients out; the protocol has no authentication of its own)"
            )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
