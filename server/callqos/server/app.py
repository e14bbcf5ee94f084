"""Wiring: build the store, the providers and the service from a Config, serve gRPC with health
and reflection (over TLS when configured, with the proxy socket and the plaintext health port when
asked for), run the background work (`background`), and shut down gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callqos.server.background import Background
from callqos.server.config import Config, is_loopback
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProviders
from callqos.server.incoming import Switchboard
from callqos.server.lines import LineManager
from callqos.server.security.guard import Guard
from callqos.server.security.tls import CertificateFiles
from callqos.server.service import CallQosServicer, add_to_server
from callqos.server.store.base import Store
from callqos.server.store.sqlite import MEMORY, SqliteStore
from callqos.server.telemetry import Telemetry
from callqos.server.telemetry import setup as telemetry_setup
from callqos.server.telemetry.interceptor import TelemetryInterceptor
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger("callqos.server")

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["CallQosService"].full_name


def grpc_options(config: Config) -> list[tuple[str, int]]:
    """Limits set explicitly, not left to library defaults."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        # Keepalive: let long-lived watch streams survive idle NATs, and let clients ping
        # every 10 s or more without being told GOAWAY too_many_pings.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class Running:
    """A started server, for `serve` and for tests that run one in-process."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    hub: EventHub
    calls: Switchboard
    providers: HostedProviders
    store: Store
    servicer: CallQosServicer
    config: Config
    telemetry: Telemetry
    guard: Guard | None = None
    # The TLS files being watched (None: plaintext), and the plaintext health-only server.
    certificates: CertificateFiles | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    background: Background | None = None
    _owns_telemetry: bool = True

    async def stop(self) -> None:
        """Health NOT_SERVING, end watch streams (UNAVAILABLE, resumable), drain in-flight RPCs
        for the grace period, then stop providers and close the store."""
        log.info("shutting down", extra={"grace_seconds": self.config.shutdown_grace_seconds})
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await self.server.stop(self.config.shutdown_grace_seconds)
        await self.calls.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.background is not None:
            await self.background.stop()
        await self.providers.stop()
        await self.store.close()
        if self.config.port_file is not None:
            self.config.port_file.unlink(missing_ok=True)
        log.info("stopped")
        if self._owns_telemetry:
            self.telemetry.shutdown()  # last: flushes the spans of the shutdown itself

    async def prune(self) -> int:
        older_than_us = 0
        if self.config.event_retention_seconds:
            older_than_us = (time.time_ns() // 1000) - self.config.event_retention_seconds * 1_000_000
        return await self.store.prune_events(keep_last=self.config.event_retention_count, older_than_us=older_than_us)

    async def set_serving(self, serving: bool) -> None:
        """Readiness: NOT_SERVING while the store cannot be reached (see `background`)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


async def open_store(config: Config) -> Store:
    """The store the configuration names: SQLite (a file one process owns, or memory), or the
    PostgreSQL database at `database_url` that any number of replicas share."""
    if config.storage == "postgresql":
        # psycopg comes with the [postgresql] extra: only a server that uses it imports it.
        from callqos.server.store.postgres import PostgresStore

        return await PostgresStore.open(
            config.database_url, pool_size=config.database_pool_size, poll_seconds=config.event_poll_seconds
        )
    return SqliteStore(MEMORY if config.storage == "memory" else config.database_path)


async def start(
    config: Config,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
    telemetry: Telemetry | None = None,
) -> Running:
    """Serve `config`. Telemetry comes from the OTEL_* environment unless given (tests pass
    providers with in-memory exporters); a given one is not shut down by `stop`."""
    owns_telemetry = telemetry is None
    if telemetry is None:
        telemetry = telemetry_setup.from_environment(config.metrics_listen)
    try:
        running = await _start(config, interceptors, telemetry)
    except BaseException:
        if owns_telemetry:
            telemetry.shutdown()
        raise
    running._owns_telemetry = owns_telemetry
    return running


