"""What a valid request is — checked once, before any provider is called.

Each check names the field it is about (its path in the request) so that a client gets one
google.rpc.BadRequest field violation per bad field (conformance/SPEC.md FLOW-1, FLOW-2). Every
rule is a clause of SPEC.md — FLOW-3 … FLOW-19 for flowspecs, REQ-1 … REQ-6 for the other
fields — which names its source: the Winsock 2 FLOWSPEC remarks, RFC 2212, or the proto comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from callqos.server import names
from callqos.server.errors import FieldViolation
from callqos.server.qos import NOTIFICATION_ONLY, RESERVING, SENTINELS
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
_KNOWN_SERVICE_TYPES = frozenset(ST.values())
_KNOWN_LEVELS = frozenset(call_pb2.ServiceLevel.values())

MAX_DESTINATION = 256
MAX_REQUEST_ID = 64
MAX_ETAG = 128
MAX_PROVIDER_SPECIFIC = 4096
MAX_FILTER = 512
_PRINTABLE = re.compile(r"[\x20-\x7e\u00a0-\uffff]+")
_REQUEST_ID = re.compile(r"[\x21-\x7e]+")

_NUMERIC_FIELDS = (
    "token_rate_bytes_per_second",
    "token_bucket_size_bytes",
    "peak_bandwidth_bytes_per_second",
    "latency_microseconds",
    "delay_variation_microseconds",
    "max_sdu_size_bytes",
    "minimum_policed_size_bytes",
)


def flowspec_violations(
    spec: flowspec_pb2.FlowSpec,
    path: str,
    *,
    sending: bool,
    renegotiation: bool,
    max_sdu_size: int = 0,
) -> Iterator[FieldViolation]:
    """Violations of one direction's FLOWSPEC rules."""
    stype = spec.service_type
    if stype == ST.SERVICE_TYPE_UNSPECIFIED:
        yield FieldViolation(f"{path}.service_type", "required: the service type may not be defaulted")
        return
    if stype not in _KNOWN_SERVICE_TYPES:
        yield FieldViolation(f"{path}.service_type", f"unknown service type {stype}")
        return
    if stype in NOTIFICATION_ONLY:
        yield FieldViolation(f"{path}.service_type", f"{ST.Name(stype)} is a notification, not a request")
        return
    if stype == ST.SERVICE_TYPE_NO_CHANGE:
        if not renegotiation:
            yield FieldViolation(f"{path}.service_type", "NO_CHANGE is only valid when renegotiating")
        return  # the rest of a NO_CHANGE flowspec is ignored
    for field in _NUMERIC_FIELDS:
        if spec.HasField(field) and getattr(spec, field) in SENTINELS:
            yield FieldViolation(
                f"{path}.{field}",
                "raw Winsock sentinel: leave the field out for QOS_NOT_SPECIFIED"
                + (", set peak_bandwidth_unbounded for POSITIVE_INFINITY_RATE" if "peak" in field else ""),
            )
    has_rate = spec.HasField("token_rate_bytes_per_second")
    rate = spec.token_rate_bytes_per_second
    if has_rate and rate == 0:
        yield FieldViolation(f"{path}.token_rate_bytes_per_second", "must not be 0")
    elif not has_rate and stype in RESERVING and (sending or stype == ST.SERVICE_TYPE_GUARANTEED):
        yield FieldViolation(
            f"{path}.token_rate_bytes_per_second",
            "required in a sending flowspec, and in a GUARANTEED receiving flowspec",
        )
    if spec.HasField("peak_bandwidth_bytes_per_second"):
        if spec.peak_bandwidth_unbounded:
            yield FieldViolation(
                f"{path}.peak_bandwidth_bytes_per_second",
                "must be left out when peak_bandwidth_unbounded is set",
            )
        elif has_rate and spec.peak_bandwidth_bytes_per_second < rate:
            yield FieldViolation(f"{path}.peak_bandwidth_bytes_per_second", "must be >= token_rate_bytes_per_second")
    if spec.HasField("token_bucket_size_bytes") and spec.token_bucket_size_bytes == 0 and stype in RESERVING:
        yield FieldViolation(f"{path}.token_bucket_size_bytes", "must be > 0 (RFC 2212: b positive)")
    if spec.HasField("max_sdu_size_bytes"):
        if spec.max_sdu_size_bytes == 0:
            yield FieldViolation(f"{path}.max_sdu_size_bytes", "must be > 0 (RFC 2212: M positive)")
        elif max_sdu_size and spec.max_sdu_size_bytes > max_sdu_size and stype in RESERVING:
            yield FieldViolation(
                f"{path}.max_sdu_size_bytes",
                f"exceeds the provider's path MTU of {max_sdu_size} bytes (RFC 2212/2211)",
            )
    if spec.HasField("minimum_policed_size_bytes"):
        if spec.minimum_policed_size_bytes == 0:
            yield FieldViolation(f"{path}.minimum_policed_size_bytes", "must be > 0 (RSVP semantics)")
        elif spec.HasField("max_sdu_size_bytes") and spec.minimum_policed_size_bytes > spec.max_sdu_size_bytes:
            yield FieldViolation(
                f"{path}.minimum_policed_size_bytes", "must be <= max_sdu_size_bytes (RFC 2212: m <= M)"
            )


