"""`callqos-server`, `callqos serve` and `python -m callqos.server`: the server's flags and entry point.

The flags are the highest layer of configuration (TOML file < CALLQOS_* env < flags). `callqos
serve` is this same entry point, registered in the callqos CLI's `callqos.cli` entry-point group.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# Before grpc is imported (by app below): gRPC core's own INFO lines (e.g. one per client GOAWAY)
# are neither JSON nor actionable. GRPC_VERBOSITY=INFO still brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from callqos import wire
from callqos.server import app, logs
from callqos.server import config as config_module
from callqos.server.providers.registry import ProviderLoadError
from callqos.server.store.base import StoreUnavailable
from callqos.server.telemetry import TelemetryConfigError

# The flags of `serve`: (flag, setting, type, what). Every other setting is TOML or environment
# only; the help lists them all, with defaults and variables, in its epilog.
FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--listen", "listen", str, "HOST:PORT to listen on (port 0: any free port)"),
    ("--data-dir", "data_dir", Path, "directory of the SQLite database"),
    ("--storage", "storage", str, "sqlite, memory or postgresql (database_url: CALLQOS_DATABASE_URL)"),
    ("--providers", "providers", str, "comma-separated provider ids to host"),
    ("--default-provider", "default_provider", str, "provider for calls that name none"),
    ("--provider-timeout", "provider_timeout_seconds", float, "seconds a provider may take"),
    ("--event-retention-count", "event_retention_count", int, "events kept"),
    ("--event-retention-seconds", "event_retention_seconds", int, "max event age (0 = unlimited)"),
    ("--max-watchers", "max_watchers", int, "open WatchEvents streams allowed"),
    ("--max-connections", "max_connections", int, "client connections allowed"),
    ("--max-lease", "max_lease_seconds", float, "longest lease of a call, and the lease of one asking none (0: none)"),
    ("--shutdown-grace", "shutdown_grace_seconds", float, "seconds in-flight RPCs get after SIGTERM"),
    ("--shutdown-timeout", "shutdown_timeout_seconds", float, "seconds after SIGTERM by which the process exits"),
    ("--log-level", "log_level", str, "debug (one line per RPC), info, warning or error"),
    ("--port-file", "port_file", Path, "write the bound port here once serving"),
    ("--metrics-listen", "metrics_listen", str, "HOST:PORT for a Prometheus /metrics endpoint"),
    ("--health-listen", "health_listen", str, "HOST:PORT for a plaintext grpc.health.v1-only port"),
    ("--tls-cert", "tls_cert", Path, "server certificate chain (PEM): TLS on --listen"),
    ("--tls-key", "tls_key", Path, "server private key (PEM)"),
    ("--tls-client-ca", "tls_client_ca", Path, "CA of client certificates: require mTLS"),
    ("--authenticators", "authenticators", str, "comma-separated: mtls, jwt, header (none: development mode)"),
    (
        "--insecure-allow-unauthenticated",
        "insecure_allow_unauthenticated",
        bool,
        "allow development mode (no authenticator) on a non-loopback --listen",
    ),
)
_CHOICES = {"storage": config_module.STORAGES, "log_level": ("debug", "info", "warning", "error")}
# The standard OpenTelemetry variables the server reads (telemetry/setup.py).
OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SEMCONV_STABILITY_OPT_IN",
    "OTEL_PYTHON_GRPC_EXCLUDED_SERVICES",
    "OTEL_EXPORTER_PROMETHEUS_HOST",
    "OTEL_EXPORTER_PROMETHEUS_PORT",
    "OTEL_SDK_DISABLED",
)


def _env_name(setting: str) -> str:
    return config_module.ENV_PREFIX + setting.upper()


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return ",".join(value) or "none"
    if value is None or value == "":
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_epilog() -> str:
    """Every setting, its environment variable and its default (TOML key = the setting's name)."""
    defaults = config_module.Config()
    flagged = {setting for _, setting, _, _ in FLAGS}
    rows = [
        f"  {name:<30} {_env_name(name):<40} {_shown(getattr(defaults, name))}"
        + ("" if name in flagged else "  (no flag)")
        for name in config_module.SETTINGS
    ]
    return "\n".join(
        [
            "Every setting, by TOML key, environment variable and default. Precedence: defaults < TOML",
            "file (--config or CALLQOS_CONFIG) < CALLQOS_* environment < flags. Clients connect to",
            f"{wire.TARGET_ENV}, else to the address in {wire.LISTEN_ENV}, else {wire.DEFAULT_TARGET}.",
            "",
            f"  {'setting':<30} {'environment':<40} default",
            *rows,
            "",
            textwrap.fill("Telemetry: " + ", ".join(OTEL_VARIABLES) + " (see deploy/README.md).", width=96),
            "GRPC_VERBOSITY (default ERROR) shows gRPC's own log lines.",
        ]
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (env CALLQOS_CONFIG; default none)")
    defaults = config_module.Config()
    for flag, setting, kind, what in FLAGS:
        default = _shown(getattr(defaults, setting))
        shown = f"{what} (default {default}; env {_env_name(setting)})"
        if kind is bool:  # a switch: given, it turns the setting on
            parser.add_argument(flag, dest=setting, action="store_const", const=True, help=shown)
            continue
        parser.add_argument(
            flag,
            dest=setting,
            type=kind,
            choices=_CHOICES.get(setting),
            metavar=None if setting in _CHOICES else setting.upper().removesuffix("_SECONDS"),
            help=shown,
        )


def _configuration_error(exc: Exception) -> int:
    print(f"callqos serve: configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIGURATION


EXIT_CONFIGURATION = 2


def run_serve(args: argparse.Namespace) -> int:
    flags = {setting: getattr(args, setting, None) for _, setting, _, _ in FLAGS}
    try:
        config = config_module.load(args.config, flags=flags)
        # Before anything starts: a port in use or a host that does not resolve is one line,
        # not a gRPC core log line and a traceback.
        app.check_listen(config.listen, "listen")
        if config.metrics_listen:
            app.check_listen(config.metrics_listen, "metrics_listen")
        if config.health_listen:
            app.check_listen(config.health_listen, "health_listen")
    except (config_module.ConfigError, app.ListenError) as exc:
        return _configuration_error(exc)
    logs.configure(config.log_level)
    try:
        app.run(config)
    except (TelemetryConfigError, config_module.ConfigError, app.ListenError) as exc:
        return _configuration_error(exc)
    except (ProviderLoadError, OSError, StoreUnavailable) as exc:
        logging.getLogger("callqos.server").error("cannot start: %s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `callqos-server`, of `callqos serve` (which passes its own `prog`) and of
    `python -m callqos.server`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the callqos gRPC API.",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callqos-server {metadata.version('callqos-server')}")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
