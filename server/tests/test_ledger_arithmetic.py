"""Arithmetic that cannot fail (issue 11, item 1): every quantity the reference provider derives —
the RFC 2212 delay bound, reserved rates, their sums, counter-offers — is bounded, so that a
validated request, at any value of any field, is granted or refused with a representable
counter-offer, and never makes the provider raise (conformance/SPEC.md PROV-20, DELAY-5).

First the provider alone, driven by hypothesis through random sequences of admissions,
renegotiations, releases and capacity swings; then the data directory that used to brick the
server, through the public API of a real server process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_kit import DESTINATIONS, LARGEST_32, LEVELS, LINKS, capacities, qos_specs
from server_testkit import details, flow, make_request, qos, reason

from callqos.server import validation
from callqos.server.providers import AdmissionRequest, Grant, ProviderChange, Refusal
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.qos import SENTINELS, best_effort_qos, qos_shortfalls, reserved_rate, resolve_no_change
from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
QosSpec = flowspec_pb2.QosSpec
NUMERIC = (
    "token_rate_bytes_per_second",
    "token_bucket_size_bytes",
    "peak_bandwidth_bytes_per_second",
    "latency_microseconds",
    "delay_variation_microseconds",
    "max_sdu_size_bytes",
    "minimum_policed_size_bytes",
)


@dataclass
class Recorder:
    """The host side of a provider under test: it records the changes the provider reports."""

    changes: list[ProviderChange] = field(default_factory=list)

    async def report_change(self, change: ProviderChange) -> None:
        self.changes.append(change)


def sentinel_fields(qos: QosSpec) -> list[str]:
    """Fields of a QoS the provider produced that carry a raw Winsock sentinel (FLOW-12)."""
    return [
        f"{direction}.{name}"
        for direction in ("sending", "receiving")
        for name in NUMERIC
        if getattr(qos, direction).HasField(name) and getattr(getattr(qos, direction), name) in SENTINELS
    ]


def as_create(qos: QosSpec, level: int, destination: str) -> svc.CreateCallRequest:
    return make_request(qos, level, destination)


class Harness:
    """A started reference provider with the two links of `ledger_kit`, and what it holds."""

    def __init__(self) -> None:
        self.provider = ReferenceProvider({"links": LINKS})
        self.provider.id = "reference"
        self.host = Recorder()
        self.caps = self.provider.capabilities()
        self.loop = asyncio.new_event_loop()
        self.run(self.provider.start(self.host, []))
        self.connected: dict[str, tuple[str, int, QosSpec]] = {}  # call → (destination, level, granted)
        self.counter = 0

    def run(self, work):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        self.loop.close()

    def new_name(self) -> str:
        self.counter += 1
        return f"calls/c{self.counter}"

    def check_books(self) -> None:
        """Each link's reservation is the sum of what the provider lists, within capacity."""
        links = {link.name: link for link in self.run(self.provider.list_links())}
        held = self.run(self.provider.reservations())
        for name, link in links.items():
            mine = [h for h in held if h.link == name]
            assert link.sending_reserved_bytes_per_second == sum(h.sending_bytes_per_second for h in mine)
            assert link.receiving_reserved_bytes_per_second == sum(h.receiving_bytes_per_second for h in mine)
            assert link.sending_reserved_bytes_per_second <= link.capacity_bytes_per_second
            assert link.receiving_reserved_bytes_per_second <= link.capacity_bytes_per_second

    def apply(self, changes: list[ProviderChange]) -> None:
        for change in changes:
            assert change.call in self.connected, f"a change for {change.call}, which is not connected"
            if change.qos is None:
                del self.connected[change.call]
            else:
                assert not sentinel_fields(change.qos)
                destination, level, _ = self.connected[change.call]
                assert level == Level.SERVICE_LEVEL_IF_AVAILABLE, "only IF_AVAILABLE calls are degraded"
                self.connected[change.call] = (destination, level, change.qos)

    def decide(self, qos: QosSpec, level: int, destination: str, name: str | None = None) -> None:
        """Admit (or renegotiate `name`) as the call manager would, and check the answer."""
        request = as_create(qos, level, destination)
        if name is None:
            violations = validation.create_violations(request, self.caps)
        else:
            renegotiation = svc.RenegotiateCallRequest(name=name, qos=qos, service_level=level)
            violations = validation.renegotiate_violations(renegotiation, self.caps)
        if violations:
            return  # not a validated request: the provider never sees it
        level = level or Level.SERVICE_LEVEL_NEEDED
        current = self.connected[name][2] if name else None
        asked = resolve_no_change(qos, current) if current is not None else qos
        offered = best_effort_qos(asked.provider_specific) if level == Level.SERVICE_LEVEL_BEST_EFFORT else asked
        call = name or self.new_name()
        admission = AdmissionRequest(call, destination, level, offered, "tester", current=current)
        operation = self.provider.renegotiate if name else self.provider.admit
        decision = self.run(operation(admission))  # must not raise
        if isinstance(decision, Grant):
            assert not sentinel_fields(decision.qos), sentinel_fields(decision.qos)
            if level == Level.SERVICE_LEVEL_NEEDED:
                assert qos_shortfalls(decision.qos, offered) == []
            self.connected[call] = (destination, level, decision.qos)
        else:
            assert isinstance(decision, Refusal)
            assert level == Level.SERVICE_LEVEL_NEEDED, "IF_AVAILABLE and BEST_EFFORT are never refused here"
            if decision.counter_offer is not None:
                self.retry_counter_offer(decision.counter_offer, destination, name)
        self.check_books()

    def retry_counter_offer(self, offer: QosSpec, destination: str, name: str | None = None) -> None:
        """PROV-2: the counter-offer is a valid request and is granted, satisfied, right away — as
        a new call, or as the renegotiation of the call `name` that was refused."""
        assert not sentinel_fields(offer), sentinel_fields(offer)
        request = as_create(offer, Level.SERVICE_LEVEL_NEEDED, destination)
        assert validation.create_violations(request, self.caps) == [], "the counter-offer is not a valid request"
        needed = Level.SERVICE_LEVEL_NEEDED
        if name is None:
            probe = self.new_name()
            retried = self.run(self.provider.admit(AdmissionRequest(probe, destination, needed, offer, "tester")))
        else:
            current = self.connected[name][2]
            admission = AdmissionRequest(name, destination, needed, offer, "tester", current=current)
            retried = self.run(self.provider.renegotiate(admission))
        assert isinstance(retried, Grant), f"the counter-offer was refused: {retried}"
        assert qos_shortfalls(retried.qos, offer) == []
        if name is None:
            self.run(self.provider.release(probe))
        else:
            self.connected[name] = (destination, needed, retried.qos)

    def update(self, link: int, capacity: int) -> None:
        self.host.changes.clear()
        updated = self.run(self.provider.update_link(LINKS[link]["id"], capacity))
        assert updated.capacity_bytes_per_second == capacity
        self.apply(list(self.host.changes))
        self.check_books()

    def release(self, name: str) -> None:
        self.run(self.provider.release(name))
        del self.connected[name]
        self.check_books()


