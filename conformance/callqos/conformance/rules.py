"""The contract, stated again independently of the server's code (the suite must not trust
what it certifies): what a flowspec reserves (SPEC.md GRANT-1), when a grant satisfies a
request (GRANT-3), and the invalid requests every implementation must refuse (FLOW-1 and the
FLOW / REQ clauses), each case with the clauses of conformance/SPEC.md it verifies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
ServiceLevel = call_pb2.ServiceLevel

# SPEC.md GRANT-1: only CONTROLLED_LOAD (RFC 2211) and GUARANTEED (RFC 2212) reserve.
RESERVING = frozenset({ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED})
# SPEC.md GRANT-2: BEST_EFFORT and NO_TRAFFIC are always admitted and reserve nothing.
NON_RESERVING = (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC)
QOS_NOT_SPECIFIED = 0xFFFFFFFF  # qos.h
POSITIVE_INFINITY_RATE = 0xFFFFFFFE  # qos.h


def reserved_rate(spec: FlowSpec) -> int:
    """Bytes/s one direction holds (SPEC.md GRANT-1): CONTROLLED_LOAD its token rate; GUARANTEED
    its peak rate, or its token rate when the peak is unbounded or unspecified; anything else
    nothing."""
    if spec.service_type == ST.SERVICE_TYPE_CONTROLLED_LOAD:
        return spec.token_rate_bytes_per_second
    if spec.service_type == ST.SERVICE_TYPE_GUARANTEED:
        bounded = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
        return spec.peak_bandwidth_bytes_per_second if bounded else spec.token_rate_bytes_per_second
    return 0


def qos_rates(qos: QosSpec) -> tuple[int, int]:
    return reserved_rate(qos.sending), reserved_rate(qos.receiving)


def shortfalls(granted: FlowSpec, requested: FlowSpec, direction: str) -> list[str]:
    """Why `granted` does not give what `requested` asks for at NEEDED (SPEC.md GRANT-3, LEVEL-1).
    Fields the request leaves out are the provider's to choose."""
    out: list[str] = []
    if granted.service_type != requested.service_type:
        return [f"{direction}: service type {ST.Name(granted.service_type)}, asked {ST.Name(requested.service_type)}"]
    if requested.service_type not in RESERVING:
        return out
    if granted.token_rate_bytes_per_second < requested.token_rate_bytes_per_second:
        out.append(
            f"{direction}: token rate {granted.token_rate_bytes_per_second} < {requested.token_rate_bytes_per_second}"
        )
    granted_bounded = granted.HasField("peak_bandwidth_bytes_per_second") and not granted.peak_bandwidth_unbounded
    if requested.peak_bandwidth_unbounded and granted_bounded:
        out.append(f"{direction}: peak bounded at {granted.peak_bandwidth_bytes_per_second}, asked unbounded")
    elif requested.HasField("peak_bandwidth_bytes_per_second") and not granted.peak_bandwidth_unbounded:
        if granted.peak_bandwidth_bytes_per_second < requested.peak_bandwidth_bytes_per_second:
            out.append(f"{direction}: peak below the request")
    if (
        requested.HasField("token_bucket_size_bytes")
        and granted.token_bucket_size_bytes < requested.token_bucket_size_bytes
    ):
        out.append(f"{direction}: token bucket below the request")
    if requested.HasField("latency_microseconds") and granted.HasField("latency_microseconds"):
        if granted.latency_microseconds > requested.latency_microseconds:
            out.append(f"{direction}: latency {granted.latency_microseconds} us > {requested.latency_microseconds} us")
    if requested.HasField("max_sdu_size_bytes") and granted.max_sdu_size_bytes < requested.max_sdu_size_bytes:
        out.append(f"{direction}: max SDU below the request")
    return out


def qos_shortfalls(granted: QosSpec, requested: QosSpec) -> list[str]:
    return shortfalls(granted.sending, requested.sending, "sending") + shortfalls(
        granted.receiving, requested.receiving, "receiving"
    )


