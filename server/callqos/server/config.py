"""The server's configuration: one typed object, loaded from TOML, then `CALLQOS_*` environment
variables, then command-line flags — each overriding the one before — on top of the embedded
defaults (127.0.0.1:50051, SQLite under ./callqos-data, the reference and no-qos providers).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callqos import wire

ENV_PREFIX = "CALLQOS_"
STORAGES = ("sqlite", "memory")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def _default_providers() -> dict[str, dict[str, Any]]:
    return {"reference": {}, "no-qos": {}}


@dataclass
class Config:
    # Where to listen. Only this address is bound. The default is where clients connect by default.
    listen: str = wire.DEFAULT_TARGET
    # SQLite file lives here (callqos.db).
    data_dir: Path = Path("callqos-data")
    # "sqlite" (durable, default) or "memory" (lost at exit; for tests and demos).
    storage: str = "sqlite"
    # Provider id → its settings table; `plugin` in the table names the entry point or
    # module:Class (default: the id itself).
    providers: dict[str, dict[str, Any]] = field(default_factory=_default_providers)
    # Calls that name no provider go here.
    default_provider: str = "reference"
    # A provider that does not answer in this time fails the request (PROVIDER_UNAVAILABLE).
    provider_timeout_seconds: float = 5.0
    # Event retention: the newest N events are kept, and none older than the age (0 = no limit).
    event_retention_count: int = 100_000
    event_retention_seconds: int = 7 * 24 * 3600
    # gRPC limits, set explicitly rather than left to library defaults.
    max_message_bytes: int = 1 << 20
    max_concurrent_streams: int = 256  # per HTTP/2 connection
    max_watchers: int = 1000  # open WatchEvents streams across all connections
    # On SIGTERM/SIGINT: health goes NOT_SERVING, watchers are ended, in-flight RPCs get this long.
    shutdown_grace_seconds: float = 5.0
    # The ledger (operator settings): how often the providers that list their reservations are
    # reconciled with the connected calls (0 = only at start-up), and the longest wait between two
    # attempts at a release a provider has not confirmed (the wait doubles from 0.5 s up to it).
    reconcile_interval_seconds: float = 60.0
    release_retry_max_seconds: float = 60.0
    reflection: bool = True
    log_level: str = "info"
    # Written with the bound port once serving (useful with listen = "127.0.0.1:0").
    port_file: Path | None = None
    # HOST:PORT of a Prometheus /metrics endpoint; "" = off. Exporters, sampler and service name
    # are set by the standard OTEL_* variables instead (see deploy/README.md).
    metrics_listen: str = ""

    def validate(self) -> None:
        if self.storage not in STORAGES:
            raise ConfigError(f"storage must be one of {', '.join(STORAGES)}, not {self.storage!r}")
        if self.default_provider not in self.providers:
            raise ConfigError(
                f"default_provider {self.default_provider!r} is not among the configured providers "
                f"({', '.join(self.providers) or 'none'})"
            )
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"listen must be HOST:PORT, not {self.listen!r}")
        if self.metrics_listen:
            host, sep, port = self.metrics_listen.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"metrics_listen must be HOST:PORT or empty, not {self.metrics_listen!r}")
        for name in ("provider_timeout_seconds", "shutdown_grace_seconds", "release_retry_max_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.reconcile_interval_seconds < 0:
            raise ConfigError("reconcile_interval_seconds must not be negative")
        for name in ("event_retention_count", "max_message_bytes", "max_concurrent_streams", "max_watchers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.event_retention_seconds < 0:
            raise ConfigError("event_retention_seconds must not be negative")

    @property
    def database_path(self) -> Path:
        return self.data_dir / "callqos.db"


# Every setting by name: what a TOML key, a CALLQOS_<SETTING> variable or a flag may set.
SETTINGS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """A raw value from TOML, env or flags, as the field's type."""
    default = getattr(Config(), name)
    kind = SETTINGS[name].type
    try:
        if name == "providers":
            if isinstance(value, str):  # env/flag form: "reference,no-qos"
                return {p.strip(): {} for p in value.split(",") if p.strip()}
            if isinstance(value, list):
                return {str(p): {} for p in value}
            if not isinstance(value, Mapping):
                raise TypeError("a table of provider settings")
            return {str(k): dict(v) for k, v in value.items()}
        if "Path" in str(kind):
            return Path(value) if value not in (None, "") else None
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r} ({exc})") from exc


def _apply(config: Config, values: Mapping[str, Any], origin: str) -> None:
    for key, value in values.items():
        if key not in SETTINGS:
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        setattr(config, key, _coerce(key, value))


def load(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults ← TOML file ← CALLQOS_* environment ← flags (None flags are ignored)."""
    env = os.environ if env is None else env
    config = Config()
    path = config_file or (Path(env["CALLQOS_CONFIG"]) if env.get("CALLQOS_CONFIG") else None)
    if path is not None:
        try:
            with open(path, "rb") as handle:
                _apply(config, tomllib.load(handle), str(path))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key != "CALLQOS_CONFIG" and key[len(ENV_PREFIX) :].lower() in SETTINGS
    }
    _apply(config, from_env, "environment")
    _apply(config, {k: v for k, v in (flags or {}).items() if v is not None}, "flags")
    config.validate()
    return config
