"""Independent verification of every answer a check receives: the suite judges each grant, refusal
and counter-offer itself, by the rules of SPEC.md stated in `rules`, instead of trusting the server
in front of the provider to have rejected a bad one. So `--target` against a server that checks
nothing catches the same faults as `--provider` against the reference server.

Each problem is a sentence that starts with the clause it breaks, e.g.
"[GRANT-3] sending: token rate 90000 < 100000".
"""

from __future__ import annotations

from dataclasses import dataclass

from callqos.conformance.rules import (
    RESERVING,
    ST,
    QosSpec,
    ServiceLevel,
    qos_problems,
    qos_rates,
    qos_shortfalls,
)
from callqos.v1 import call_pb2, provider_pb2

Level = ServiceLevel
DIRECTIONS = ("sending", "receiving")


@dataclass(frozen=True)
class Limits:
    """What the target advertised, as far as verification needs it."""

    service_types: frozenset[int]
    capacity: int  # per direction (0: unknown)
    mtu: int  # advertised max_sdu_size_bytes (0: not advertised)
    min_latency: int  # advertised min_latency_microseconds (0: not advertised)
    qos_supported: bool

    @classmethod
    def of(cls, caps: provider_pb2.ProviderCapabilities, capacity: int) -> Limits:
        return cls(
            frozenset(caps.service_types),
            capacity,
            caps.max_sdu_size_bytes,
            caps.min_latency_microseconds,
            caps.qos_supported,
        )


def _types(qos: QosSpec, limits: Limits, what: str) -> list[str]:
    out = []
    for direction in DIRECTIONS:
        stype = getattr(qos, direction).service_type
        if stype in RESERVING and (not limits.qos_supported or stype not in limits.service_types):
            out.append(f"[PROV-9] {what} {direction} is {ST.Name(stype)}, which the provider does not advertise")
    return out


def _within_capacity(qos: QosSpec, limits: Limits, what: str) -> list[str]:
    if not limits.capacity:
        return []
    return [
        f"[ADMIT-1] {what} reserves {rate} B/s {direction}, more than the {limits.capacity} B/s capacity"
        for direction, rate in zip(DIRECTIONS, qos_rates(qos), strict=True)
        if rate > limits.capacity
    ]


def _latency(qos: QosSpec, limits: Limits, what: str) -> list[str]:
    out = []
    for direction in DIRECTIONS:
        spec = getattr(qos, direction)
        if (
            spec.service_type == ST.SERVICE_TYPE_GUARANTEED
            and limits.min_latency
            and spec.HasField("latency_microseconds")
            and spec.latency_microseconds < limits.min_latency
        ):
            out.append(
                f"[DELAY-4] {what} {direction} states a delay bound of {spec.latency_microseconds} us, below the "
                f"{limits.min_latency} us no path of this provider can beat (advertised min_latency_microseconds)"
            )
    return out


def grant_problems(level: int, asked: QosSpec, granted: QosSpec, limits: Limits) -> list[str]:
    """What is wrong with `granted` as the answer to `asked` at service level `level` (the QoS the
    provider was asked for: after NO_CHANGE is resolved, for a renegotiation)."""
    out: list[str] = []
    if level in (Level.SERVICE_LEVEL_NEEDED, Level.SERVICE_LEVEL_UNSPECIFIED):
        out += [f"[GRANT-3] granted at NEEDED short of the request: {p}" for p in qos_shortfalls(granted, asked)]
    if level == Level.SERVICE_LEVEL_BEST_EFFORT and any(qos_rates(granted)):
        out.append(f"[LEVEL-3] a call at service level BEST_EFFORT was granted a reservation {qos_rates(granted)}")
    out += _types(granted, limits, "the grant")
    out += _within_capacity(granted, limits, "the grant")
    out += _latency(granted, limits, "the grant")
    return out


def counter_offer_problems(offer: QosSpec, limits: Limits) -> list[str]:
    """A counter-offer is "the best QoS the provider could grant right now" (PROV-2): a request the
    application can send as it is, for what the provider offers and what fits."""
    out = [f"[PROV-2] the counter-offer cannot be asked for: {p}" for p in qos_problems(offer, limits.mtu)]
    out += _types(offer, limits, "the counter-offer")
    out += [p.replace("[ADMIT-1]", "[PROV-2]") for p in _within_capacity(offer, limits, "the counter-offer")]
    out += _latency(offer, limits, "the counter-offer")
    return out


def refusal_problems(name: str, refusal: call_pb2.QosRefusal | None, limits: Limits) -> list[str]:
    """A QoS refusal carries a QosRefusal naming the call (ADMIT-3) and, if any, a counter-offer
    that can be granted (PROV-2)."""
    if refusal is None:
        return [f"[ADMIT-3] the refusal of {name} carries no callqos.v1.QosRefusal"]
    out = []
    if refusal.call != name:
        out.append(f"[ADMIT-3] the QosRefusal names {refusal.call!r}, not the refused call {name}")
    if refusal.HasField("counter_offer"):
        out += counter_offer_problems(refusal.counter_offer, limits)
    return out
