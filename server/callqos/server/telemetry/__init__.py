"""Telemetry: traces and metrics through the OpenTelemetry API.

Set-up (exporters, sampler, Prometheus endpoint, all from the standard OTEL_* variables) lives in
`setup`; the RPC server spans in `interceptor`; the instruments the rest of the server uses
(provider and store child spans, call and link metrics) in `instruments`. The rest of the server
only starts spans and records measurements through an `Instruments` it is handed.
"""

from __future__ import annotations

from opentelemetry import trace

from callqos.server.telemetry.instruments import Instruments, current_traceparent
from callqos.server.telemetry.setup import Telemetry, TelemetryConfigError

__all__ = ["Instruments", "Telemetry", "TelemetryConfigError", "current_trace_id", "current_traceparent"]


def current_trace_id() -> str:
    """The W3C trace id of the current span (32 hex digits), or '' outside a traced operation."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
