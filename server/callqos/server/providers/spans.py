"""What a provider may add to the server's trace: the link a decision was made on, and its load.

The host runs every provider operation inside a span of its own (`callqos.provider.<operation>`);
a provider describes its decision on that span through these helpers, without knowing whether
tracing is on (when it is off, or the RPC is not sampled, they do nothing and cost little).
"""

from __future__ import annotations

from opentelemetry import trace

# OTLP carries int64 attributes; a capacity may be any uint64. Larger values are recorded as the
# int64 maximum (the utilisation, a float, stays exact enough).
_INT64_MAX = 2**63 - 1


def annotate_link(link: str, capacity: int, sending_reserved: int, receiving_reserved: int) -> None:
    """Put on the current span (the server's provider span while admit, renegotiate or release
    runs) the link the decision was made on (`providers/{provider}/links/{link}`), its capacity
    and what is reserved on it in each direction after the decision, with the utilisation."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "callqos.link": link,
            "callqos.link.capacity_bytes_per_second": min(capacity, _INT64_MAX),
            "callqos.link.sending.reserved_bytes_per_second": min(sending_reserved, _INT64_MAX),
            "callqos.link.receiving.reserved_bytes_per_second": min(receiving_reserved, _INT64_MAX),
            "callqos.link.sending.utilization": sending_reserved / capacity if capacity else 0.0,
            "callqos.link.receiving.utilization": receiving_reserved / capacity if capacity else 0.0,
        }
    )