# -- what a valid flowspec is (the FLOW clauses), for what the suite receives rather than sends ---
NOTIFICATIONS = frozenset(
    {ST.SERVICE_TYPE_NETWORK_UNAVAILABLE, ST.SERVICE_TYPE_GENERAL_INFORMATION, ST.SERVICE_TYPE_NONCONFORMING}
)
SENTINELS = frozenset({QOS_NOT_SPECIFIED, POSITIVE_INFINITY_RATE})
NUMERIC_FIELDS = (
    "token_rate_bytes_per_second",
    "token_bucket_size_bytes",
    "peak_bandwidth_bytes_per_second",
    "latency_microseconds",
    "delay_variation_microseconds",
    "max_sdu_size_bytes",
    "minimum_policed_size_bytes",
)


def flowspec_problems(spec: FlowSpec, direction: str, mtu: int = 0) -> list[str]:
    """Why `spec` could not be sent as the `direction` flowspec of a CreateCall (SPEC.md FLOW-3 …
    FLOW-17): a counter-offer the application cannot even ask for is no offer (PROV-2). `mtu` is
    the advertised max_sdu_size_bytes (0: not advertised)."""
    out: list[str] = []
    stype = spec.service_type
    if stype == ST.SERVICE_TYPE_UNSPECIFIED:
        return [f"{direction}: no service type (FLOW-3)"]
    if stype not in ST.values():
        return [f"{direction}: service type {stype} is not defined (FLOW-4)"]
    if stype in NOTIFICATIONS:
        return [f"{direction}: {ST.Name(stype)} is a notification, not a request (FLOW-5)"]
    if stype == ST.SERVICE_TYPE_NO_CHANGE:
        return [f"{direction}: NO_CHANGE cannot be asked for in a new call (FLOW-6)"]
    reserving = stype in RESERVING
    for name in NUMERIC_FIELDS:
        if spec.HasField(name) and getattr(spec, name) in SENTINELS:
            out.append(f"{direction}: {name} is the raw Winsock sentinel {getattr(spec, name):#x} (FLOW-12)")
    has_rate = spec.HasField("token_rate_bytes_per_second")
    if has_rate and spec.token_rate_bytes_per_second == 0:
        out.append(f"{direction}: token rate 0 (FLOW-7)")
    needs_rate = (direction == "sending" and reserving) or stype == ST.SERVICE_TYPE_GUARANTEED
    if needs_rate and not has_rate:
        out.append(f"{direction}: {ST.Name(stype)} without a token rate (FLOW-8)")
    if spec.HasField("peak_bandwidth_bytes_per_second"):
        if spec.peak_bandwidth_unbounded:
            out.append(f"{direction}: peak both given and unbounded (FLOW-11)")
        elif has_rate and spec.peak_bandwidth_bytes_per_second < spec.token_rate_bytes_per_second:
            out.append(
                f"{direction}: peak {spec.peak_bandwidth_bytes_per_second} below token rate "
                f"{spec.token_rate_bytes_per_second} (FLOW-10)"
            )
    if spec.HasField("minimum_policed_size_bytes"):
        if spec.minimum_policed_size_bytes == 0:
            out.append(f"{direction}: minimum policed size 0 (FLOW-13)")
        elif spec.HasField("max_sdu_size_bytes") and spec.minimum_policed_size_bytes > spec.max_sdu_size_bytes:
            out.append(f"{direction}: minimum policed size above max SDU (FLOW-14)")
    if spec.HasField("max_sdu_size_bytes"):
        if spec.max_sdu_size_bytes == 0:
            out.append(f"{direction}: max SDU 0 (FLOW-15)")
        elif reserving and mtu and spec.max_sdu_size_bytes > mtu:
            out.append(f"{direction}: max SDU {spec.max_sdu_size_bytes} above the advertised MTU {mtu} (FLOW-17)")
    if reserving and spec.HasField("token_bucket_size_bytes") and spec.token_bucket_size_bytes == 0:
        out.append(f"{direction}: token bucket 0 (FLOW-16)")
    return out


def qos_problems(qos: QosSpec, mtu: int = 0) -> list[str]:
    """What makes `qos` invalid in a request. A direction left out is valid: best effort in a new
    call, kept in a renegotiation (FLOW-20)."""
    return [
        problem
        for direction in ("sending", "receiving")
        if qos.HasField(direction)
        for problem in flowspec_problems(getattr(qos, direction), direction, mtu)
    ]


