"""What a flowspec means: how much it reserves (conformance/SPEC.md GRANT-1), whether a grant
satisfies a request (GRANT-3), NO_CHANGE resolution (SETQOS-4), the two ends of a call as each
other's mirror and what an answer may ask for (OFFER-2, ANSWER-2), and the RFC 2212 delay bound
(DELAY-1 … DELAY-3). Pure functions over the published protobuf types, used by validation, the
call manager and telemetry; what a provider needs of them is exported to provider authors by
`callqos.server.providers`.

Every quantity derived here is bounded (DELAY-5, PROV-20): latencies and sizes are uint32 on the
wire and rates uint64, and a flowspec never carries a raw Winsock sentinel (FLOW-12), so what a
provider writes into a flowspec goes through `representable`, and the delay bound is computed
exactly, in integers (`delay_bound_ceil_us`), so that comparing it with a latency never depends
on floating-point rounding at any magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

from callqos.v1 import flowspec_pb2

ST = flowspec_pb2.ServiceType
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec

# Service types that reserve capacity. Everything else valid in a request reserves nothing.
RESERVING = frozenset({ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED})
# Notification-only values: a provider may report them, a request may never carry them.
NOTIFICATION_ONLY = frozenset(
    {
        ST.SERVICE_TYPE_NETWORK_UNAVAILABLE,
        ST.SERVICE_TYPE_GENERAL_INFORMATION,
        ST.SERVICE_TYPE_NONCONFORMING,
    }
)
# Winsock sentinels that must not appear as raw numbers (absence / peak_bandwidth_unbounded
# say the same thing without ambiguity).
QOS_NOT_SPECIFIED = 0xFFFFFFFF
POSITIVE_INFINITY_RATE = 0xFFFFFFFE
SENTINELS = frozenset({QOS_NOT_SPECIFIED, POSITIVE_INFINITY_RATE})

MICROS = 1_000_000
# The largest value a flowspec's uint32 field (latency, delay variation, SDU sizes) may carry:
# 0xFFFFFFFE and 0xFFFFFFFF are the sentinels. A GUARANTEED flow whose delay bound exceeds it
# cannot be promised (DELAY-5).
LARGEST_UINT32_FIELD = 0xFFFFFFFD
# The largest value of a uint64 field (rates, bucket sizes, link capacities).
LARGEST_UINT64 = 2**64 - 1


def representable(value: int, largest: int = LARGEST_UINT64) -> int:
    """`value` as a provider may write it into a flowspec field: at most `largest`, never negative,
    and never a raw Winsock sentinel (a sentinel becomes the largest value below them). Only ever
    lowers a value, so a rate cut to what is free stays within what is free."""
    value = max(min(value, largest), 0)
    return LARGEST_UINT32_FIELD if value in SENTINELS else value


def reserved_rate(spec: FlowSpec) -> int:
    """Bytes/s one direction reserves: GUARANTEED its peak (or token) rate, CONTROLLED_LOAD its
    token rate, anything else nothing."""
    if spec.service_type == ST.SERVICE_TYPE_GUARANTEED:
        if spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded:
            return spec.peak_bandwidth_bytes_per_second
        return spec.token_rate_bytes_per_second
    if spec.service_type == ST.SERVICE_TYPE_CONTROLLED_LOAD:
        return spec.token_rate_bytes_per_second
    return 0


def best_effort_spec() -> FlowSpec:
    return FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT)


def best_effort_qos(provider_specific: bytes = b"") -> QosSpec:
    return QosSpec(sending=best_effort_spec(), receiving=best_effort_spec(), provider_specific=provider_specific)


def shortfalls(granted: FlowSpec, requested: FlowSpec) -> list[str]:
    """Why `granted` does not give what `requested` asks for (empty when it does).

    Fields the request leaves unspecified are the provider's to choose and are not compared.
    """
    problems: list[str] = []
    if granted.service_type != requested.service_type:
        problems.append(f"service type {ST.Name(granted.service_type)} instead of {ST.Name(requested.service_type)}")
        return problems
    if requested.service_type not in RESERVING:
        return problems
    if granted.token_rate_bytes_per_second < requested.token_rate_bytes_per_second:
        problems.append("token rate below the request")
    if requested.peak_bandwidth_unbounded:
        # Asked to burst without a peak limit: any bounded peak is below that.
        if granted.HasField("peak_bandwidth_bytes_per_second") and not granted.peak_bandwidth_unbounded:
            problems.append("peak bandwidth bounded, the request asked for an unbounded one")
    elif requested.HasField("peak_bandwidth_bytes_per_second") and not granted.peak_bandwidth_unbounded:
        if granted.peak_bandwidth_bytes_per_second < requested.peak_bandwidth_bytes_per_second:
            problems.append("peak bandwidth below the request")
    if requested.HasField("token_bucket_size_bytes"):
        if granted.token_bucket_size_bytes < requested.token_bucket_size_bytes:
            problems.append("token bucket below the request")
    if requested.HasField("latency_microseconds") and granted.HasField("latency_microseconds"):
        if granted.latency_microseconds > requested.latency_microseconds:
            problems.append("latency above the request")
    if requested.HasField("max_sdu_size_bytes"):
        if granted.max_sdu_size_bytes < requested.max_sdu_size_bytes:
            problems.append("max SDU size below the request")
    return problems


def qos_shortfalls(granted: QosSpec, requested: QosSpec) -> list[str]:
    return [f"sending: {p}" for p in shortfalls(granted.sending, requested.sending)] + [
        f"receiving: {p}" for p in shortfalls(granted.receiving, requested.receiving)
    ]


def resolve_no_change(requested: QosSpec, current: QosSpec) -> QosSpec:
    """A renegotiation request with SERVICE_TYPE_NO_CHANGE directions (and an empty
    provider_specific) replaced by what is in effect now."""
    resolved = QosSpec()
    resolved.CopyFrom(requested)
    if requested.sending.service_type == ST.SERVICE_TYPE_NO_CHANGE:
        resolved.sending.CopyFrom(current.sending)
    if requested.receiving.service_type == ST.SERVICE_TYPE_NO_CHANGE:
        resolved.receiving.CopyFrom(current.receiving)
    if not requested.provider_specific:
        resolved.provider_specific = current.provider_specific
    return resolved


def mirror(qos: QosSpec) -> QosSpec:
    """The same QoS seen from the other end of the call: what one party sends, the other
    receives (the sending and receiving flowspecs swapped; provider-specific data kept)."""
    return QosSpec(sending=qos.receiving, receiving=qos.sending, provider_specific=qos.provider_specific)


def answer_excess(answer: FlowSpec, offer: FlowSpec) -> list[str]:
    """Why one direction of an answer asks for more than the offer did (empty when it does not).

    An answer may keep the offered service type and ask for no more than the offer (the offer
    satisfies it, GRANT-3), or fall back to a service type that reserves nothing."""
    if answer.service_type not in RESERVING:
        return []
    if answer.service_type != offer.service_type:
        return [f"{ST.Name(answer.service_type)} was not offered (the offer is {ST.Name(offer.service_type)})"]
    # shortfalls() words it from the grant's side; here the offer plays the grant.
    return [_AS_EXCESS.get(problem, problem) for problem in shortfalls(offer, answer)]


_AS_EXCESS = {
    "token rate below the request": "token rate above the offer",
    "peak bandwidth bounded, the request asked for an unbounded one": "unbounded peak, the offer's is bounded",
    "peak bandwidth below the request": "peak bandwidth above the offer",
    "token bucket below the request": "token bucket above the offer",
    "latency above the request": "latency below the offer",
    "max SDU size below the request": "max SDU size above the offer",
}


@dataclass(frozen=True)
class PathTerms:
    """RFC 2212 characterisation of a path: error terms and fixed latency."""

    c_bytes: int
    d_microseconds: int
    min_path_latency_microseconds: int
    mtu_bytes: int


def guaranteed_delay_bound_us(spec: FlowSpec, path: PathTerms) -> float:
    """End-to-end delay bound of a GUARANTEED flow, in microseconds (conformance/SPEC.md DELAY-1
    … DELAY-3, modelled on RFC 2212), with the reserved rate R = reserved_rate(spec).

    With a bounded peak p the reservation is R = p, so the R >= p branch applies:
        Q = (M + Ctot) / R + Dtot
    With no peak (unbounded or unspecified) R = r and p = +inf, so the p > R branch applies, where
    (p - R) / (p - r) tends to 1:
        Q = (b - M) / R + (M + Ctot) / R + Dtot
    The bound adds the fixed path latency (RFC 2215 MINIMUM_PATH_LATENCY).
    """
    rate = reserved_rate(spec)
    if rate <= 0:
        return float("inf")
    m_big = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else path.mtu_bytes
    bucket = spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else m_big
    bounded_peak = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
    queueing_s = (m_big + path.c_bytes) / rate
    if not bounded_peak:
        queueing_s += max(bucket - m_big, 0) / rate
    return queueing_s * MICROS + path.d_microseconds + path.min_path_latency_microseconds


def delay_bound_ceil_us(spec: FlowSpec, path: PathTerms) -> int | None:
    """The delay bound of `guaranteed_delay_bound_us`, rounded up to a whole microsecond and
    computed exactly in integers (no float rounding at any magnitude); None when the flowspec
    reserves no rate (it has no bound). It may exceed any latency a flowspec can carry: compare
    it with `LARGEST_UINT32_FIELD` before writing it into one (DELAY-5)."""
    rate = reserved_rate(spec)
    if rate <= 0:
        return None
    m_big = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else path.mtu_bytes
    bucket = spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else m_big
    bounded_peak = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
    burst = 0 if bounded_peak else max(bucket - m_big, 0)
    queued_bytes = burst + m_big + path.c_bytes
    return -(-queued_bytes * MICROS // rate) + path.d_microseconds + path.min_path_latency_microseconds


def largest_bucket_within(spec: FlowSpec, path: PathTerms, latency_us: int) -> int | None:
    """The largest token bucket (at most the flowspec's own) with which a GUARANTEED flow's delay
    bound stays within `latency_us`; None when no bucket can (the rate is too low for that
    latency whatever the burst). With a bounded peak the bucket does not enter the bound (DELAY-2),
    so it is kept as it is when the bound fits."""
    rate = reserved_rate(spec)
    if rate <= 0:
        return None
    m_big = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else path.mtu_bytes
    bucket = spec.token_bucket_size_bytes if spec.HasField("token_bucket_size_bytes") else m_big
    slack_us = latency_us - path.d_microseconds - path.min_path_latency_microseconds
    # ceil(x * 1e6 / R) <= slack  ⟺  x <= floor(slack * R / 1e6), for whole bytes x.
    budget_bytes = slack_us * rate // MICROS if slack_us >= 0 else -1
    if m_big + path.c_bytes > budget_bytes:
        return None
    bounded_peak = spec.HasField("peak_bandwidth_bytes_per_second") and not spec.peak_bandwidth_unbounded
    if bounded_peak:
        return bucket
    # (b - M) + M + C <= budget  ⟺  b <= budget - C; a bucket below M adds no burst anyway.
    return min(bucket, budget_bytes - path.c_bytes)
