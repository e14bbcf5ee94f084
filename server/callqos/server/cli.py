"""`callqos-server`, `callqos serve` and `python -m callqos.server`: the server's flags and entry point.

The flags are the highest layer of configuration (TOML file < CALLQOS_* env < flags). `callqos
serve` is this same entry point, registered in the callqos CLI's `callqos.cli` entry-point group.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

# Before grpc is imported (by app below): gRPC core's own INFO lines (e.g. one per client GOAWAY)
# are neither JSON nor actionable. GRPC_VERBOSITY=INFO still brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from callqos.server import app, logs
from callqos.server import config as config_module
from callqos.server.providers.registry import ProviderLoadError
from callqos.server.store.base import StoreUnavailable
from callqos.server.telemetry import TelemetryConfigError


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (env: CALLQOS_CONFIG)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:50051)")
    parser.add_argument("--data-dir", type=Path, help="directory of the SQLite database (default ./callqos-data)")
    parser.add_argument(
        "--storage",
        choices=config_module.STORAGES,
        help="sqlite (default), memory or postgresql (CALLQOS_DATABASE_URL)",
    )
    parser.add_argument("--providers", help="comma-separated provider ids to host (default reference,no-qos)")
    parser.add_argument("--default-provider", help="provider for calls that name none (default reference)")
    parser.add_argument("--provider-timeout", type=float, dest="provider_timeout_seconds", help="seconds")
    parser.add_argument("--event-retention-count", type=int, help="events kept (default 100000)")
    parser.add_argument("--event-retention-seconds", type=int, help="max event age (0 = unlimited)")
    parser.add_argument("--max-watchers", type=int, help="open WatchEvents streams allowed")
    parser.add_argument("--shutdown-grace", type=float, dest="shutdown_grace_seconds", help="seconds")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    parser.add_argument("--metrics-listen", help="HOST:PORT for a Prometheus /metrics endpoint (default off)")
    parser.add_argument("--health-listen", help="HOST:PORT for a plaintext grpc.health.v1-only port (default off)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM): TLS on --listen")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: require mTLS")
    parser.add_argument("--authenticators", help="comma-separated: mtls, jwt, header (default none: development mode)")
    parser.add_argument(
        "--insecure-allow-unauthenticated",
        action="store_const",
        const=True,
        help="allow development mode (no authenticator) on a non-loopback --listen",
    )


def run_serve(args: argparse.Namespace) -> int:
    flags = {
        key: getattr(args, key, None)
        for key in (
            "listen",
            "data_dir",
            "storage",
            "providers",
            "default_provider",
            "provider_timeout_seconds",
            "event_retention_count",
            "event_retention_seconds",
            "max_watchers",
            "shutdown_grace_seconds",
            "log_level",
            "port_file",
            "metrics_listen",
            "health_listen",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
            "authenticators",
            "insecure_allow_unauthenticated",
        )
    }
    try:
        config = config_module.load(args.config, flags=flags)
    except config_module.ConfigError as exc:
        print(f"callqos serve: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    try:
        asyncio.run(app.serve(config))
    except (TelemetryConfigError, config_module.ConfigError) as exc:
        print(f"callqos serve: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ProviderLoadError, OSError, StoreUnavailable) as exc:
        logging.getLogger("callqos.server").error("cannot start: %s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `callqos-server`, of `callqos serve` (which passes its own `prog`) and of
    `python -m callqos.server`."""
    parser = argparse.ArgumentParser(prog=prog, description="Serve the callqos gRPC API.")
    parser.add_argument("--version", action="version", version=f"callqos-server {metadata.version('callqos-server')}")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
