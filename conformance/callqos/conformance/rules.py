"""The contract, stated again independently of the server's code (the suite must not trust
what it certifies): what a flowspec reserves, when a grant satisfies a request, and the
invalid requests every implementation must refuse — each with the clause it comes from.

Sources: Winsock2 FLOWSPEC remarks and qos.h (qos-domain.md §1.1, §1.2), RFC 2212/2211
(§4.1, §4.2), TAPI lineMakeCall / lineSetCallQualityOfService (§2), and the comments of
protos/callqos/v1 (the API contract this suite certifies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
ServiceLevel = call_pb2.ServiceLevel

# FLOWSPEC table: only CONTROLLED_LOAD (RFC 2211) and GUARANTEED (RFC 2212) reserve.
RESERVING = frozenset({ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED})
# qos-domain §8.5 #8: BEST_EFFORT and NO_TRAFFIC always admit and reserve nothing.
NON_RESERVING = (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC)
QOS_NOT_SPECIFIED = 0xFFFFFFFF  # qos.h
POSITIVE_INFINITY_RATE = 0xFFFFFFFE  # qos.h


def reserved_rate(spec: FlowSpec) -> int:
    """Bytes/s one direction holds (flowspec.proto ServiceType comments): CONTROLLED_LOAD its
    token rate; GUARANTEED its peak rate, or its token rate when the peak is unbounded or
    unspecified (RFC 2212 RSpec R >= r); anything else nothing."""
    if spec.service_type == ST.SERVICE_TYPE_CONTROLLED_LOAD:
        return spec.token_rate_bytes_per_second
    if spec.service_type == ST.SERVICE_TYPE_GUARANTEED:
        bounded = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
        return spec.peak_bandwidth_bytes_per_second if bounded else spec.token_rate_bytes_per_second
    return 0


def qos_rates(qos: QosSpec) -> tuple[int, int]:
    return reserved_rate(qos.sending), reserved_rate(qos.receiving)


def shortfalls(granted: FlowSpec, requested: FlowSpec, direction: str) -> list[str]:
    """Why `granted` does not give what `requested` asks for at NEEDED (TAPI QSL_NEEDED: "connect
    only with the requested QoS"). Fields the request leaves out are the provider's to choose."""
    out: list[str] = []
    if granted.service_type != requested.service_type:
        return [f"{direction}: service type {ST.Name(granted.service_type)}, asked {ST.Name(requested.service_type)}"]
    if requested.service_type not in RESERVING:
        return out
    if granted.token_rate_bytes_per_second < requested.token_rate_bytes_per_second:
        out.append(
            f"{direction}: token rate {granted.token_rate_bytes_per_second} < {requested.token_rate_bytes_per_second}"
        )
    if requested.HasField("peak_bandwidth_bytes_per_second") and not granted.peak_bandwidth_unbounded:
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
    reference: str
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
FLOWSPEC_DOC = "Winsock2 FLOWSPEC remarks (qos.h; qos-domain §1.1)"
INVALID_CASES: tuple[InvalidCase, ...] = (
    InvalidCase(
        1,
        "sending service type left unspecified",
        f"{FLOWSPEC_DOC}: ServiceType may never be defaulted",
        lambda r: _sending(r).ClearField("service_type"),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        2,
        "receiving service type left unspecified",
        f"{FLOWSPEC_DOC}: ServiceType may never be defaulted",
        lambda r: _receiving(r).ClearField("service_type"),
        f"{Q}.receiving.service_type",
    ),
    InvalidCase(
        3,
        "token rate 0",
        f"{FLOWSPEC_DOC}: TokenRate cannot be set to zero; qos-domain §8.5 #1",
        lambda r: setattr(_sending(r), "token_rate_bytes_per_second", 0),
        f"{Q}.sending.token_rate_bytes_per_second",
    ),
    InvalidCase(
        4,
        "sending CONTROLLED_LOAD without a token rate",
        f"{FLOWSPEC_DOC}: TokenRate cannot be QOS_NOT_SPECIFIED in a sending FLOWSPEC; §8.5 #2",
        lambda r: _sending(r).ClearField("token_rate_bytes_per_second"),
        f"{Q}.sending.token_rate_bytes_per_second",
    ),
    InvalidCase(
        5,
        "GUARANTEED receiver without a token rate",
        f"{FLOWSPEC_DOC}: a guaranteed receiver must specify ServiceType and TokenRate; §8.5 #6",
        lambda r: _receiving(r).CopyFrom(flow(ST.SERVICE_TYPE_GUARANTEED)),
        f"{Q}.receiving.token_rate_bytes_per_second",
    ),
    InvalidCase(
        6,
        "peak bandwidth below the token rate",
        f"{FLOWSPEC_DOC}: PeakBandwidth, if specified, must be >= TokenRate; RFC 2212 TSpec p >= r; §8.5 #3",
        lambda r: setattr(_sending(r), "peak_bandwidth_bytes_per_second", _sending(r).token_rate_bytes_per_second - 1),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        7,
        "peak bandwidth both given and unbounded",
        "flowspec.proto FlowSpec.peak_bandwidth_bytes_per_second: exclusive with peak_bandwidth_unbounded",
        _set_sending(
            peak_bandwidth_bytes_per_second=lambda s: 10 * s.token_rate_bytes_per_second, peak_bandwidth_unbounded=True
        ),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        8,
        "minimum policed size above max SDU size",
        "RFC 2212 TSpec: m <= M; qos-domain §8.5 #4",
        _set_sending(max_sdu_size_bytes=500, minimum_policed_size_bytes=501),
        f"{Q}.sending.minimum_policed_size_bytes",
    ),
    InvalidCase(
        9,
        "minimum policed size 0",
        f"{FLOWSPEC_DOC}: MinimumPolicedSize cannot be 0 with RSVP; §8.5 #4",
        lambda r: setattr(_sending(r), "minimum_policed_size_bytes", 0),
        f"{Q}.sending.minimum_policed_size_bytes",
    ),
    InvalidCase(
        10,
        "max SDU size 0",
        "RFC 2212 TSpec: M must be positive (qos-domain §4.1 [K])",
        lambda r: setattr(_sending(r), "max_sdu_size_bytes", 0),
        f"{Q}.sending.max_sdu_size_bytes",
    ),
    InvalidCase(
        11,
        "token bucket size 0 on a reserving flow",
        "RFC 2212 TSpec: b must be positive (qos-domain §4.1 [K])",
        lambda r: setattr(_sending(r), "token_bucket_size_bytes", 0),
        f"{Q}.sending.token_bucket_size_bytes",
    ),
    InvalidCase(
        12,
        "max SDU size above the advertised path MTU",
        "RFC 2212/2211: datagrams larger than the MTU are non-conformant; a request with M > MTU is rejected; §8.5 #5",
        lambda r: None,
        f"{Q}.sending.max_sdu_size_bytes",
        needs_mtu=True,
    ),
    InvalidCase(
        13,
        "NETWORK_UNAVAILABLE (a notification) in a request",
        "qos.h SERVICETYPE_NETWORK_UNAVAILABLE: used to notify change to user; §8.5 #7",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NETWORK_UNAVAILABLE)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        14,
        "GENERAL_INFORMATION on the receiving side",
        "qos.h SERVICETYPE_GENERAL_INFORMATION: sender side only; flowspec.proto: notification only; §8.5 #7",
        lambda r: _receiving(r).CopyFrom(flow(ST.SERVICE_TYPE_GENERAL_INFORMATION)),
        f"{Q}.receiving.service_type",
    ),
    InvalidCase(
        15,
        "NONCONFORMING in a request",
        "qos.h SERVICETYPE_NONCONFORMING; §8.5 #7",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NONCONFORMING)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        16,
        "NO_CHANGE when making a call",
        "qos.h SERVICETYPE_NOCHANGE: no change from the previous flowspec (renegotiation only)",
        lambda r: _sending(r).CopyFrom(flow(ST.SERVICE_TYPE_NO_CHANGE)),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        17,
        "raw QOS_NOT_SPECIFIED sentinel as a number",
        "flowspec.proto FlowSpec: raw sentinels 0xFFFFFFFF/0xFFFFFFFE are refused in every numeric field",
        lambda r: setattr(_sending(r), "latency_microseconds", QOS_NOT_SPECIFIED),
        f"{Q}.sending.latency_microseconds",
    ),
    InvalidCase(
        18,
        "raw POSITIVE_INFINITY_RATE sentinel as the peak",
        "flowspec.proto FlowSpec: set peak_bandwidth_unbounded instead of 0xFFFFFFFE",
        lambda r: setattr(_sending(r), "peak_bandwidth_bytes_per_second", POSITIVE_INFINITY_RATE),
        f"{Q}.sending.peak_bandwidth_bytes_per_second",
    ),
    InvalidCase(
        19,
        "unknown service type number",
        "qos.h SERVICETYPE values; WSA_QOS_ESERVICETYPE; §8.5 #7",
        lambda r: setattr(_sending(r), "service_type", 77),
        f"{Q}.sending.service_type",
    ),
    InvalidCase(
        20,
        "requested QoS missing",
        "call.proto CreateCallRequest: requested_qos is read (LINECALLPARAMS flowspecs)",
        lambda r: r.call.ClearField("requested_qos"),
        Q,
    ),
    InvalidCase(
        21,
        "receiving direction missing",
        "winsock2.h QOS {SendingFlowspec, ReceivingFlowspec}",
        lambda r: r.call.requested_qos.ClearField("receiving"),
        f"{Q}.receiving",
    ),
    InvalidCase(
        22,
        "provider-specific data above 4096 bytes",
        "flowspec.proto QosSpec.provider_specific: at most 4096 bytes; §8.5 #19",
        lambda r: setattr(r.call.requested_qos, "provider_specific", b"\x00" * 4097),
        f"{Q}.provider_specific",
    ),
    InvalidCase(
        23,
        "destination empty",
        "call.proto Call.destination: 1-256 printable characters",
        lambda r: setattr(r.call, "destination", ""),
        "call.destination",
    ),
    InvalidCase(
        24,
        "unknown service level",
        "call.proto ServiceLevel (TAPI QOS_SERVICE_LEVEL)",
        lambda r: setattr(r.call, "service_level", 9),
        "call.service_level",
    ),
    InvalidCase(
        25,
        "request_id longer than 64 characters",
        "callqos_service.proto CreateCallRequest.request_id (AIP-155)",
        lambda r: setattr(r, "request_id", "r" * 65),
        "request_id",
    ),
    InvalidCase(
        26,
        "malformed call_id",
        "callqos_service.proto CreateCallRequest.call_id: [a-z0-9-], starting with a letter",
        lambda r: setattr(r, "call_id", "Bad_Call_ID"),
        "call_id",
    ),
)


def valid_request_qos(rate: int) -> QosSpec:
    """The baseline every invalid case mutates: valid on its own, one field made bad per case."""
    return QosSpec(sending=cl(rate, token_bucket_size_bytes=1500), receiving=best_effort())