async def _start(
    config: Config, interceptors: list[grpc.aio.ServerInterceptor] | None, telemetry: Telemetry
) -> Running:
    instruments = telemetry.instruments()
    store = await open_store(config)
    hub = EventHub(store)
    await hub.start()
    providers = HostedProviders(
        config.providers,
        config.default_provider,
        config.provider_timeout_seconds,
        telemetry=instruments,
        ledger=store.shared_ledger(),
    )
    guard = Guard(config)
    await guard.start()
    lines = LineManager(store, config.no_answer_seconds)
    calls = Switchboard(store, hub, providers, instruments, lines, quotas=guard.quotas)
    await calls.start()
    for call in await store.connected_calls():
        instruments.call_committed(call)
    for info in providers.all():
        await providers.refresh_link_metrics(info)

    # The telemetry interceptor runs first, so the span covers the other interceptors too.
    tracing = TelemetryInterceptor(instruments, telemetry.excluded_services)
    server = grpc.aio.server(options=grpc_options(config), interceptors=[tracing, *(interceptors or [])])
    servicer = CallQosServicer(calls, hub, providers, config.max_watchers, guard, lines)
    instruments.open_watch_streams = lambda: servicer.open_watchers
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    certificates = None
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            certificates = CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
            port = server.add_secure_port(config.listen, certificates.credentials())
        else:
            port = server.add_insecure_port(config.listen)
        if port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        if config.proxy_listen and server.add_insecure_port(config.proxy_listen) == 0:
            raise OSError(f"cannot listen on {config.proxy_listen}")
    except (OSError, RuntimeError, ValueError) as exc:
        await store.close()
        raise OSError(str(exc)) from exc
    health_server, health_port = None, 0
    if config.health_listen:
        # Probes that cannot speak TLS (Kubernetes' grpc probe) ask here; it serves nothing else.
        health_server = grpc.aio.server(options=grpc_options(config))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(config.health_listen)
        if health_port == 0:
            await store.close()
            raise OSError(f"cannot listen on {config.health_listen}")
        await health_server.start()
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Running(
        server,
        port,
        health_servicer,
        hub,
        calls,
        providers,
        store,
        servicer,
        config,
        telemetry,
        guard=guard,
        certificates=certificates,
        health_server=health_server,
        health_port=health_port,
    )
    running.background = Background(
        store,
        calls,
        prune=running.prune,
        leader_check_seconds=config.leader_check_seconds,
        set_serving=running.set_serving,
    )
    running.background.start()
    host = config.listen.rpartition(":")[0]
    log.info(
        "serving",
        extra={
            "address": f"{host}:{port}",
            "storage": config.storage,
            "database": _database_shown(config),
            "providers": [info.id for info in providers.all()],
            "default_provider": config.default_provider,
            "tls": "mtls" if config.tls_client_ca else "tls" if certificates else "off",
            "authenticators": config.authenticators or ["none (development mode)"],
            "proxy_listen": config.proxy_listen or None,
            "health_listen": f"{config.health_listen.rpartition(':')[0]}:{health_port}" if health_server else None,
        },
    )
    _warn_if_exposed(config)
    if config.port_file is not None:
        tmp = config.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(config.port_file)  # atomic: a reader never sees a half-written file
    return running


def _database_shown(config: Config) -> str | None:
    """Where the data is, as it may be logged (a DSN without its password)."""
    if config.storage == "sqlite":
        return str(config.database_path)
    if config.storage == "postgresql":
        from callqos.server.store.pg_coordination import shown

        return shown(config.database_url)
    return None


def _warn_if_exposed(config: Config) -> None:
    """Say loudly, at every start, when the operator chose to expose the server unsafely (the
    configuration refuses to start without the explicit insecure_* setting)."""
    if is_loopback(config.listen):
        return
    if config.development_mode:
        log.warning(
            "INSECURE: serving %s with no authenticator (insecure_allow_unauthenticated): anyone who can reach "
            "it can act as any principal, read every call and change link capacity",
            config.listen,
        )
    elif config.tls_cert is None:
        log.warning(
            "INSECURE: serving %s without TLS (insecure_allow_plaintext): credentials and calls cross the "
            "network in the clear",
            config.listen,
        )


async def serve(config: Config, telemetry: Telemetry | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (telemetry flushed last)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if telemetry is None:
        telemetry = telemetry_setup.from_environment(config.metrics_listen)
    # The process's providers too, so provider plugins' own spans join the same traces.
    telemetry.install_global()
    try:
        running = await start(config, telemetry=telemetry)
    except BaseException:
        telemetry.shutdown()
        raise
    running._owns_telemetry = True  # flushed at the end of running.stop()
    await stop.wait()
    await running.stop()