@pytest.fixture
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), qos_specs(), st.sampled_from(LEVELS), st.sampled_from(DESTINATIONS)),
        st.tuples(st.just("renegotiate"), qos_specs(renegotiation=True), st.sampled_from(LEVELS), st.integers(0, 50)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("capacity"), st.integers(0, 1), capacities()),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_a_validated_request_never_makes_the_reference_provider_fail(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    harness = Harness()
    try:
        for step in steps:
            kind = step[0]
            connected = sorted(harness.connected)
            if kind == "admit":
                harness.decide(step[1], step[2], step[3])
            elif kind == "renegotiate" and connected:
                name = connected[step[3] % len(connected)]
                harness.decide(step[1], step[2], harness.connected[name][0], name)
            elif kind == "release" and connected:
                harness.release(connected[step[1] % len(connected)])
            elif kind == "capacity":
                harness.update(step[1], step[2])
    finally:
        harness.close()


def test_a_delay_bound_beyond_the_largest_latency_is_refused_with_a_representable_offer(harness: Harness) -> None:
    """Rate 1 B/s with the largest bucket: the RFC 2212 bound is about 1.8e25 µs, far beyond any
    uint32 latency. The request is infeasible (DELAY-5): refused, and the counter-offer's bucket is
    cut so that its bound fits a latency field; retrying with it is granted."""
    huge = QosSpec(
        sending=flow(ST.SERVICE_TYPE_GUARANTEED, rate=1, token_bucket_size_bytes=2**64 - 1),
        receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT),
    )
    decision = harness.run(
        harness.provider.admit(AdmissionRequest("calls/huge", DESTINATIONS[0], Level.SERVICE_LEVEL_NEEDED, huge, "t"))
    )
    assert isinstance(decision, Refusal) and "latency" in decision.message
    offer = decision.counter_offer
    assert offer is not None and offer.sending.service_type == ST.SERVICE_TYPE_GUARANTEED
    assert offer.sending.latency_microseconds <= LARGEST_32
    assert 0 < offer.sending.token_bucket_size_bytes < 2**64 - 1
    harness.retry_counter_offer(offer, DESTINATIONS[0])


