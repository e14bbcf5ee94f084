"""Wiring: build the store, the providers and the service from a Config, serve gRPC with health
and reflection (over TLS when configured, with the proxy socket and the plaintext health port when
asked for), run the background work (`background`), and shut down gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from callqos.server import reflection
from callqos.server.background import Background
from callqos.server.config import Config, ConfigError, is_loopback
from callqos.server.containment import Containment, LoopLag
from callqos.server.events import EventHub
from callqos.server.hosting import HostedProviders
from callqos.server.incoming import Switchboard
from callqos.server.leases import Clock, LeasePolicy
from callqos.server.ledger import Ledger
from callqos.server.lines import LineManager
from callqos.server.security.guard import Guard
from callqos.server.security.tls import CertificateFiles
from callqos.server.service import CallQosServicer, add_to_server
from callqos.server.store.base import Store
from callqos.server.store.sqlite import MEMORY, SqliteStore
from callqos.server.telemetry import Telemetry
from callqos.server.telemetry import setup as telemetry_setup
from callqos.server.telemetry.interceptor import TelemetryInterceptor, observes_rpcs
from callqos.server.watchers import Watchers, WatchLimits
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger("callqos.server")

SERVICE_NAME = svc.DESCRIPTOR.services_by_name["CallQosService"].full_name
GC_YOUNG_THRESHOLD = 10_000


class ListenError(OSError):
    """An address the server cannot listen on; the message says which, and why."""


def check_listen(address: str, setting: str) -> None:
    """Bind `address` (HOST:PORT) once with a plain socket and let go, so that a port in use or a
    host that does not resolve is reported in one line before gRPC tries (whose failure is a core
    log line and an exception). Port 0 (any free port) needs no check."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    try:
        candidates = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {address} ({setting}): {exc.strerror}") from None
    reasons = []
    for family, kind, protocol, _, bound in candidates:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(bound)
                return
            except OSError as exc:
                reasons.append((exc.strerror or str(exc)).lower())
    raise ListenError(f"cannot listen on {address} ({setting}): {reasons[0] if reasons else 'no address'}")


