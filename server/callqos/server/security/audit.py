"""The audit log: one structured record for every mutation (whatever its outcome) and every denial.

Each record is one JSON line from the logger `callqos.audit` (through the server's JSON log
handler, so it carries the time and trace id like every line; route that logger to a file or a
collector of its own if the audit trail must be kept apart) and an event `callqos.audit` on the
RPC's span. Fields: principal, tenant, method, resource, outcome (`ok`, `denied`, `failed`),
reason (the ErrorInfo reason, if any), detail (why access was refused), authenticated_by,
on_behalf_of (the proxy that asserted the identity), credential (a token id or certificate
fingerprint — never the credential), peer and trace_id. Nothing is logged for successful reads.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from opentelemetry import trace

from callqos.server.telemetry import current_trace_id

audit_log = logging.getLogger("callqos.audit")

OK, DENIED, FAILED = "ok", "denied", "failed"


@dataclass(frozen=True)
class AuditRecord:
    method: str
    outcome: str
    principal: str = ""
    tenant: str = ""
    resource: str = ""
    reason: str = ""
    detail: str = ""
    authenticated_by: str = ""
    on_behalf_of: str = ""
    credential: str = ""
    peer: str = ""
    trace_id: str = ""


def kept(outcome: str) -> bool:
    """Whether a record of `outcome` would be kept anywhere now (the audit logger's level, the
    current span): callers skip building one that nothing keeps."""
    level = logging.INFO if outcome == OK else logging.WARNING
    return audit_log.isEnabledFor(level) or trace.get_current_span().is_recording()


def record(entry: AuditRecord) -> None:
    """Write `entry` (with the current trace id) to the audit log and the current span. Nothing
    is built when neither would keep it (a log level above the record's, an unsampled span)."""
    level = logging.INFO if entry.outcome == OK else logging.WARNING
    logged = audit_log.isEnabledFor(level)
    span = trace.get_current_span()
    if not logged and not span.is_recording():
        return
    fields = {key: value for key, value in asdict(entry).items() if value}
    fields.setdefault("trace_id", current_trace_id())
    fields["outcome"] = entry.outcome
    if logged:
        audit_log.log(level, "audit %s %s %s", entry.method, entry.outcome, entry.resource, extra=fields)
    if span.is_recording():
        span.add_event("callqos.audit", {f"callqos.audit.{key}": value for key, value in fields.items()})
