"""Strategies and checks for the ledger tests: flowspecs over the WHOLE valid range of every field
(rate 1, huge buckets, the largest values a field may carry), and the invariants of the
admission ledger (README "The admission ledger"; conformance/SPEC.md LINK-2, LINK-6, CALL-5).

Validity is decided by the server's own `validation` module (the oracle): a drawn request is a
"validated request" exactly when validation accepts it, so the tests hold the rest of the server to
what it promises for every such request, without a second copy of the FLOW rules here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from callqos.server.qos import RESERVING, SENTINELS, qos_shortfalls, reserved_rate
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
State = call_pb2.Call.State

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
LARGEST_32 = 0xFFFFFFFD  # the largest uint32 a flowspec field may carry (FLOW-12)

# The service types a request may carry (NO_CHANGE only when renegotiating).
REQUEST_TYPES = (
    ST.SERVICE_TYPE_BEST_EFFORT,
    ST.SERVICE_TYPE_CONTROLLED_LOAD,
    ST.SERVICE_TYPE_GUARANTEED,
    ST.SERVICE_TYPE_QUALITATIVE,
    ST.SERVICE_TYPE_NO_TRAFFIC,
    ST.SERVICE_TYPE_NETWORK_CONTROL,
)
LEVELS = (
    Level.SERVICE_LEVEL_UNSPECIFIED,
    Level.SERVICE_LEVEL_NEEDED,
    Level.SERVICE_LEVEL_IF_AVAILABLE,
    Level.SERVICE_LEVEL_BEST_EFFORT,
)

# Two links with different MTUs and path terms, so that routing, the MTU cut of a counter-offer
# and both delay-bound branches are exercised. Calls whose destination starts with "sip:wan" go
# to "wan"; everything else to "default".
LINKS: list[dict[str, Any]] = [
    {"id": "default", "capacity_bytes_per_second": 1_250_000, "mtu_bytes": 1500},
    {
        "id": "wan",
        "capacity_bytes_per_second": 10_000_000,
        "mtu_bytes": 9000,
        "error_term_c_bytes": 9000,
        "error_term_d_microseconds": 20_000,
        "min_path_latency_microseconds": 40_000,
        "destinations": ["sip:wan"],
    },
]
PROVIDER = "providers/reference"
LINK_NAMES = tuple(f"{PROVIDER}/links/{link['id']}" for link in LINKS)
DESTINATIONS = ("sip:alice@example.test", "sip:wan-bob@example.test")


def link_of(destination: str) -> str:
    return LINK_NAMES[1] if destination.startswith("sip:wan") else LINK_NAMES[0]


def not_sentinel(value: int) -> bool:
    return value not in SENTINELS


def uint64s() -> st.SearchStrategy[int]:
    """Rates and buckets: tiny, around the links' capacities, huge, and the extremes."""
    return st.one_of(
        st.integers(1, 16),
        st.integers(1_000, 2_000_000),
        st.integers(1, 10**13),
        st.integers(1, UINT64_MAX),
        st.sampled_from([UINT64_MAX, UINT64_MAX - 1, LARGEST_32, 2**32, 2**63, 10**9, 10**12]),
    ).filter(not_sentinel)


def uint32s(low: int = 0, high: int = LARGEST_32) -> st.SearchStrategy[int]:
    """Latencies and sizes: small, mid-range, anything, and the largest allowed."""
    return st.one_of(
        st.integers(low, min(high, low + 100)),
        st.integers(low, min(high, 10**7)),
        st.integers(low, high),
        st.just(high),
    ).filter(not_sentinel)