def request_clauses(request: svc.CreateCallRequest, mtu: int = 0) -> set[str]:
    """The clauses of SPEC.md a CreateCallRequest breaks, as the suite states them (empty: valid)."""
    found: set[str] = set()
    call = request.call
    for problem in qos_problems(call.requested_qos, mtu):
        found.update(re.findall(r"(FLOW-[0-9]+)", problem))
    if len(call.requested_qos.provider_specific) > 4096:
        found.add("FLOW-19")
    if not call.destination or len(call.destination) > 256 or not call.destination.isprintable():
        found.add("REQ-1")
    if call.service_level not in ServiceLevel.values():
        found.add("REQ-2")
    rid = request.request_id
    if rid and (len(rid) > 64 or not rid.isascii() or not rid.isprintable() or " " in rid):
        found.add("REQ-3")
    if request.call_id and not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", request.call_id):
        found.add("REQ-4")
    return found


# -- the guaranteed-service delay bound (SPEC.md DELAY-1 … DELAY-3), stated again ----------------
@dataclass(frozen=True)
class Path:
    """A link's exported RFC 2212 terms, as ListLinks reports them."""

    c_bytes: int
    d_microseconds: int
    latency_microseconds: int  # the fixed path latency (RFC 2215 minimum path latency)
    mtu_bytes: int

    @property
    def fixed_microseconds(self) -> int:
        """What no rate can remove from the bound: Dtot plus the fixed path latency."""
        return self.d_microseconds + self.latency_microseconds


def delay_bound_us(spec: FlowSpec, path: Path) -> float:
    """The end-to-end delay bound of a GUARANTEED flowspec over `path` (DELAY-1, DELAY-2, DELAY-3):
    R = what it reserves; M = its max SDU (else the MTU); b = its bucket (else M); with a bounded
    peak R = p and Q = (M + C)/R + D + L; otherwise Q = (b - M)/R + (M + C)/R + D + L (b - M ≥ 0)."""
    rate = reserved_rate(spec)
    if rate <= 0:
        return float("inf")
    m_big = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else path.mtu_bytes
    bucket = spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else m_big
    bounded = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
    queueing = (m_big + path.c_bytes) / rate + (0 if bounded else max(bucket - m_big, 0) / rate)
    return queueing * 1_000_000 + path.fixed_microseconds


def cl(rate: int | None, **fields: Any) -> FlowSpec:
    spec = FlowSpec(service_type=ST.SERVICE_TYPE_CONTROLLED_LOAD, **fields)
    if rate is not None:
        spec.token_rate_bytes_per_second = rate
    return spec


def flow(stype: flowspec_pb2.ServiceType, **fields: Any) -> FlowSpec:
    return FlowSpec(service_type=stype, **fields)


def best_effort() -> FlowSpec:
    return FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT)


# -- invalid requests (INVALID_ARGUMENT / INVALID_REQUEST, before any provider is asked) -------
Mutator = Callable[[svc.CreateCallRequest], None]


@dataclass(frozen=True)
class InvalidCase:
    number: int  # CORE-VAL-<number>
    title: str
    spec: tuple[str, ...]  # the SPEC.md clauses the case verifies
    source: str  # their short source, for reports
    mutate: Mutator
    field: str  # the BadRequest field path that must be named
    needs_mtu: bool = False


def _sending(req: svc.CreateCallRequest) -> FlowSpec:
    return req.call.requested_qos.sending


def _receiving(req: svc.CreateCallRequest) -> FlowSpec:
    return req.call.requested_qos.receiving


def _set_sending(**values: Any) -> Mutator:
    """A mutation setting fields of the sending flowspec; a callable value is computed from it."""

    def mutate(req: svc.CreateCallRequest) -> None:
        spec = _sending(req)
        for name, value in values.items():
            setattr(spec, name, value(spec) if callable(value) else value)

    return mutate