def test_counter_offers_never_carry_a_raw_sentinel(harness: Harness) -> None:
    """With exactly 0xFFFFFFFF B/s free, a cut rate would be the QOS_NOT_SPECIFIED sentinel; the
    offer takes the largest value a request may carry instead (FLOW-12)."""
    harness.update(0, 0xFFFFFFFF)
    greedy = QosSpec(sending=flow(rate=2**40), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT))
    decision = harness.run(
        harness.provider.admit(AdmissionRequest("calls/g", DESTINATIONS[0], Level.SERVICE_LEVEL_NEEDED, greedy, "t"))
    )
    assert isinstance(decision, Refusal) and decision.counter_offer is not None
    assert decision.counter_offer.sending.token_rate_bytes_per_second == LARGEST_32
    harness.retry_counter_offer(decision.counter_offer, DESTINATIONS[0])


def test_a_policed_size_above_the_path_mtu_is_refused_with_an_offer_that_fits(harness: Harness) -> None:
    """m = 5000 with M left out: the provider's M is the 1500-byte MTU, and m <= M (RFC 2212) cannot
    hold; the counter-offer polices at M."""
    spec = QosSpec(
        sending=flow(rate=1000, minimum_policed_size_bytes=5000), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT)
    )
    decision = harness.run(
        harness.provider.admit(AdmissionRequest("calls/m", DESTINATIONS[0], Level.SERVICE_LEVEL_NEEDED, spec, "t"))
    )
    assert isinstance(decision, Refusal) and decision.counter_offer is not None
    assert decision.counter_offer.sending.minimum_policed_size_bytes <= 1500
    harness.retry_counter_offer(decision.counter_offer, DESTINATIONS[0])


# -- the data directory that bricked the server (issue 11, first finding) ------------------------
LINK = "providers/reference/links/default"


def set_capacity(stub: svc_grpc.CallQosServiceStub, capacity: int) -> svc.UpdateLinkResponse:
    return stub.UpdateLink(
        svc.UpdateLinkRequest(link=provider_pb2.Link(name=LINK, capacity_bytes_per_second=capacity)), timeout=10
    )


def connected_sum(stub: svc_grpc.CallQosServiceStub) -> tuple[int, int]:
    calls = stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED", page_size=500), timeout=10).calls
    return (
        sum(reserved_rate(c.granted_qos.sending) for c in calls),
        sum(reserved_rate(c.granted_qos.receiving) for c in calls),
    )


def link_reserved(stub: svc_grpc.CallQosServiceStub) -> tuple[int, int]:
    (link,) = [
        link for link in stub.ListLinks(svc.ListLinksRequest(parent="providers/reference")).links if link.name == LINK
    ]
    return link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second