def grpc_options(config: Config) -> list[tuple[str, int]]:
    """Limits set explicitly, not left to library defaults.

    Overload is refused where a retry is safe and cheap, never by cancelling an RPC: a connection
    beyond `max_connections` is closed as it opens, and a stream beyond `max_concurrent_streams`
    on a connection is refused with HTTP/2 REFUSED_STREAM (gRPC's overload protection counts a
    stream until the server has finished with it). Both reach every gRPC client as UNAVAILABLE
    before the request was seen (REFUSED_STREAM is even retried transparently), and the clients'
    policy retries UNAVAILABLE. So at most max_connections x max_concurrent_streams RPCs can be
    waiting for the server, and gRPC's own pending-request limit — which *cancels* RPCs beyond
    it, 1000 by default — is set to `max_pending_rpcs`, which config.validate keeps at least that.
    """
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", config.max_metadata_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.http.overload_protection", 1),
        ("grpc.max_allowed_incoming_connections", config.max_connections),
        ("grpc.server.max_pending_requests", config.max_pending_rpcs),
        ("grpc.server.max_pending_requests_hard_limit", config.max_pending_rpcs),
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
    ledger: Ledger
    servicer: CallQosServicer
    config: Config
    telemetry: Telemetry
    guard: Guard | None = None
    # The TLS files being watched (None: plaintext), and the plaintext health-only server.
    certificates: CertificateFiles | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    # The leader's duties and readiness (`background`); the watchers' supervisor and the
    # loop-lag probe.
    background: Background | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)
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
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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

    async def set_serving(self, serving: bool) -> None:
        """Readiness: the API service NOT_SERVING while the store cannot be reached (see
        `background`), so that a load balancer sends its requests to other replicas. The whole
        server ("", what liveness asks) stays SERVING: restarting it would not bring the
        database back."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(SERVICE_NAME, status)


async def open_store(config: Config) -> Store:
    """The store the configuration names: SQLite (a file one process owns, or memory), or the
    PostgreSQL database at `database_url` that any number of replicas share.

    How commits reach the disk differs, what a caller sees does not. SQLite groups the commits
    ready in the same turn of the loop into one transaction (group commit, store.group): one
    writer per file, so sharing its one WAL sync is what makes it fast. PostgreSQL does not use
    store.group: each commit keeps its own transaction on a pooled connection (several run at once,
    ordered by the event_log row across replicas; the database itself shares a WAL flush among
    concurrent COMMITs). On both, a commit is acknowledged only once durable, and one the storage
    cannot take (a full disk; a database away) raises StoreUnavailable with nothing of it written
    — on SQLite for every commit of its group — which the call manager compensates for and
    answers with UNAVAILABLE / STORAGE_UNAVAILABLE, the same for both backends."""
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
    lease_clock: Clock | None = None,
) -> Running:
    """Serve `config`. Telemetry comes from the OTEL_* environment unless given (tests pass
    providers with in-memory exporters); a given one is not shut down by `stop`. Leases are
    timed by the system clock unless `lease_clock` is given (tests pass a `testing.ManualClock`)."""
    owns_telemetry = telemetry is None
    if telemetry is None:
        telemetry = telemetry_setup.from_environment(config.metrics_listen)
    try:
        running = await _start(config, interceptors, telemetry, lease_clock)
    except BaseException:
        if owns_telemetry:
            telemetry.shutdown()
        raise
    running._owns_telemetry = owns_telemetry
    return running


async def _start(
    config: Config,
    interceptors: list[grpc.aio.ServerInterceptor] | None,
    telemetry: Telemetry,
    lease_clock: Clock | None,
) -> Running:
    store = await open_store(config)
    try:
        return await _start_on(store, config, interceptors, telemetry, lease_clock)
    except BaseException:
        # A start that fails lets go of the store: a database's pool, listener and locks too.
        with contextlib.suppress(Exception):
            await store.close()
        raise


async def _start_on(
    store: Store,
    config: Config,
    interceptors: list[grpc.aio.ServerInterceptor] | None,
    telemetry: Telemetry,
    lease_clock: Clock | None,
) -> Running:
    """Start everything on `store`, in the order a request flows backwards (the providers before
    the calls they hold, the calls before the port that takes requests). A start that fails at
    any step stops, newest first, what the steps before it started — a launched provider process,
    the lease timer, the event hub — so nothing outlives it; `_start` then closes the store."""
    async with contextlib.AsyncExitStack() as undo:
        running = await _start_steps(store, config, interceptors, telemetry, lease_clock, undo)
        undo.pop_all()  # started: the Running server stops them from now on (`Running.stop`)
        return running


async def _start_steps(
    store: Store,
    config: Config,
    interceptors: list[grpc.aio.ServerInterceptor] | None,
    telemetry: Telemetry,
    lease_clock: Clock | None,
    undo: contextlib.AsyncExitStack,
) -> Running:
    instruments = telemetry.instruments()
    hub = EventHub(store)
    await hub.start()
    undo.push_async_callback(hub.close)
    containment = Containment(config.provider_cancel_grace_seconds, config.loop_lag_warning_seconds)
    providers = HostedProviders(
        config.providers,
        config.default_provider,
        config.provider_timeout_seconds,
        telemetry=instruments,
        containment=containment,
        ledger=store.shared_ledger(),
        start_timeout=config.provider_start_timeout_seconds,
    )
    guard = Guard(config)
    await guard.start()
    lines = LineManager(store, config.no_answer_seconds)
    calls = Switchboard(
        store,
        hub,
        providers,
        instruments,
        lines,
        quotas=guard.quotas,
        leases=LeasePolicy(config.max_lease_seconds),
        lease_clock=lease_clock,
    )
    background: Background | None = None  # made once serving; the ledger asks it who leads
    ledger = Ledger(
        store,
        providers,
        calls,
        instruments,
        reconcile_interval_seconds=config.reconcile_interval_seconds,
        release_retry_max_seconds=config.release_retry_max_seconds,
        leading=lambda: background is not None and background.leading,
    )
    # The providers reached (a remote one's process: its capabilities and links); the capacities
    # set with UpdateLink put back, so that restored calls are re-taken under them; then the calls;
    # then (once the ports are bound) the releases still owed and a reconciliation, before serving.
    # Replicas on one database host one provider list (REPL-5): a replica with another would
    # disconnect the calls of each provider it does not host, which the others serve.
    hosted = sorted(info.id for info in providers.all())
    if not await store.host_providers(hosted):
        raise ConfigError(
            f"another replica on this database hosts other providers than this one ({', '.join(hosted)}): "
            "replicas must host the same providers; to change them, stop every replica and start them "
            "with the new list (README: Running replicas in production)"
        )
    # From here a provider may have started (a process launched, a thread): a failed start
    # stops them all, also after a ProviderStartError of one.
    undo.push_async_callback(providers.stop)
    await providers.prepare()
    await ledger.put_back_link_capacities()
    await calls.start()
    undo.push_async_callback(calls.stop)
    for call in await store.connected_calls():
        instruments.call_committed(call)
    for info in providers.all():
        await providers.refresh_link_metrics(info)
    instruments.providers_hosted(info.name for info in providers.all())

    # The telemetry interceptor runs first, so the span covers the other interceptors too. When
    # nothing would observe an RPC (the embedded default) there is none: the handlers make each
    # RPC's trace current themselves (`enters_traces`).
    observed = observes_rpcs(instruments)
    tracing = [TelemetryInterceptor(instruments, telemetry.excluded_services)] if observed else []
    server = grpc.aio.server(options=grpc_options(config), interceptors=[*tracing, *(interceptors or [])])
    watchers = Watchers(
        WatchLimits(
            total=config.max_watchers,
            per_principal=config.max_watchers_per_principal,
            stall_seconds=config.watch_stall_seconds,
            backlog_events=config.watch_backlog_events,
        )
    )
    servicer = CallQosServicer(calls, hub, providers, watchers, guard, lines, ledger, enters_traces=not observed)
    instruments.open_watch_streams = lambda: servicer.open_watchers
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    certificates = None
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            certificates = CertificateFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
            port = server.add_secure_port(config.listen, certificates.credentials())
        else:
            port = server.add_insecure_port(config.listen)
        if port == 0:
            raise ListenError(f"cannot listen on {config.listen} (listen)")
        if config.proxy_listen and server.add_insecure_port(config.proxy_listen) == 0:
            raise ListenError(f"cannot listen on {config.proxy_listen} (proxy_listen)")
    except RuntimeError as exc:  # in use since check_listen looked, or a host gRPC cannot bind
        raise ListenError(f"cannot listen on {config.listen} (listen): {exc}") from exc
    except (OSError, ValueError) as exc:  # ListenError, or TLS files that cannot be read or used
        if isinstance(exc, ListenError):
            raise
        raise OSError(str(exc)) from exc
    health_server, health_port = None, 0
    if config.health_listen:
        # Probes that cannot speak TLS (Kubernetes' grpc probe) ask here; it serves nothing else.
        health_server = grpc.aio.server(options=grpc_options(config))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        try:
            health_port = health_server.add_insecure_port(config.health_listen)
        except RuntimeError:
            health_port = 0
        if health_port == 0:
            raise ListenError(f"cannot listen on {config.health_listen} (health_listen)")
        await health_server.start()
        undo.push_async_callback(health_server.stop, 0)
    await ledger.start()
    undo.push_async_callback(ledger.stop)
    await server.start()
    undo.push_async_callback(server.stop, 0)
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
        ledger,
        servicer,
        config,
        telemetry,
        guard=guard,
        certificates=certificates,
        health_server=health_server,
        health_port=health_port,
    )
    running.background = background = Background(
        store,
        calls,
        prune=running.prune,
        leader_check_seconds=config.leader_check_seconds,
        set_serving=running.set_serving,
    )
    background.start()
    running._background = [
        asyncio.create_task(watchers.supervise(lambda: hub.last_sequence)),
        asyncio.create_task(
            LoopLag(containment.clock, instruments.record_loop_lag, config.loop_lag_warning_seconds).run()
        ),
    ]
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


class ShutdownDeadline:
    """The hard deadline of a shutdown: once started (by the first SIGTERM/SIGINT) the process
    exits `seconds` later whatever is still running — a provider that ignores cancellation, a
    thread blocked in a provider, an event loop a provider blocks. A thread, so that it fires even
    then; started from a signal handler (`signal.signal`, which runs between two bytecodes even
    while a provider blocks the loop), so that a blocked loop cannot delay it either. A second
    signal exits at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self._timer is not None:
            _exit_now(1, "second signal: exiting at once")
        self._timer = threading.Timer(self.seconds, _exit_now, (1, f"shutdown took longer than {self.seconds:g}s"))
        self._timer.daemon = True
        self._timer.start()