Q = "call.requested_qos"
INVALID_CASES: tuple[InvalidCase, ...] = (
    InvalidCase(
        1,
        "sending service type left unspecified",
        ("FLOW-1", "FLOW-3"),
        "Winsock2 FLOWSPEC remarks: ServiceType is never defaulted",
        lambda r: _sending(r).ClearField("service_type"),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        2,
        "receiving service type left unspecified",
        ("FLOW-1", "FLOW-3"),
        "Winsock2 FLOWSPEC remarks: ServiceType is never defaulted",
        lambda r: _receiving(r).ClearField("service_type"),
        f"{Q}.receiving.service_type",
    ),
    InvalidCase(
        3,
        "token rate 0",
        ("FLOW-1", "FLOW-7"),
        "Winsock2 FLOWSPEC TokenRate: cannot be zero",
        lambda r: setattr(_sending(r), "token_rate_bytes_per_second", 0),
        f"{Q}.sending.token_rate_bytes_per_second",
    ),
    InvalidCase(
        4,
        "sending CONTROLLED_LOAD without a token rate",
        ("FLOW-1", "FLOW-8"),
        "Winsock2 FLOWSPEC TokenRate: not defaulted in a sending flowspec",
        lambda r: _sending(r).ClearField("token_rate_bytes_per_second"),
        f"{Q}.sending.token_rate_bytes_per_second",
    ),
    InvalidCase(
        5,
        "GUARANTEED receiver without a token rate",
        ("FLOW-1", "FLOW-8"),
        "Winsock2 FLOWSPEC remarks: a Guaranteed Service receiver specifies TokenRate",
        lambda r: _receiving(r).CopyFrom(flow(ST.SERVICE_TYPE_GUARANTEED)),
        f"{Q}.receiving.token_rate_bytes_per_second",
    ),
    InvalidCase(
        6,
        "peak bandwidth below the token rate",
        ("FLOW-1", "FLOW-10"),
        "Winsock2 FLOWSPEC remarks: PeakBandwidth >= TokenRate",
        lambda r: setattr(_sending(r), "peak_bandwidth_bytes_per_second", _sending(r).token_rate_bytes_per_second - 1),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        7,
        "peak bandwidth both given and unbounded",
        ("FLOW-1", "FLOW-11"),
        "flowspec.proto FlowSpec.peak_bandwidth_bytes_per_second",
        _set_sending(
            peak_bandwidth_bytes_per_second=lambda s: 10 * s.token_rate_bytes_per_second, peak_bandwidth_unbounded=True
        ),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        8,
        "minimum policed size above max SDU size",
        ("FLOW-1", "FLOW-14"),
        "project decision after the RFC 2212 TSpec (m <= M)",
        _set_sending(max_sdu_size_bytes=500, minimum_policed_size_bytes=501),
        f"{Q}.sending.minimum_policed_size_bytes",
    ),
    InvalidCase(
        9,
        "minimum policed size 0",
        ("FLOW-1", "FLOW-13"),
        "Winsock2 FLOWSPEC MinimumPolicedSize: not 0 with RSVP",
        lambda r: setattr(_sending(r), "minimum_policed_size_bytes", 0),
        f"{Q}.sending.minimum_policed_size_bytes",
    ),
    InvalidCase(
        10,
        "max SDU size 0",
        ("FLOW-1", "FLOW-15"),
        "project decision after the RFC 2212 TSpec (M positive)",
        lambda r: setattr(_sending(r), "max_sdu_size_bytes", 0),
        f"{Q}.sending.max_sdu_size_bytes",
    ),
    InvalidCase(
        11,
        "token bucket size 0 on a reserving flow",
        ("FLOW-1", "FLOW-16"),
        "project decision after the RFC 2212 TSpec (b positive)",
        lambda r: setattr(_sending(r), "token_bucket_size_bytes", 0),
        f"{Q}.sending.token_bucket_size_bytes",
    ),
    InvalidCase(
        12,
        "max SDU size above the advertised path MTU",
        ("FLOW-1", "FLOW-17"),
        "RFC 2212 policing: datagrams above the link MTU are non-conformant",
        lambda r: None,
        f"{Q}.sending.max_sdu_size_bytes",
        needs_mtu=True,
    ),
    InvalidCase(
        13,
        "NETWORK_UNAVAILABLE (a notification) in a request",
        ("FLOW-1", "FLOW-5"),
        "Winsock2 FLOWSPEC SERVICETYPE_NETWORK_UNAVAILABLE: a notification",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NETWORK_UNAVAILABLE)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        14,
        "GENERAL_INFORMATION on the receiving side",
        ("FLOW-1", "FLOW-5"),
        "Winsock2 FLOWSPEC SERVICETYPE_GENERAL_INFORMATION: sender side only",
        lambda r: _receiving(r).CopyFrom(flow(ST.SERVICE_TYPE_GENERAL_INFORMATION)),
        f"{Q}.receiving.service_type",
    ),
    InvalidCase(
        15,
        "NONCONFORMING in a request",
        ("FLOW-1", "FLOW-5"),
        "Winsock2 FLOWSPEC SERVICETYPE_NONCONFORMING: a notification",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NONCONFORMING)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        16,
        "NO_CHANGE when making a call",
        ("FLOW-1", "FLOW-6"),
        "Winsock2 FLOWSPEC SERVICETYPE_NOCHANGE: for a change of QoS",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NO_CHANGE)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        17,
        "raw QOS_NOT_SPECIFIED sentinel as a number",
        ("FLOW-1", "FLOW-12"),
        "flowspec.proto FlowSpec: no raw qos.h sentinels",
        lambda r: setattr(_sending(r), "latency_microseconds", QOS_NOT_SPECIFIED),
        f"{Q}.sending.latency_microseconds",
    ),
    InvalidCase(
        18,
        "raw POSITIVE_INFINITY_RATE sentinel as the peak",
        ("FLOW-1", "FLOW-12"),
        "flowspec.proto FlowSpec: peak_bandwidth_unbounded, not 0xFFFFFFFE",
        lambda r: setattr(_sending(r), "peak_bandwidth_bytes_per_second", POSITIVE_INFINITY_RATE),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        19,
        "unknown service type number",
        ("FLOW-1", "FLOW-4"),
        "Winsock2 FLOWSPEC ServiceType: one of the defined values",
        lambda r: setattr(_sending(r), "service_type", 77),
        f"{Q}.sending.service_type",
    ),
    # 20 and 21 (a missing QoS, a missing direction) were withdrawn with FLOW-18: an absent
    # direction is best effort (FLOW-20, CORE-VAL-031). Check ids are never reused.
    InvalidCase(
        22,
        "provider-specific data above 4096 bytes",
        ("FLOW-1", "FLOW-19"),
        "flowspec.proto QosSpec.provider_specific: at most 4096 bytes",
        lambda r: setattr(r.call.requested_qos, "provider_specific", b"\x00" * 4097),
        f"{Q}.provider_specific",
    ),
    InvalidCase(
        23,
        "destination empty",
        ("FLOW-1", "REQ-1"),
        "call.proto Call.destination: 1-256 printable characters",
        lambda r: setattr(r.call, "destination", ""),
        "call.destination",
    ),
    InvalidCase(
        24,
        "unknown service level",
        ("FLOW-1", "REQ-2"),
        "call.proto ServiceLevel (TAPI 3 QOS_SERVICE_LEVEL)",
        lambda r: setattr(r.call, "service_level", 9),
        "call.service_level",
    ),
    InvalidCase(
        25,
        "request_id longer than 64 characters",
        ("FLOW-1", "REQ-3"),
        "callqos_service.proto CreateCallRequest.request_id (AIP-155)",
        lambda r: setattr(r, "request_id", "r" * 65),
        "request_id",
    ),
    InvalidCase(
        26,
        "malformed call_id",
        ("FLOW-1", "REQ-4"),
        "callqos_service.proto CreateCallRequest.call_id (AIP-122)",
        lambda r: setattr(r, "call_id", "Bad_Call_ID"),
        "call_id",
    ),
)


def valid_request_qos(rate: int) -> QosSpec:
    """The baseline every invalid case mutates: valid on its own, one field made bad per case."""
    return QosSpec(sending=cl(rate, token_bucket_size_bytes=1500), receiving=best_effort())