@pytest.mark.slow
def test_a_capacity_swing_under_a_huge_guaranteed_call_keeps_the_ledger_and_restarts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    huge = QosSpec(
        sending=flow(ST.SERVICE_TYPE_GUARANTEED, rate=500_000_000, token_bucket_size_bytes=10**12),
        receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT),
    )
    with ServerProcess(tmp_path, storage="sqlite") as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            set_capacity(stub, 1_000_000_000)
            call = stub.CreateCall(make_request(huge, Level.SERVICE_LEVEL_IF_AVAILABLE, call_id="huge"))
            assert call.state == call_pb2.Call.State.STATE_CONNECTED
            answer = set_capacity(stub, 1_250_000)  # used to fail PROVIDER_UNAVAILABLE half-way
            assert answer.link.capacity_bytes_per_second == 1_250_000
            (change,) = answer.changes
            assert change.call == "calls/huge" and change.outcome == svc.LinkChange.OUTCOME_DEGRADED
            degraded = stub.GetCall(svc.GetCallRequest(name="calls/huge"))
            assert change.current_qos == degraded.granted_qos and change.recorded
            assert degraded.granted_qos.sending.latency_microseconds <= LARGEST_32
            assert link_reserved(stub) == connected_sum(stub) == (1_250_000, 0)
            # Nothing is free, so a NEEDED call of 1,000,000 B/s is refused, not admitted on top.
            error = rpc_error_sync(lambda: stub.CreateCall(make_request(qos(1_000_000))))
            assert reason(error) == "QOS_UNAVAILABLE" and details(error)["QosRefusal"].HasField("counter_offer")
        assert server.stop() == 0
        server.start()  # used to exit with rc 1 on every start
        with grpc.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            assert stub.GetCall(svc.GetCallRequest(name="calls/huge")) == degraded
            assert link_reserved(stub) == connected_sum(stub) == (1_250_000, 0)
        server.restart(kill=True)
        with grpc.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            assert link_reserved(stub) == connected_sum(stub) == (1_250_000, 0)


def rpc_error_sync(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


class FailsWhileShedding(ReferenceProvider):
    """The reference provider, failing on the second call it degrades (a fault half-way through
    shedding: the first call has already been changed)."""

    degraded = 0

    def _counter_offer(self, qos: QosSpec, link: Any, free: Any) -> QosSpec:
        self.degraded += 1
        if self.degraded == 2:
            raise RuntimeError("half-way")
        return super()._counter_offer(qos, link, free)


def test_a_shedding_that_fails_half_way_changes_nothing() -> None:
    """PROV-21: the capacity, every reservation and the admission order are put back, and no
    change is reported for the call that was already degraded."""
    provider = FailsWhileShedding({"links": LINKS})
    provider.id = "reference"
    host = Recorder()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(provider.start(host, []))
        for n in range(3):
            spec = QosSpec(sending=flow(rate=400_000), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT))
            request = AdmissionRequest(f"calls/c{n}", DESTINATIONS[0], Level.SERVICE_LEVEL_IF_AVAILABLE, spec, "t")
            assert isinstance(loop.run_until_complete(provider.admit(request)), Grant)
        before = (
            sorted(loop.run_until_complete(provider.reservations()), key=str),
            loop.run_until_complete(provider.list_links()),
        )
        with pytest.raises(RuntimeError, match="half-way"):
            loop.run_until_complete(provider.update_link("default", 500_000))
        after = (
            sorted(loop.run_until_complete(provider.reservations()), key=str),
            loop.run_until_complete(provider.list_links()),
        )
        assert after == before and host.changes == []
        # And the provider still works: the same cut, without the fault, sheds as usual.
        provider.degraded = 10
        loop.run_until_complete(provider.update_link("default", 500_000))
        assert [change.call for change in host.changes] == ["calls/c2", "calls/c1"]
    finally:
        loop.close()
