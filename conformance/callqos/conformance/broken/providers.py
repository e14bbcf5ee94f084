"""Broken providers: each is `LedgerProvider` (a correct provider, `broken/base.py`) with exactly one fault,
written the way a third-party author gets the contract wrong. Each is a plain Provider class:

    callqos-conformance --provider callqos.conformance.broken.providers:<Class>

`broken/__init__.py` lists, for each, the rules it breaks and the checks that must catch it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from callqos.conformance.broken.base import DIRECTIONS, Holding, LedgerProvider
from callqos.server.providers import (
    RESERVING,
    AdmissionRequest,
    Decision,
    Grant,
    ProviderChange,
    ProviderHost,
    Refusal,
    RefusalKind,
    Restored,
    reserved_rate,
)
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
NOQOS = event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS


# -- admission ------------------------------------------------------------------------------------
class OverAdmitsConcurrently(LedgerProvider):
    """Asks its network element (an await) between checking the free capacity and reserving it, without a
    lock across the await: concurrent requests all see the same free capacity."""

    description = "BROKEN: over-admits under concurrency"

    async def admit(self, request: AdmissionRequest) -> Decision:
        return await self.racy(request)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return await self.racy(request)

    async def racy(self, request: AdmissionRequest) -> Decision:
        reserved, calls, counter = list(self.reserved), dict(self.calls), self.counter
        decision = self.decide(request)  # decides on what it sees now ...
        self.reserved, self.calls, self.counter = reserved, calls, counter
        await asyncio.sleep(0.02)  # ... configures the element ...
        if isinstance(decision, Grant):  # ... and only then takes the reservation
            self.take(request.call, request.level, decision.qos)
        return decision


class ConnectsBeyondCapacity(LedgerProvider):
    """At NEEDED, a request that does not fit is granted anyway ("the link is rarely that full")."""

    description = "BROKEN: connects beyond capacity at NEEDED"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Refusal) and decision.kind is RefusalKind.ADMISSION:
            granted = QosSpec(
                sending=self.resolve(request.qos.sending, request.qos.sending),
                receiving=self.resolve(request.qos.receiving, request.qos.sending),
                provider_specific=request.qos.provider_specific,
            )
            self.take(request.call, request.level, granted)
            return Grant(granted)
        return decision


class IfAvailableGrantsEverything(LedgerProvider):
    """IF_AVAILABLE is read as "grant it, it is only a wish": the request is granted whatever is free."""

    description = "BROKEN: IF_AVAILABLE grants beyond capacity"

    def decide(self, request: AdmissionRequest) -> Decision:
        if request.level != Level.SERVICE_LEVEL_IF_AVAILABLE:
            return super().decide(request)
        granted = QosSpec(
            sending=self.resolve(request.qos.sending, request.qos.sending),
            receiving=self.resolve(request.qos.receiving, request.qos.sending),
            provider_specific=request.qos.provider_specific,
        )
        self.take(request.call, request.level, granted)
        return Grant(granted)


class IfAvailableAlwaysBestEffort(LedgerProvider):
    """IF_AVAILABLE is read as "no guarantee wanted": always best effort, even on an idle link."""

    description = "BROKEN: IF_AVAILABLE never reserves"

    def decide(self, request: AdmissionRequest) -> Decision:
        if request.level != Level.SERVICE_LEVEL_IF_AVAILABLE:
            return super().decide(request)
        granted = QosSpec(
            sending=FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
            receiving=FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
            provider_specific=request.qos.provider_specific,
        )
        self.take(request.call, request.level, granted)
        return Grant(granted)


class IgnoresReceiving(LedgerProvider):
    """Accounts the sending direction only: the receiving flowspec is granted but never reserved."""

    description = "BROKEN: ignores the receiving flowspec"

    def rates(self, qos: QosSpec) -> tuple[int, int]:
        return reserved_rate(qos.sending), 0


class GuaranteedReservesTokenRate(LedgerProvider):
    """Holds a GUARANTEED flow's token rate, like a controlled-load one, instead of its peak."""

    description = "BROKEN: GUARANTEED holds its token rate, not its peak"

    def rates(self, qos: QosSpec) -> tuple[int, int]:
        def one(spec: FlowSpec) -> int:
            return spec.token_rate_bytes_per_second if spec.service_type in RESERVING else 0

        return one(qos.sending), one(qos.receiving)


