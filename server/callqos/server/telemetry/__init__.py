"""Telemetry set-up lives here; the rest of the server only starts spans and records metrics.

(Issue 4 extends this module with exporters, the RPC interceptor and metrics.)
"""

from __future__ import annotations

from opentelemetry import trace


def current_trace_id() -> str:
    """The W3C trace id of the current span (32 hex digits), or '' outside a traced operation."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
