"""Every failure the service reports, and how it becomes a gRPC status — the one place for that.

Each failure is a `ServiceError` naming an ErrorReason from protos/callqos/v1/errors.proto. The
gRPC code of a reason is the `(grpc_code)` option on that reason in the same file, which
`callqos.wire` reads from the descriptor at import (and refuses to import without), so no reason
can go out with a code nobody decided. Every status carries a `google.rpc.ErrorInfo` (AIP-193,
domain `callqos.wire.ERROR_DOMAIN`), plus `BadRequest` for invalid input, `QosRefusal` for
refused QoS, `QuotaFailure` for an exceeded quota and `RetryInfo` (`retry_info`) when the server
knows when a retry may succeed (a provider that is restarting or reconnecting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from callqos import wire
from callqos.v1 import call_pb2, errors_pb2, flowspec_pb2

Reason = errors_pb2.ErrorReason


def reason_name(reason: int) -> str:
    """The ErrorInfo.reason string: the enum value name without its prefix."""
    return wire.reason_string(reason)


def code_of(reason: int) -> grpc.StatusCode:
    """The gRPC code of a reason: its `(grpc_code)` option in errors.proto, read at import."""
    return wire.STATUS_CODES[reason]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field, named by its path in the request (e.g. `call.requested_qos.sending`)."""

    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """A failure to report to the caller. Raised anywhere; turned into a status in one place."""

    reason: int
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()
    refusal: call_pb2.QosRefusal | None = None
    # Further google.rpc details, after ErrorInfo (e.g. QuotaFailure, RetryInfo).
    details: tuple[Message, ...] = ()
    # Why access was refused, for the audit log only: never sent to the caller (whom a NOT_FOUND
    # for another tenant's call must tell nothing more than a NOT_FOUND for no call).
    denial: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.reason not in wire.STATUS_CODES:
            # Raised where the error is made, so the RPC still ends as INTERNAL with ErrorInfo
            # (the handler's catch-all) instead of failing while the status is built.
            raise ValueError(f"not an ErrorReason with a gRPC code: {self.reason}")

    @property
    def code(self) -> grpc.StatusCode:
        return code_of(self.reason)

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status with ErrorInfo first, then BadRequest / QosRefusal / the others."""
        details: list[Message] = [
            error_details_pb2.ErrorInfo(reason=self.reason_name, domain=wire.ERROR_DOMAIN, metadata=dict(self.metadata))
        ]
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        if self.refusal is not None:
            details.append(self.refusal)
        details.extend(self.details)
        packed = []
        for detail in details:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message, details=packed)


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """A google.rpc.RetryInfo detail: a retry may succeed after `seconds`."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(seconds * 1e9)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


# At most this many field violations go into a BadRequest (and the status message), then one that
# says how many more there were: what a rejection costs to build and to send is bounded by a
# small constant, however many fields a request gets wrong (conformance/SPEC.md REQ-7).
MAX_VIOLATIONS = 20
# Longest description of one violation; longer ones (a provider's own check may say anything)
# are cut.
MAX_DESCRIPTION = 300


def _bounded(violations: Iterable[FieldViolation]) -> tuple[FieldViolation, ...]:
    """The first MAX_VIOLATIONS violations, and one summarising the rest (counted, up to a
    bound, without building them all)."""
    kept: list[FieldViolation] = []
    more = 0
    for violation in violations:
        if len(kept) < MAX_VIOLATIONS:
            description = violation.description
            if len(description) > MAX_DESCRIPTION:
                description = description[: MAX_DESCRIPTION - 1] + "…"
            kept.append(FieldViolation(violation.field[:MAX_DESCRIPTION], description))
        else:
            more += 1
            if more >= 1000:  # counting further costs more than it tells
                break
    if more:
        counted = f"{more}" if more < 1000 else "1000 or more"
        kept.append(FieldViolation("request", f"{counted} further invalid fields are not listed"))
    return tuple(kept)


def invalid(violations: Iterable[FieldViolation], message: str | None = None) -> ServiceError:
    """INVALID_ARGUMENT naming every bad field (up to MAX_VIOLATIONS, then a summary)."""
    found = _bounded(violations)
    if message is None:
        message = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in found[:3])
        if len(found) > 3:
            message += f"; and {len(found) - 3} more (see the BadRequest details)"
    return ServiceError(Reason.ERROR_REASON_INVALID_REQUEST, message, violations=found)


def refused(
    reason: int,
    call: str,
    message: str,
    counter_offer: flowspec_pb2.QosSpec | None,
    metadata: Mapping[str, str] | None = None,
) -> ServiceError:
    """A QoS refusal (QOS_UNAVAILABLE or QOS_POLICY_FAILURE) with the provider's counter-offer."""
    refusal = call_pb2.QosRefusal(call=call, detail=message)
    if counter_offer is not None:
        refusal.counter_offer.CopyFrom(counter_offer)
    return ServiceError(reason, message, metadata={"call": call, **(metadata or {})}, refusal=refusal)


def storage_unavailable(cause: str, doing: str) -> ServiceError:
    """UNAVAILABLE / STORAGE_UNAVAILABLE: the server could not `doing` because its storage failed
    or cannot be reached (`cause`, e.g. "disk is full"); nothing changed, and a retry may succeed."""
    return ServiceError(
        Reason.ERROR_REASON_STORAGE_UNAVAILABLE,
        f"could not {doing}: {cause}; nothing changed, retry later",
        metadata={"cause": cause},
    )


class ReplayedStatus(Exception):
    """The stored failure of an earlier request with the same request_id, returned again."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status