class PeakUnboundedReservesNothing(LedgerProvider):
    """Reads an unbounded peak as "no fixed rate to reserve": such GUARANTEED flows hold nothing."""

    description = "BROKEN: GUARANTEED with an unbounded peak holds nothing"

    def rates(self, qos: QosSpec) -> tuple[int, int]:
        def one(spec: FlowSpec) -> int:
            if spec.service_type == ST.SERVICE_TYPE_GUARANTEED and spec.peak_bandwidth_unbounded:
                return 0
            return reserved_rate(spec)

        return one(qos.sending), one(qos.receiving)


class ReservesNonReservingTypes(LedgerProvider):
    """Reserves whatever token rate a flowspec states, BEST_EFFORT and NO_TRAFFIC included."""

    description = "BROKEN: best effort with a stated rate is reserved"

    def rates(self, qos: QosSpec) -> tuple[int, int]:
        def one(spec: FlowSpec) -> int:
            if spec.service_type in (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC):
                return spec.token_rate_bytes_per_second
            return reserved_rate(spec)

        return one(qos.sending), one(qos.receiving)


class FullLinkOffByOne(LedgerProvider):
    """Admits only while strictly less than the free capacity is asked: the last byte is never granted."""

    description = "BROKEN: a request for exactly what is free is refused"

    def fits(self, need: int, free: int) -> bool:
        return need < free or need == 0


class AdvertisedMaximumNotHonoured(LedgerProvider):
    """Advertises its full capacity but keeps 5% headroom it never grants."""

    description = "BROKEN: the advertised maximum is never admitted"

    def fits(self, need: int, free: int) -> bool:
        return need <= free - self.capacity // 20 or need == 0


class HalfReservesOnRefusal(LedgerProvider):
    """Reserves direction by direction; when the second direction does not fit, the first stays reserved."""

    description = "BROKEN: a refusal keeps the direction that fitted"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Refusal) and request.current is None:
            free = self.free_for(request.call)
            rates = self.rates(request.qos)
            if rates[0] and rates[0] <= free[0] and rates[1] > free[1]:
                self.reserved[0] += rates[0]  # taken before the receiving direction was looked at
        return decision


class IgnoresLatency(LedgerProvider):
    """Admits GUARANTEED on rate alone: the requested latency is granted as asked, never checked."""

    description = "BROKEN: GUARANTEED ignores the requested latency"

    def problems(self, qos: QosSpec, free: tuple[int, int]) -> list[str]:
        return [
            f"{direction}: needs {need} B/s, {room} B/s free"
            for direction, need, room in zip(DIRECTIONS, self.rates(qos), free, strict=True)
            if not self.fits(need, room)
        ]


class LatencyBoundWithoutPathLatency(LedgerProvider):
    """Computes the RFC 2212 bound without the path's fixed latency: admits slightly too optimistically
    (a SHOULD-level fault: the exact bound is DELAY-1)."""

    description = "BROKEN: delay bound without the fixed path latency"

    def bound(self, spec: FlowSpec) -> float:
        return super().bound(spec) - self.terms.min_path_latency_microseconds


class GrantsShortAtNeeded(LedgerProvider):
    """Configures its shaper in KiB/s: every granted rate is rounded down to a multiple of 1024 B/s."""

    description = "BROKEN: grants rounded down below the request"

    def resolve(self, spec: FlowSpec, sending: FlowSpec) -> FlowSpec:
        out = super().resolve(spec, sending)
        if out.HasField("token_rate_bytes_per_second") and out.token_rate_bytes_per_second >= 1024:
            out.token_rate_bytes_per_second -= out.token_rate_bytes_per_second % 1024
        return out


class GrantsWithoutResolvingDefaults(LedgerProvider):
    """Grants a receiving CONTROLLED_LOAD flowspec without a token rate as it came: nothing stated, nothing held."""

    description = "BROKEN: defaults left unresolved in the grant"

    def resolve(self, spec: FlowSpec, sending: FlowSpec) -> FlowSpec:
        if spec.service_type == ST.SERVICE_TYPE_CONTROLLED_LOAD and not spec.HasField("token_rate_bytes_per_second"):
            out = FlowSpec()
            out.CopyFrom(spec)
            return out
        return super().resolve(spec, sending)