def _exit_now(status: int, why: str) -> None:
    log.error("exiting without finishing the shutdown: %s", why)
    _flush_and_exit(status)


def _flush_and_exit(status: int) -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


async def serve(config: Config, telemetry: Telemetry | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (telemetry flushed last), within
    `shutdown_timeout_seconds` at the latest (see ShutdownDeadline)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = ShutdownDeadline(config.shutdown_timeout_seconds)

    def on_signal(signum: int, frame: object) -> None:
        deadline.start()
        loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
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
    # What start-up made (modules, descriptors, providers) lives as long as the process: out of
    # the cyclic collector's way, so that a collection looks only at what requests made.
    gc.freeze()
    await stop.wait()
    await running.stop()
    abandoned = len(running.providers.containment.abandoned)
    if abandoned:
        # Everything is committed and closed; what is left are provider calls that ignore
        # cancellation, which the event loop's own teardown would wait for for ever.
        log.warning("exiting with %d provider calls that ignored cancellation still running", abandoned)
        _flush_and_exit(0)


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `event_loop` (the setting) names: uvloop's for "uvloop", and for "auto"
    where uvloop is installed; asyncio's own otherwise. uvloop runs the same server with less CPU
    per RPC (README "Performance"); gRPC's asyncio API works on both."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise ConfigError("event_loop = uvloop, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(config: Config, telemetry: Telemetry | None = None) -> None:
    """Serve `config` until SIGTERM or SIGINT, on an event loop of this process's own, the one the
    `event_loop` setting chooses (what `callqos serve` runs)."""
    # Requests allocate many short-lived objects (futures, frames, protobuf messages) that
    # reference counting frees; collecting the youngest generation every 700 net allocations
    # (Python's default) cost several per cent of the CPU of a thousand watchers (README
    # "Performance"). Cycles are still collected, less often.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        runner.run(serve(config, telemetry))
