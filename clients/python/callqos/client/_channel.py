"""Channel settings shared by the sync and async clients: retry policy, keepalive, identity."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from callqos import wire

from . import _policy

DEFAULT_TARGET = wire.DEFAULT_TARGET
#: Deadline of every unary RPC unless the caller gives another (gRPC has no default deadline).
DEFAULT_TIMEOUT = 10.0
#: The request metadata key the server reads the caller's identity from.
PRINCIPAL_METADATA_KEY = wire.PRINCIPAL_HEADER

# Must match the server's limit; events and calls are small, so 4 MiB is plenty either way.
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

Metadata = Sequence[tuple[str, str]]


def _trace_context_injector() -> Callable[[dict[str, str]], object] | None:
    """OpenTelemetry's propagator, when it is installed. It is optional (`callqos[otel]`): with it
    every RPC carries the caller's trace context; without it the client works the same, untraced."""
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return None
    return inject


_inject_trace_context = _trace_context_injector()


def channel_options(
    *,
    retry: bool = True,
    service_config: Mapping[str, Any] | None = None,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Options for ``grpc.insecure_channel`` / ``grpc.aio.insecure_channel`` and friends."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # No client keepalive pings on purpose: a server keeps grpc's default 5-minute
        # min_ping_interval_without_data and answers faster pings on an idle watch stream with
        # GOAWAY too_many_pings. Any keepalive must be agreed with the server's settings.
        # After a server restart the channel's own reconnect backoff (up to 120 s by default)
        # would delay a resuming watch far longer than the restart itself; cap it.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 1 if retry else 0),
    ]
    if retry:
        # The retry policy all four clients share (clients/service_config.json), unless the caller
        # brings its own. It retries only UNAVAILABLE, and CreateCall / RenegotiateCall only
        # because this client always sends a request_id (see _requests.new_request_id).
        config = dict(service_config) if service_config is not None else _policy.service_config()
        options.append(("grpc.service_config", json.dumps(config)))
    options.extend(extra)
    return options


def request_metadata(principal: str | None, extra: Metadata = ()) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every RPC: the principal (when given) and the caller's extras."""
    metadata = list(extra)
    if principal:
        metadata.append((PRINCIPAL_METADATA_KEY, principal))
    return tuple(metadata)


def traced(metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the W3C trace context (`traceparent`, `tracestate`) of the caller's current
    OpenTelemetry span, so the server's span joins the caller's trace. Injected per RPC, not once
    per client, because the current span differs from call to call. (Not the contrib aio client
    interceptors: they swallow cancellation, opentelemetry-python-contrib#3271.) Without
    OpenTelemetry installed, `metadata` as it is."""
    if _inject_trace_context is None:
        return tuple(metadata)
    carrier: dict[str, str] = {}
    _inject_trace_context(carrier)
    return (*metadata, *carrier.items())


def env_target() -> str:
    """The target of the address convention (`callqos.wire.default_target`)."""
    return wire.default_target()


def env_principal() -> str | None:
    return os.environ.get(wire.PRINCIPAL_ENV) or None