class DropsProviderSpecificInGrant(LedgerProvider):
    """Builds its grant from the flowspecs alone: the provider-specific bytes are not carried into it."""

    description = "BROKEN: provider_specific missing from the grant"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Grant) and decision.qos.provider_specific:
            granted = QosSpec()
            granted.CopyFrom(decision.qos)
            granted.ClearField("provider_specific")
            self.calls[request.call].qos = granted
            return Grant(granted)
        return decision


class RaisesOnHugeRate(LedgerProvider):
    """Keeps its ledger in 32-bit fields (as its traffic-control interface does): a rate of 2^32 B/s or more
    raises instead of being refused."""

    description = "BROKEN: raises on rates of 2^32 B/s and more"

    def rates(self, qos: QosSpec) -> tuple[int, int]:
        send, recv = super().rates(qos)
        struct.pack("<II", send, recv)  # struct.error above 2^32 - 1
        return send, recv


# -- counter-offers ---------------------------------------------------------------------------------
class RefusedCounterOffer(LedgerProvider):
    """Offers back exactly what it refused, as if to say "ask again"."""

    description = "BROKEN: the counter-offer is the refused request"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Refusal):
            return Refusal(decision.kind, decision.message, request.qos)
        return decision


class CounterOfferOnlyValidOnIdleLink(LedgerProvider):
    """Computes offers from the link's capacity instead of what is free: right on an idle link only."""

    description = "BROKEN: counter-offers ignore what is already held"

    def offer(self, qos: QosSpec, free: tuple[int, int]) -> QosSpec:
        return super().offer(qos, (self.capacity, self.capacity))


class CounterOfferPeakBelowToken(LedgerProvider):
    """Cuts a GUARANTEED offer's peak to what is free but forgets its token rate: peak < token rate."""

    description = "BROKEN: counter-offers with a peak below the token rate"

    def offer(self, qos: QosSpec, free: tuple[int, int]) -> QosSpec:
        out = super().offer(qos, free)
        for direction, room in zip(DIRECTIONS, free, strict=True):
            asked: FlowSpec = getattr(qos, direction)
            target: FlowSpec = getattr(out, direction)
            if target.HasField("peak_bandwidth_bytes_per_second") and asked.token_rate_bytes_per_second > room:
                target.token_rate_bytes_per_second = asked.token_rate_bytes_per_second
        return out


class PolicyAsAdmission(LedgerProvider):
    """Refuses NETWORK_CONTROL as an admission failure ("not enough capacity"), not by policy."""

    description = "BROKEN: a policy refusal reported as an admission failure"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Refusal) and decision.kind is RefusalKind.POLICY:
            return Refusal(RefusalKind.ADMISSION, decision.message, decision.counter_offer)
        return decision


# -- renegotiation ------------------------------------------------------------------------------
class AdvertisesRenegotiationButRefuses(LedgerProvider):
    """Advertises renegotiation but refuses every one."""

    description = "BROKEN: advertises renegotiation but refuses it"

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return Refusal(RefusalKind.ADMISSION, "renegotiation is not really supported", None)


class LosesReservationOnRefusedRenegotiation(LedgerProvider):
    """Frees the call's reservation before deciding, and does not put it back when it refuses."""

    description = "BROKEN: a refused renegotiation frees the call's reservation"

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        async with self.lock:
            self.free(request.call)
            return self.decide(request)


class RefusedRenegotiationAppliesOneDirection(LedgerProvider):
    """Applies the sending direction as soon as it fits, then refuses when the receiving one does not."""

    description = "BROKEN: one direction of a refused renegotiation is applied"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        held = self.calls.get(request.call)
        if isinstance(decision, Refusal) and request.current is not None and held is not None:
            free = self.free_for(request.call)
            sending = self.resolve(request.qos.sending, request.qos.sending)
            if reserved_rate(sending) <= free[0]:
                mixed = QosSpec(sending=sending, receiving=held.qos.receiving)
                self.take(request.call, held.level, mixed)
        return decision


