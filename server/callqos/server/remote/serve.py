"""`callqos-provider serve PLUGIN`: any in-process provider, served over `callqos.provider.v1`.

    callqos-provider serve reference                       # an entry point of callqos.providers
    callqos-provider serve my_package.provider:MyProvider  # or module:Class
        [--settings provider.toml]    the provider's settings table
        [--listen unix:///run/p.sock | 127.0.0.1:7000]
        [--port-file FILE]            the bound TCP port, once serving
        [--tls-cert F --tls-key F [--tls-client-ca F]]   TLS (mutual with a client CA)

Launched by a callqos server (`command = ["callqos-provider", "serve", ...]`), it listens where the
server tells it (CALLQOS_PROVIDER_SOCKET), prints the handshake line, and exits when the server
closes its stdin. Run by hand, give `--listen` and point the server's `endpoint` at it. Either way
it serves grpc.health.v1 and logs JSON lines on stderr; OTEL_* variables configure its
telemetry, whose spans join the traces of the server's requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc
from callqos.server import logs
from callqos.server.providers import registry
from callqos.server.remote import protocol
from callqos.server.remote.kit import STOP_GRACE_SECONDS, ProviderServicer
from callqos.server.telemetry import setup as telemetry_setup
from callqos.server.telemetry.interceptor import TelemetryInterceptor

log = logging.getLogger("callqos.provider")
MAX_MESSAGE_BYTES = 64 << 20
NOT_LAUNCHED = """\
callqos-provider: this serves a QoS provider to a callqos server, which normally launches it:

    [providers.my-provider]
    plugin = "remote"
    command = ["callqos-provider", "serve", "{plugin}"]

To run it yourself, give an address to listen on and point the server's `endpoint` at it:

    callqos-provider serve {plugin} --listen unix:///tmp/my-provider.sock
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callqos-provider", description="Serve a callqos provider out of process.")
    p.add_argument("--version", action="version", version=f"callqos-provider {metadata.version('callqos-server')}")
    commands = p.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve PLUGIN (an entry-point name or module:Class)")
    serve.add_argument("plugin", help="entry-point name of callqos.providers, or module:Class")
    serve.add_argument("--settings", type=Path, help="TOML file: the provider's settings table")
    serve.add_argument("--listen", help="unix:///path or HOST:PORT (default: where the launching server says)")
    serve.add_argument("--port-file", type=Path, help="write the bound TCP port here once serving")
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM) ...")
    serve.add_argument("--tls-key", type=Path, help="... and its private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    return p


def server_credentials(cert: Path | None, key: Path | None, client_ca: Path | None) -> grpc.ServerCredentials | None:
    """TLS for a provider served over TCP beyond loopback (the host requires it there)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    roots = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=roots, require_client_auth=roots is not None
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level)
    launched = os.environ.get(protocol.MAGIC_COOKIE_ENV) == protocol.MAGIC_COOKIE
    address = args.listen or listen_address(os.environ)
    if not address:
        print(NOT_LAUNCHED.format(plugin=args.plugin), file=sys.stderr)
        return 2
    settings: dict[str, Any] = {}
    if args.settings:
        try:
            settings = tomllib.loads(args.settings.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            print(f"callqos-provider: cannot read {args.settings}: {exc}", file=sys.stderr)
            return 2
    try:
        credentials = server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    except (OSError, ValueError) as exc:
        print(f"callqos-provider: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve(args.plugin, settings, address, port_file=args.port_file, launched=launched, credentials=credentials)
        )
    except registry.ProviderLoadError as exc:
        print(f"callqos-provider: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"callqos-provider: {exc}", file=sys.stderr)
        return 1
    return 0


def listen_address(env: Mapping[str, str]) -> str:
    """Where a launched provider listens: the socket its server chose; '' when not launched."""
    socket = env.get(protocol.SOCKET_ENV, "")
    return f"unix:{socket}" if socket else ""


def handshake_for(address: str, port: int) -> protocol.Handshake:
    if address.startswith("unix:"):
        return protocol.Handshake(protocol.PROTOCOL_VERSION, "unix", "/" + address.removeprefix("unix:").lstrip("/"))
    host = address.rpartition(":")[0]
    return protocol.Handshake(protocol.PROTOCOL_VERSION, "tcp", f"{host}:{port}")


@dataclass
class KitServer:
    """A provider served over the protocol: the gRPC server, the kit's servicer, and where."""

    server: grpc.aio.Server
    servicer: ProviderServicer
    health: health.aio.HealthServicer
    handshake: protocol.Handshake

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Health NOT_SERVING, in-flight calls get `grace`, then the provider stops."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.servicer.stop_provider()
        if self.handshake.network == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.handshake.address)