def qos_violations(
    qos: flowspec_pb2.QosSpec,
    path: str,
    *,
    renegotiation: bool,
    caps: provider_pb2.ProviderCapabilities | None,
    present: bool,
) -> Iterator[FieldViolation]:
    if not present:
        yield FieldViolation(path, "required")
        return
    mtu = caps.max_sdu_size_bytes if caps is not None else 0
    for direction, sending in (("sending", True), ("receiving", False)):
        if not qos.HasField(direction):
            yield FieldViolation(f"{path}.{direction}", "required")
            continue
        yield from flowspec_violations(
            getattr(qos, direction),
            f"{path}.{direction}",
            sending=sending,
            renegotiation=renegotiation,
            max_sdu_size=mtu,
        )
    if len(qos.provider_specific) > MAX_PROVIDER_SPECIFIC:
        yield FieldViolation(f"{path}.provider_specific", f"at most {MAX_PROVIDER_SPECIFIC} bytes")


def level_violations(level: int, path: str) -> Iterator[FieldViolation]:
    if level not in _KNOWN_LEVELS:
        yield FieldViolation(path, f"unknown service level {level}")


def request_id_violations(request_id: str, path: str = "request_id") -> Iterator[FieldViolation]:
    if request_id and (len(request_id) > MAX_REQUEST_ID or not _REQUEST_ID.fullmatch(request_id)):
        yield FieldViolation(path, f"at most {MAX_REQUEST_ID} printable ASCII characters")


def etag_violations(etag: str) -> Iterator[FieldViolation]:
    if len(etag) > MAX_ETAG:
        yield FieldViolation("etag", f"at most {MAX_ETAG} characters")


def call_name_violations(name: str, path: str = "name") -> Iterator[FieldViolation]:
    if names.parse_call(name) is None:
        yield FieldViolation(path, "must be calls/{call}")


def create_violations(
    request: svc.CreateCallRequest, caps: provider_pb2.ProviderCapabilities | None
) -> list[FieldViolation]:
    """Every violation in a CreateCallRequest. `caps` are those of the provider it names (None
    when the provider is unknown: that is reported as NOT_FOUND after validation)."""
    call = request.call
    found: list[FieldViolation] = []
    if not request.HasField("call"):
        return [FieldViolation("call", "required")]
    if not call.destination:
        found.append(FieldViolation("call.destination", "required"))
    elif len(call.destination) > MAX_DESTINATION or not _PRINTABLE.fullmatch(call.destination):
        found.append(FieldViolation("call.destination", f"1-{MAX_DESTINATION} printable characters"))
    if call.provider and names.parse_provider(call.provider) is None:
        found.append(FieldViolation("call.provider", "must be providers/{provider}"))
    found.extend(level_violations(call.service_level, "call.service_level"))
    found.extend(
        qos_violations(
            call.requested_qos,
            "call.requested_qos",
            renegotiation=False,
            caps=caps,
            present=call.HasField("requested_qos"),
        )
    )
    if request.call_id and not names.USER_CALL_ID.fullmatch(request.call_id):
        found.append(
            FieldViolation("call_id", "1-63 characters of [a-z0-9-], starting with a letter, not ending with -")
        )
    found.extend(request_id_violations(request.request_id))
    return found


def renegotiate_violations(
    request: svc.RenegotiateCallRequest, caps: provider_pb2.ProviderCapabilities | None
) -> list[FieldViolation]:
    found = list(call_name_violations(request.name))
    found.extend(qos_violations(request.qos, "qos", renegotiation=True, caps=caps, present=request.HasField("qos")))
    found.extend(level_violations(request.service_level, "service_level"))
    found.extend(etag_violations(request.etag))
    found.extend(request_id_violations(request.request_id))
    return found


def page_size_violations(page_size: int) -> Iterator[FieldViolation]:
    if page_size < 0:
        yield FieldViolation("page_size", "must not be negative")