class RenegotiationDropsUnchangedDirection(LedgerProvider):
    """Re-reserves only what a renegotiation changes: a direction kept as it was (NO_CHANGE) holds nothing."""

    description = "BROKEN: the unchanged direction of a renegotiation is released"

    def decide(self, request: AdmissionRequest) -> Decision:
        decision = super().decide(request)
        if isinstance(decision, Grant) and request.current is not None:
            held = self.calls[request.call]
            rates = list(held.rates)
            for index, direction in enumerate(DIRECTIONS):
                if getattr(request.qos, direction) == getattr(request.current, direction):
                    self.reserved[index] -= rates[index]
                    rates[index] = 0
            held.rates = (rates[0], rates[1])
        return decision


class RenegotiationCountsOwnReservation(LedgerProvider):
    """Checks a renegotiation against what is free without the call's own reservation: going up in place
    is refused."""

    description = "BROKEN: a renegotiation does not count the call's own reservation as free"

    def free_for(self, call: str) -> tuple[int, int]:
        return max(self.capacity - self.reserved[0], 0), max(self.capacity - self.reserved[1], 0)


# -- release ----------------------------------------------------------------------------------------
class LeaksOnRelease(LedgerProvider):
    """release() forgets to free the call's reservation."""

    description = "BROKEN: leaks capacity on release"

    async def release(self, call: str) -> None:
        return None


class ReleaseFreesAnotherCall(LedgerProvider):
    """Keeps its reservations in a stack: a release pops the newest one, whichever call is released."""

    description = "BROKEN: release frees the newest call's reservation"

    async def release(self, call: str) -> None:
        async with self.lock:
            if call not in self.calls:
                return
            newest = max(self.calls, key=lambda name: self.calls[name].order)
            held = self.calls[newest]
            self.reserved = [self.reserved[0] - held.rates[0], self.reserved[1] - held.rates[1]]
            del self.calls[call]
            if newest != call:
                self.calls[newest] = Holding(held.level, held.qos, (0, 0), held.order)


# -- capacity changes -------------------------------------------------------------------------------
class KeepsCallsOnCapacityLoss(LedgerProvider):
    """A lowered link keeps every call: reservations exceed the capacity and nobody is told."""

    description = "BROKEN: keeps every call when a link loses capacity"

    def shed(self) -> list[ProviderChange]:
        return []


class ShedsWithoutReporting(LedgerProvider):
    """Frees what no longer fits but never tells the host: the calls stay connected, holding nothing."""

    description = "BROKEN: sheds calls silently"

    def shed(self) -> list[ProviderChange]:
        super().shed()
        return []


class ShedsNeededByDegrading(LedgerProvider):
    """Degrades every call that no longer fits, NEEDED ones included, instead of dropping those."""

    description = "BROKEN: NEEDED calls degraded below their request"

    def shed(self) -> list[ProviderChange]:
        changes = []
        for call, held in sorted(self.calls.items(), key=lambda item: item[1].order, reverse=True):
            if not self.over():
                break
            if not any(held.rates):
                continue
            self.free(call)
            degraded = self.offer(held.qos, self.free_for(call))
            self.take(call, held.level, degraded)
            changes.append(ProviderChange(call, degraded, "capacity lost; degraded", NOQOS))
        return changes


class DegradesToCapacityNotFree(LedgerProvider):
    """Degrades an IF_AVAILABLE call to what the link's new capacity could hold, not to what is free on it."""

    description = "BROKEN: a degraded call still does not fit"

    def shed(self) -> list[ProviderChange]:
        changes = []
        for call, held in sorted(self.calls.items(), key=lambda item: item[1].order, reverse=True):
            if not self.over():
                break
            if not any(held.rates):
                continue
            self.free(call)
            if held.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
                degraded = self.offer(held.qos, (self.capacity, self.capacity))
                self.take(call, held.level, degraded)
                changes.append(ProviderChange(call, degraded, "capacity lost; degraded", NOQOS))
            else:
                changes.append(ProviderChange(call, None, "capacity lost", NOQOS))
        return changes