async def start_kit(
    servicer: ProviderServicer,
    address: str,
    telemetry: telemetry_setup.Telemetry,
    credentials: grpc.ServerCredentials | None = None,
) -> KitServer:
    """Serve the kit's `servicer` on `address` (unix:/path or HOST:PORT), with TLS when given
    `credentials`: the protocol, and grpc.health.v1 SERVING; each request in the trace of the
    host's request that caused it."""
    instruments = telemetry.instruments()
    # The telemetry interceptor (a server span per request, in the host's trace) when there is
    # something to record; none when telemetry is off (a request costs less, and nothing is lost).
    observed = instruments.tracing_enabled or instruments.metrics_enabled
    server = grpc.aio.server(
        interceptors=[TelemetryInterceptor(instruments, telemetry.excluded_services)] if observed else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    if instruments.tracing_enabled:  # one span per request on the Decide stream too
        servicer.tracer = telemetry.tracer_provider.get_tracer("callqos.provider.kit")
    pb_grpc.add_ProviderServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", protocol.HEALTH_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return KitServer(server, servicer, health_servicer, handshake_for(address, port))


async def serve(
    plugin: str,
    settings: Mapping[str, Any],
    address: str,
    *,
    port_file: Path | None = None,
    launched: bool = False,
    credentials: grpc.ServerCredentials | None = None,
    servicer: type[ProviderServicer] = ProviderServicer,
) -> None:
    """Serve `plugin` on `address` until SIGTERM/SIGINT (or, when `launched`, until the server
    closes stdin). `servicer` is the kit's (the conformance suite's broken kits subclass it)."""
    settings = dict(settings)
    # As in the server: `threaded = true` runs the whole provider on an event loop of its own, in a
    # thread of its own (a provider that blocks), so that it never holds up the protocol.
    threaded = settings.pop("threaded", False)
    if not isinstance(threaded, bool):
        raise registry.ProviderLoadError("threaded must be true or false")
    provider, implementation = registry.instantiate(plugin, settings)
    env = {**os.environ}
    env.setdefault("OTEL_SERVICE_NAME", "callqos-provider")
    telemetry = telemetry_setup.from_environment(env=env)
    telemetry.install_global()  # the provider's own spans join the server's traces
    kit = await start_kit(
        servicer(provider, implementation, f"{implementation} (callqos-provider)", threaded=threaded),
        address,
        telemetry,
        credentials,
    )
    handshake = kit.handshake
    if port_file is not None and handshake.network == "tcp":
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{handshake.address.rpartition(':')[2]}\n")
        tmp.replace(port_file)
    where = {"plugin": implementation, "address": handshake.address, "instance": kit.servicer.instance_id}
    log.info("serving", extra=where)
    # SIGTERM stops the kit cleanly from the moment the host can know it runs (the handshake).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if launched:
        _stop_when_stdin_closes(loop, stop)
    print(handshake.line(), flush=True)  # last: the host dials as soon as it reads it
    await stop.wait()
    log.info("stopping")
    await kit.stop()
    telemetry.shutdown()


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The launching server holds our stdin open; end of file means it is gone (however it
    went), and a provider must not outlive its host. Read in a daemon thread: it blocks. Read from
    the file descriptor, not sys.stdin: a daemon thread blocked in a buffered read holds the buffer's
    lock, and the interpreter's shutdown then aborts ("Fatal Python error: could not acquire lock
    for <stdin>") when the provider stops on SIGTERM before the end of file arrives."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            descriptor = sys.stdin.fileno()
            while os.read(descriptor, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
