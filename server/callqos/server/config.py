"""The server's configuration: one typed object, loaded from TOML, then `CALLQOS_*` environment
variables, then command-line flags — each overriding the one before — on top of the embedded
defaults (127.0.0.1:50051, SQLite under ./callqos-data, the reference and no-qos providers).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callqos import wire

ENV_PREFIX = "CALLQOS_"
STORAGES = ("sqlite", "memory", "postgresql")
# "auto": uvloop where it is installed (a dependency of callqos-server except on Windows), else
# asyncio's own loop.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
# The shipped authenticators (callqos.server.security.authn), in the order a request is tried.
AUTHENTICATORS = ("header", "jwt", "mtls")
# Signature algorithms a JWT may use: asymmetric only. Keys come from a JWKS (public keys), so an
# HMAC algorithm could only ever verify with a public key as its secret — the key-confusion
# attack (RFC 8725 2.1) — and "none" verifies nothing.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_JWT_LEEWAY_SECONDS = 300.0
# The range of a no-answer timeout, the server's default and a line's own alike.
MIN_NO_ANSWER_SECONDS = 1.0
MAX_NO_ANSWER_SECONDS = 600.0
# The range of a call's lease (CreateCall's lease_duration, ExtendCall's), and of the server's
# max_lease_seconds: at least a second, and at most 366 days even on a server without a maximum.
MIN_LEASE_SECONDS = 1.0
LEASE_CEILING_SECONDS = 366 * 24 * 3600.0


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def _default_providers() -> dict[str, dict[str, Any]]:
    return {"reference": {}, "no-qos": {}}


@dataclass
class Config:
    # Where to listen: HOST:PORT (port 0: any free one). Only this address is bound. The default
    # is where clients connect by default; clients given only CALLQOS_LISTEN connect there too
    # (callqos.wire.ADDRESS_CONVENTION).
    listen: str = wire.DEFAULT_TARGET
    # SQLite file lives here (callqos.db).
    data_dir: Path = Path("callqos-data")
    # "sqlite" (durable, default; one process owns the file), "memory" (lost at exit; for tests
    # and demos) or "postgresql" (the database at `database_url`, shared by any number of replicas).
    storage: str = "sqlite"
    # storage = "postgresql": the libpq connection string or URL (postgresql://user:pass@host/db).
    # The operator's, like every setting; best from the CALLQOS_DATABASE_URL environment variable
    # (a Secret), not a file or a flag. Never logged with its password.
    database_url: str = field(default="", repr=False)
    # storage = "postgresql": pooled connections per replica (each also keeps 4 of its own: the
    # commit listener, the leader's lock and two for key locks).
    database_pool_size: int = 10
    # storage = "postgresql": a watcher learns of other replicas' events by NOTIFY at once, and by
    # polling this often in any case (a notification lost with a dropped connection).
    event_poll_seconds: float = 1.0
    # storage = "postgresql": how often a replica that does not lead tries to take the lead, and
    # the leader runs its duties (ringing out offers whose replica died, reconciling the shared
    # admission ledger); a dead leader is replaced within about this long.
    leader_check_seconds: float = 2.0
    # Provider id → its settings table; `plugin` in the table names the entry point or
    # module:Class (default: the id itself); `threaded = true` runs it on a thread of its own.
    providers: dict[str, dict[str, Any]] = field(default_factory=_default_providers)
    # Calls that name no provider go here.
    default_provider: str = "reference"
    # A provider that does not answer in this time fails the request (PROVIDER_UNAVAILABLE).
    provider_timeout_seconds: float = 5.0
    # A provider's start (re-taking the calls it held; a remote provider's launch, connection and
    # restore) may take this long, once, before the server serves; past it the start has failed.
    provider_start_timeout_seconds: float = 30.0
    # A provider call past its deadline is cancelled; one that still has not ended this much later
    # is abandoned (it ignores cancellation): its call fails and its locks are freed.
    provider_cancel_grace_seconds: float = 1.0
    # The event loop blocked this long (by a provider, usually) is logged as a warning naming the
    # provider that was running.
    loop_lag_warning_seconds: float = 0.25
    # Event retention: the newest N events are kept, and none older than the age (0 = no limit).
    event_retention_count: int = 100_000
    event_retention_seconds: int = 7 * 24 * 3600
    # gRPC limits, set explicitly rather than left to library defaults.
    max_message_bytes: int = 1 << 20
    max_metadata_bytes: int = 16 << 10  # request headers of one RPC
    max_concurrent_streams: int = 256  # per HTTP/2 connection; streams beyond it are refused (retryable)
    max_connections: int = 500  # open client connections; more are closed at once (retryable)
    # RPCs received but not yet picked up by the server. At least max_connections x
    # max_concurrent_streams, so that gRPC never cancels an RPC for want of room: overload is
    # refused before it gets here, with statuses clients retry.
    max_pending_rpcs: int = 128_000
    max_watchers: int = 1000  # open WatchEvents streams across all connections
    # Of which one principal (of a tenant) may hold this many, whatever its tenant's quota: a
    # principal holds at most the lower of this and quota_watchers_per_principal (watchers.py).
    max_watchers_per_principal: int = 250
    # A watcher whose cursor has not moved for watch_stall_seconds while more than
    # watch_backlog_events newer events wait for it is cut (UNAVAILABLE WATCHER_TOO_SLOW; clients
    # resume from their cursor), so an unread stream cannot hold its slot and buffers for ever.
    watch_stall_seconds: float = 30.0
    watch_backlog_events: int = 1000
    # On SIGTERM/SIGINT: health goes NOT_SERVING, watchers are ended, in-flight RPCs get this long.
    shutdown_grace_seconds: float = 5.0
    # The whole shutdown takes at most this long; then the process exits whatever a provider does.
    shutdown_timeout_seconds: float = 10.0
    # The ledger (operator settings): how often the providers that list their reservations are
    # reconciled with the connected calls (0 = only at start-up; with storage = "postgresql" it
    # must be positive: the leading replica's passes are what put right a replica that died
    # mid-operation), and the longest wait between two
    # attempts at a release a provider has not confirmed (the wait doubles from 0.5 s up to it).
    reconcile_interval_seconds: float = 60.0
    release_retry_max_seconds: float = 60.0
    reflection: bool = True
    log_level: str = "info"
    # The event loop the server runs on: "auto" (uvloop where installed, else asyncio's),
    # "uvloop" (fails to start without it) or "asyncio". uvloop is the faster (README "Performance").
    event_loop: str = "auto"
    # Written with the bound port once serving (useful with listen = "127.0.0.1:0").
    port_file: Path | None = None
    # HOST:PORT of a Prometheus /metrics endpoint; "" = off. Exporters, sampler and service name
    # are set by the standard OTEL_* variables instead (see deploy/README.md).
    metrics_listen: str = ""
    # HOST:PORT of a plaintext listener serving only grpc.health.v1 (for probes that cannot speak
    # TLS, such as Kubernetes' grpc probe); "" = off. Health is served on `listen` too.
    health_listen: str = ""
    # How long a call offered on a line rings before it is disconnected NO_ANSWER, unless the
    # line sets its own no_answer_timeout when it is opened (whoever opens a line may).
    no_answer_seconds: float = 30.0
    # The longest lease a call may have (CreateCall and ExtendCall ask at most this; more is
    # INVALID_ARGUMENT), and the lease of a call that asks for none. 0: no maximum, and a call
    # that asks for no lease has none. Set, no call holds a reservation longer than this after
    # its owner last made or extended it.
    max_lease_seconds: float = 0.0

    # -- security (README "Security") -----------------------------------------------------------
    # TLS on `listen`: the server's certificate chain and key (PEM files, re-read when they change).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA certificates (PEM) that sign client certificates. Set: every client must present one (mTLS).
    tls_client_ca: Path | None = None
    # Which authenticators identify callers: any of "mtls", "jwt", "header". None (the default) is
    # development mode: the x-callqos-principal header is believed from anyone (default
    # "anonymous"), one tenant, the `unauthenticated_roles`; only allowed on a loopback `listen`.
    authenticators: list[str] = field(default_factory=list)
    # Allow development mode on a non-loopback `listen` (anyone who can connect is anyone they
    # claim to be). Logged as a warning at every start.
    insecure_allow_unauthenticated: bool = False
    # Allow authenticators without TLS on a non-loopback `listen` (tokens cross the network in
    # the clear). Logged as a warning at every start.
    insecure_allow_plaintext: bool = False
    # unix:PATH: a listener for an authenticating proxy on the same host; the "header"
    # authenticator believes the x-callqos-principal/-tenant/-roles headers of its peers.
    proxy_listen: str = ""
    # mTLS principals (see `mtls`) of proxies whose x-callqos-* headers the "header" authenticator believes.
    trusted_proxies: list[str] = field(default_factory=list)
    # "jwt": bearer tokens, verified against the keys of a JWKS (a file, or an https URL).
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_jwks_file: Path | None = None
    jwt_jwks_url: str = ""
    jwt_algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    jwt_leeway_seconds: float = 30.0  # clock skew allowed on exp, nbf and iat (at most 300)
    jwt_principal_claim: str = "sub"
    jwt_tenant_claim: str = ""  # "" = every token's principal is in the default tenant; else required
    jwt_roles_claim: str = "roles"  # a list of role names, or one space-separated string
    jwks_cache_seconds: float = 300.0  # keys are re-read this often
    jwks_min_refresh_seconds: float = 30.0  # and at most this often for a token with an unknown kid
    # "mtls": the principal is the client certificate's SPIFFE ID (its one URI SAN, spiffe://...),
    # else its first DNS SAN, else its subject CN. With a trust domain, other SPIFFE IDs are refused.
    mtls_trust_domain: str = ""
    # Principal → {tenant = "...", roles = [...]}: the tenant and roles of identities that carry none
    # of their own (client certificates), or extra roles for any principal.
    principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Roles of an authenticated principal that got none from its credential or `principals`.
    default_roles: list[str] = field(default_factory=lambda: ["caller"])
    # Roles of every caller in development mode (today's behaviour: create, read, watch, change links).
    unauthenticated_roles: list[str] = field(default_factory=lambda: ["caller", "monitor", "operator"])
    # Role → permissions, replacing or adding to the built-in roles (caller, monitor, operator,
    # admin; see callqos.server.security.authz).
    roles: dict[str, list[str]] = field(default_factory=dict)
    # Quotas of every tenant (0 = unlimited): connected calls, and reserved bytes/s in each
    # direction; and open WatchEvents streams of one principal.
    quota_active_calls: int = 0
    quota_reserved_bytes_per_second: int = 0
    quota_watchers_per_principal: int = 0
    # Tenant → {active_calls, reserved_bytes_per_second, watchers_per_principal}: per-tenant overrides.
    tenant_quotas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.storage not in STORAGES:
            raise ConfigError(f"storage must be one of {', '.join(STORAGES)}, not {self.storage!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        if self.storage == "postgresql" and not self.database_url:
            raise ConfigError("storage = postgresql needs database_url (or CALLQOS_DATABASE_URL)")
        remote = [pid for pid, settings in self.providers.items() if str(settings.get("plugin", pid)) == "remote"]
        if self.storage == "postgresql" and remote:
            # Each replica would mirror only its own calls into the provider (one replica's
            # Restore would release the others'), or launch a provider of its own (each admitting
            # the whole capacity): refused rather than over-admitting (SPEC.md REPL-2).
            raise ConfigError(
                f"provider {', '.join(remote)} runs out of process (plugin = remote), which several replicas "
                "cannot share yet (storage = postgresql): host it in one server process on SQLite"
            )
        if self.database_pool_size < 2:
            raise ConfigError("database_pool_size must be at least 2")
        for name in ("event_poll_seconds", "leader_check_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.default_provider not in self.providers:
            raise ConfigError(
                f"default_provider {self.default_provider!r} is not among the configured providers "
                f"({', '.join(self.providers) or 'none'})"
            )
        check_address("listen", self.listen)
        if self.metrics_listen:
            check_address("metrics_listen", self.metrics_listen, empty="or empty")
        for name in (
            "provider_timeout_seconds",
            "provider_start_timeout_seconds",
            "provider_cancel_grace_seconds",
            "loop_lag_warning_seconds",
            "watch_stall_seconds",
            "shutdown_grace_seconds",
            "shutdown_timeout_seconds",
            "release_retry_max_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.reconcile_interval_seconds < 0:
            raise ConfigError("reconcile_interval_seconds must not be negative")
        if self.storage == "postgresql" and self.reconcile_interval_seconds == 0:
            raise ConfigError(
                "reconcile_interval_seconds must be positive with storage = postgresql: replicas reconcile only "
                "periodically, on the leading replica (what a replica that died mid-operation left behind)"
            )
        for name in (
            "event_retention_count",
            "max_message_bytes",
            "max_metadata_bytes",
            "max_concurrent_streams",
            "max_connections",
            "max_pending_rpcs",
            "max_watchers",
            "max_watchers_per_principal",
            "watch_backlog_events",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.event_retention_seconds < 0:
            raise ConfigError("event_retention_seconds must not be negative")
        if self.health_listen:
            check_address("health_listen", self.health_listen, empty="or empty")
        if not MIN_NO_ANSWER_SECONDS <= self.no_answer_seconds <= MAX_NO_ANSWER_SECONDS:
            raise ConfigError(
                f"no_answer_seconds must be between {MIN_NO_ANSWER_SECONDS:g} and {MAX_NO_ANSWER_SECONDS:g}"
            )
        if self.max_lease_seconds and not MIN_LEASE_SECONDS <= self.max_lease_seconds <= LEASE_CEILING_SECONDS:
            raise ConfigError(
                f"max_lease_seconds must be 0 (no maximum) or between {MIN_LEASE_SECONDS:g} and "
                f"{LEASE_CEILING_SECONDS:.10g} (366 days)"
            )
        if self.max_pending_rpcs < self.max_connections * self.max_concurrent_streams:
            raise ConfigError(
                f"max_pending_rpcs ({self.max_pending_rpcs}) must be at least max_connections x "
                f"max_concurrent_streams ({self.max_connections} x {self.max_concurrent_streams} = "
                f"{self.max_connections * self.max_concurrent_streams}), or gRPC would cancel RPCs under load"
            )
        if self.shutdown_timeout_seconds <= self.shutdown_grace_seconds:
            raise ConfigError(
                f"shutdown_timeout_seconds ({self.shutdown_timeout_seconds:g}) must exceed "
                f"shutdown_grace_seconds ({self.shutdown_grace_seconds:g})"
            )
        self._validate_security()

    def _validate_security(self) -> None:
        """The security settings fit together, and the server is not exposed by mistake. (What
        the role and quota tables contain is checked where they are built, in
        callqos.server.security, when the server starts.)"""
        unknown = sorted(set(self.authenticators) - set(AUTHENTICATORS))
        if unknown:
            raise ConfigError(f"authenticators: unknown {', '.join(unknown)} (known: {', '.join(AUTHENTICATORS)})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key (mTLS is TLS first)")
        on = set(self.authenticators)
        if "mtls" in on and self.tls_client_ca is None:
            raise ConfigError("the mtls authenticator needs tls_client_ca (the CA of client certificates)")
        if self.trusted_proxies and "mtls" not in on:
            raise ConfigError("trusted_proxies are mTLS principals: add mtls to authenticators")
        if "header" in on and not (self.proxy_listen or self.trusted_proxies):
            raise ConfigError(
                "the header authenticator needs a trusted peer: proxy_listen (a unix socket) or trusted_proxies"
            )
        if (self.proxy_listen or self.trusted_proxies) and "header" not in on:
            raise ConfigError("proxy_listen and trusted_proxies are for the header authenticator: add it")
        if self.proxy_listen and not self.proxy_listen.startswith("unix:"):
            raise ConfigError(f"proxy_listen must be unix:PATH, not {self.proxy_listen!r}")
        if "jwt" in on:
            if not self.jwt_issuer or not self.jwt_audience:
                raise ConfigError("the jwt authenticator needs jwt_issuer and jwt_audience")
            if (self.jwt_jwks_file is None) == (not self.jwt_jwks_url):
                raise ConfigError("the jwt authenticator needs exactly one of jwt_jwks_file and jwt_jwks_url")
            if self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://127.", "http://localhost")):
                raise ConfigError("jwt_jwks_url must be https (plain http only on loopback)")
        bad = [name for name in self.jwt_algorithms if name not in JWT_ALGORITHMS]
        if bad or not self.jwt_algorithms:
            raise ConfigError(
                f"jwt_algorithms: {', '.join(bad) or 'none given'} not allowed (asymmetric only: "
                f"{', '.join(JWT_ALGORITHMS)})"
            )
        if not 0 <= self.jwt_leeway_seconds <= MAX_JWT_LEEWAY_SECONDS:
            raise ConfigError(f"jwt_leeway_seconds must be between 0 and {MAX_JWT_LEEWAY_SECONDS:g}")
        if self.jwks_cache_seconds <= 0 or self.jwks_min_refresh_seconds < 0:
            raise ConfigError("jwks_cache_seconds must be positive and jwks_min_refresh_seconds not negative")
        for name in ("quota_active_calls", "quota_reserved_bytes_per_second", "quota_watchers_per_principal"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (0 = unlimited)")
        if not is_loopback(self.listen):
            if not on and not self.insecure_allow_unauthenticated:
                raise ConfigError(
                    f"listen {self.listen} is not a loopback address and no authenticator is configured: anyone "
                    "who can connect could act as anyone. Configure authenticators (and TLS), or set "
                    "insecure_allow_unauthenticated = true if that is really meant"
                )
            if on and self.tls_cert is None and not self.insecure_allow_plaintext:
                raise ConfigError(
                    f"listen {self.listen} is not a loopback address and TLS is off: credentials would cross the "
                    "network in the clear. Set tls_cert and tls_key, or insecure_allow_plaintext = true"
                )

    @property
    def development_mode(self) -> bool:
        """No authenticator: every caller is who its x-callqos-principal header says."""
        return not self.authenticators

    @property
    def database_path(self) -> Path:
        return self.data_dir / "callqos.db"


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT listens on loopback only (127.0.0.0/8, ::1, localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(name: str, value: str, empty: str = "") -> None:
    """HOST:PORT with a port in 0-65535 (0: any free port); IPv6 hosts in brackets."""
    host, sep, port = value.rpartition(":")
    usage = f"{name} must be HOST:PORT{' ' + empty if empty else ''}, not {value!r}"
    if not sep or not host or not port.isdigit():
        raise ConfigError(usage)
    if int(port) > 65535:
        raise ConfigError(f"{name}: port {port} is out of range (0-65535)")


# Every setting by name: what a TOML key, a CALLQOS_<SETTING> variable or a flag may set.
SETTINGS = {f.name: f for f in dataclasses.fields(Config)}
# Settings that are tables (TOML only); lists are TOML arrays or comma-separated in env and flags.
TABLES = frozenset({"providers", "principals", "roles", "tenant_quotas"})


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
        if name in TABLES:
            if not isinstance(value, Mapping):
                raise TypeError("a table")
            return {str(k): (dict(v) if isinstance(v, Mapping) else list(v)) for k, v in value.items()}
        if isinstance(default, list):
            if isinstance(value, str):  # env/flag form: "mtls,jwt"
                return [item.strip() for item in value.split(",") if item.strip()]
            if not isinstance(value, list):
                raise TypeError("a list")
            return [str(item) for item in value]
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