class DoubleReleaseAfterShed(LedgerProvider):
    """Frees a shed call's reservation but keeps its entry: the next capacity loss sheds it again, freeing
    its reservation a second time."""

    description = "BROKEN: a shed call is freed again by the next shed"

    def shed(self) -> list[ProviderChange]:
        changes = []
        for call, held in sorted(self.calls.items(), key=lambda item: item[1].order, reverse=True):
            if not self.over():
                break
            if not any(held.rates):
                continue
            self.reserved = [self.reserved[0] - held.rates[0], self.reserved[1] - held.rates[1]]
            if held.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
                self.calls.pop(call)
                degraded = self.offer(held.qos, self.free_for(call))
                self.take(call, held.level, degraded)
                changes.append(ProviderChange(call, degraded, "capacity lost; degraded", NOQOS))
            else:
                changes.append(ProviderChange(call, None, "capacity lost", NOQOS))  # the entry stays
        return changes


class DropAfterDegradeFreesOriginal(LedgerProvider):
    """Degrades a call in its ledger but remembers the rates it was first granted: its release later frees
    those (no lower than zero, the author made sure)."""

    description = "BROKEN: releasing a degraded call frees its original reservation"

    def shed(self) -> list[ProviderChange]:
        original = {call: held.rates for call, held in self.calls.items()}
        changes = super().shed()
        for change in changes:
            if change.qos is not None and change.call in self.calls:
                self.calls[change.call].rates = original[change.call]  # what its release will free
        return changes

    def free(self, call: str) -> None:
        held = self.calls.pop(call, None)
        if held is not None:
            self.reserved = [max(self.reserved[0] - held.rates[0], 0), max(self.reserved[1] - held.rates[1], 0)]


class LinksReportFree(LedgerProvider):
    """ListLinks reports the free capacity in the reserved fields (the author's dashboard wanted "free")."""

    description = "BROKEN: links report free capacity as reserved"

    def link(self) -> provider_pb2.Link:
        link = super().link()
        link.sending_reserved_bytes_per_second = max(self.capacity - self.reserved[0], 0)
        link.receiving_reserved_bytes_per_second = max(self.capacity - self.reserved[1], 0)
        return link


# -- restarts -----------------------------------------------------------------------------------
class LosesStateOnRestart(LedgerProvider):
    """Starts empty: the calls the host hands back after a restart are not re-taken."""

    description = "BROKEN: forgets its reservations on restart"

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        self.host = host
        self.recall()
        return []


class RestoreDoubleCounts(LedgerProvider):
    """Re-takes each restored call, and adds its rates again from its own (stale) notes."""

    description = "BROKEN: restored calls are counted twice"

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        changes = await super().start(host, restored)
        for item in restored:
            rates = self.rates(item.qos)
            self.reserved = [self.reserved[0] + rates[0], self.reserved[1] + rates[1]]
        return changes


class ForgetsCapacityOnRestart(LedgerProvider):
    """Keeps the link's capacity in memory only and sets up its link in `start()`: the capacity the
    hosting server puts back before starting it (LINK-5) is overwritten by the configured one, so a
    restart brings the configured capacity back. (A provider that merely keeps capacities in memory
    is made whole by the server since #11; one that resets them as it starts is not.)"""

    description = "BROKEN: UpdateLink is not durable (start() resets the link)"

    def remember(self) -> None:
        return None

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        self.capacity = int(self.settings.get("capacity_bytes_per_second", 1_000_000))
        return await super().start(host, restored)


# -- capabilities and liveness ------------------------------------------------------------------
class GrantsUnadvertisedType(LedgerProvider):
    """Advertises CONTROLLED_LOAD only, yet grants GUARANTEED requests too."""

    description = "BROKEN: grants a service type it does not advertise"

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        caps = super().capabilities()
        del caps.service_types[:]
        caps.service_types.extend(
            [ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_NO_TRAFFIC]
        )
        return caps


class AdvertisesReservingWithoutQos(LedgerProvider):
    """Says qos_supported = false (copied from a best-effort template) while listing reserving types."""

    description = "BROKEN: incoherent capabilities"

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        caps = super().capabilities()
        caps.qos_supported = False
        return caps


class Hangs(LedgerProvider):
    """admit() never returns (a provider stuck on a dead network element)."""

    description = "BROKEN: hangs"

    async def admit(self, request: AdmissionRequest) -> Decision:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