@st.composite
def flowspecs(draw: st.DrawFn, *, sending: bool, renegotiation: bool = False, mtu: int = 9000) -> FlowSpec:
    """A flowspec over the whole range of every field; almost always valid (validation decides)."""
    if renegotiation and draw(st.integers(0, 2)) == 0:  # NO_CHANGE a third of the time
        return FlowSpec(service_type=ST.SERVICE_TYPE_NO_CHANGE)
    spec = FlowSpec(service_type=draw(st.sampled_from(REQUEST_TYPES)))
    reserving = spec.service_type in RESERVING
    needs_rate = reserving and (sending or spec.service_type == ST.SERVICE_TYPE_GUARANTEED)
    if needs_rate or draw(st.booleans()):
        spec.token_rate_bytes_per_second = draw(uint64s())
    peak = draw(st.sampled_from(["unspecified", "unbounded", "bounded"]))
    if peak == "unbounded":
        spec.peak_bandwidth_unbounded = True
    elif peak == "bounded":
        low = spec.token_rate_bytes_per_second or 1
        spec.peak_bandwidth_bytes_per_second = draw(
            st.one_of(st.just(low), st.integers(low, min(UINT64_MAX, low * 4)), st.integers(low, UINT64_MAX)).filter(
                not_sentinel
            )
        )
    if draw(st.booleans()):
        spec.token_bucket_size_bytes = draw(uint64s())
    if draw(st.booleans()):
        spec.latency_microseconds = draw(uint32s())
    if draw(st.booleans()):
        spec.delay_variation_microseconds = draw(uint32s())
    if draw(st.booleans()):
        spec.max_sdu_size_bytes = draw(uint32s(1, mtu if reserving else LARGEST_32))
    if draw(st.booleans()):
        ceiling = spec.max_sdu_size_bytes if spec.HasField("max_sdu_size_bytes") else LARGEST_32
        spec.minimum_policed_size_bytes = draw(uint32s(1, ceiling))
    return spec


@st.composite
def qos_specs(draw: st.DrawFn, *, renegotiation: bool = False) -> QosSpec:
    return QosSpec(
        sending=draw(flowspecs(sending=True, renegotiation=renegotiation)),
        receiving=draw(flowspecs(sending=False, renegotiation=renegotiation)),
        provider_specific=draw(st.sampled_from([b"", b"\x00", b"opaque"])),
    )


def capacities() -> st.SearchStrategy[int]:
    """UpdateLink capacities: the swings that matter (to nothing, to the default, up to the
    largest uint64, and back)."""
    return st.one_of(
        st.sampled_from([0, 1, 1_250_000, 10_000_000, 10**9, 10**12, UINT64_MAX, 2**63]),
        st.integers(0, 5_000_000),
        st.integers(0, UINT64_MAX),
    )


# -- the ledger's invariants ------------------------------------------------------------------------
@dataclass(frozen=True)
class Sums:
    sending: int
    receiving: int


def sums_by_link(calls: Iterable[call_pb2.Call]) -> dict[str, Sums]:
    """What the CONNECTED calls reserve on each link under the accounting rule (GRANT-1)."""
    totals: dict[str, list[int]] = {name: [0, 0] for name in LINK_NAMES}
    for call in calls:
        if call.state != State.STATE_CONNECTED or call.provider != PROVIDER:
            continue
        total = totals[link_of(call.destination)]
        total[0] += reserved_rate(call.granted_qos.sending)
        total[1] += reserved_rate(call.granted_qos.receiving)
    return {name: Sums(*pair) for name, pair in totals.items()}


def ledger_problems(links: Mapping[str, provider_pb2.Link], calls: Iterable[call_pb2.Call]) -> list[str]:
    """Every way the links and the connected calls disagree with the ledger's invariants."""
    calls = list(calls)
    problems = []
    for name, expected in sums_by_link(calls).items():
        link = links[name]
        held = Sums(link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second)
        if held != expected:
            problems.append(f"{name}: the link reports {held}, its connected calls sum to {expected}")
        for direction, rate in (("sending", held.sending), ("receiving", held.receiving)):
            if rate > link.capacity_bytes_per_second:
                problems.append(
                    f"{name}: {direction} reserves {rate} B/s over capacity {link.capacity_bytes_per_second}"
                )
    for call in calls:
        if call.state != State.STATE_CONNECTED:
            continue
        if call.service_level == Level.SERVICE_LEVEL_NEEDED:
            missing = qos_shortfalls(call.granted_qos, call.requested_qos)
            if missing:
                problems.append(f"{call.name} is NEEDED and connected below its request: {missing}")
        if call.service_level == Level.SERVICE_LEVEL_BEST_EFFORT and (
            reserved_rate(call.granted_qos.sending) or reserved_rate(call.granted_qos.receiving)
        ):
            problems.append(f"{call.name} is BEST_EFFORT and holds a reservation")
    return problems
