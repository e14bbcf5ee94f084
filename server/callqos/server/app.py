"""Wiring: build the store, the providers and the service from a Config, serve gRPC with health
and reflection, and shut down gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callqos.server.calls import CallManager
from callqos.server.config import Config
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProviders
from callqos.server.ledger import Ledger
from callqos.server.service import CallQosServicer, add_to_server
from callqos.server.store.sqlite import MEMORY, SqliteStore
from callqos.server.telemetry import Telemetry
from callqos.server.telemetry import setup as telemetry_setup
from callqos.server.telemetry.interceptor import TelemetryInterceptor
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger("callqos.server")

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["CallQosService"].full_name
PRUNE_INTERVAL_SECONDS = 60.0


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
    calls: CallManager
    providers: HostedProviders
    store: SqliteStore
    ledger: Ledger
    servicer: CallQosServicer
    config: Config
    telemetry: Telemetry
    _pruner: asyncio.Task[None] | None = None
    _owns_telemetry: bool = True

    async def stop(self) -> None:
        """Health NOT_SERVING, end watch streams (UNAVAILABLE, resumable), drain in-flight RPCs
        for the grace period, then stop providers and close the store."""
        log.info("shutting down", extra={"grace_seconds": self.config.shutdown_grace_seconds})
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await self.server.stop(self.config.shutdown_grace_seconds)
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        await self.ledger.stop()
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

    async def _prune_forever(self) -> None:
        while True:
            try:
                dropped = await self.prune()
                if dropped:
                    log.info("pruned events beyond retention", extra={"dropped": dropped})
            except Exception:
                log.exception("event pruning failed")
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)


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
    store = SqliteStore(MEMORY if config.storage == "memory" else config.database_path)
    hub = EventHub(store)
    await hub.start()
    providers = HostedProviders(
        config.providers, config.default_provider, config.provider_timeout_seconds, telemetry=instruments
    )
    calls = CallManager(store, hub, providers, telemetry=instruments)
    ledger = Ledger(
        store,
        providers,
        calls,
        instruments,
        reconcile_interval_seconds=config.reconcile_interval_seconds,
        release_retry_max_seconds=config.release_retry_max_seconds,
    )
    # Capacities set with UpdateLink first, so that restored calls are re-taken under them; then
    # the calls; then the releases still owed and a reconciliation, before serving.
    await ledger.put_back_link_capacities()
    await calls.start()
    await ledger.start()
    for call in await store.connected_calls():
        instruments.call_committed(call)
    for info in providers.all():
        await providers.refresh_link_metrics(info)

    # The telemetry interceptor runs first, so the span covers the other interceptors too.
    tracing = TelemetryInterceptor(instruments, telemetry.excluded_services)
    server = grpc.aio.server(options=grpc_options(config), interceptors=[tracing, *(interceptors or [])])
    servicer = CallQosServicer(calls, hub, providers, config.max_watchers, ledger)
    instruments.open_watch_streams = lambda: servicer.open_watchers
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    port = server.add_insecure_port(config.listen)
    if port == 0:
        await store.close()
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Running(server, port, health_servicer, hub, calls, providers, store, ledger, servicer, config, telemetry)
    running._pruner = asyncio.create_task(running._prune_forever())
    host = config.listen.rpartition(":")[0]
    log.info(
        "serving",
        extra={
            "address": f"{host}:{port}",
            "storage": config.storage,
            "database": str(config.database_path) if config.storage == "sqlite" else None,
            "providers": [info.id for info in providers.all()],
            "default_provider": config.default_provider,
        },
    )
    if config.port_file is not None:
        tmp = config.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(config.port_file)  # atomic: a reader never sees a half-written file
    return running


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
