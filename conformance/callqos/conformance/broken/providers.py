"""Broken providers: each is the reference provider with exactly one fault.

Use with `callqos-conformance --provider callqos.conformance.broken.providers:<Class>`.
"""

from __future__ import annotations

import asyncio

from callqos.server.providers import AdmissionRequest, Decision, Grant, Refusal, RefusalKind
from callqos.server.providers.reference import LinkState, ReferenceProvider
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2

Level = call_pb2.ServiceLevel


class OverAdmitsConcurrently(ReferenceProvider):
    """Checks capacity, awaits (as a provider calling a network element would), then reserves —
    without holding a lock across the await, so concurrent requests all see the same free
    capacity and are all admitted."""

    description = "BROKEN: over-admits under concurrency"

    async def _racy(self, request: AdmissionRequest) -> Decision:
        links = {link.id: dict(link.reserved) for link in self._links.values()}
        calls, order = dict(self._calls), self._order
        decision = self._decide(request)  # decides and reserves ...
        for link in self._links.values():  # ... but the reservation is only taken after the await
            link.reserved = links[link.id]
        self._calls, self._order = calls, order
        await asyncio.sleep(0.02)
        if isinstance(decision, Grant):
            self._reserve(request.call, self._route(request.destination), request.level, decision.qos)
        return decision

    async def admit(self, request: AdmissionRequest) -> Decision:
        return await self._racy(request)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return await self._racy(request)


class LeaksOnRelease(ReferenceProvider):
    """release() forgets to free the call's reservation."""

    description = "BROKEN: leaks capacity on release"

    async def release(self, call: str) -> None:
        return None


class LosesReservationOnRefusedRenegotiation(ReferenceProvider):
    """Frees the old reservation before deciding and does not put it back on refusal."""

    description = "BROKEN: a refused renegotiation loses the call's reservation"

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        async with self._lock:
            self._unreserve(request.call)
            return self._decide(request)


class IgnoresReceiving(ReferenceProvider):
    """Accounts only the sending direction: the receiving flowspec is granted but never reserved."""

    description = "BROKEN: ignores the receiving flowspec"

    def _reserve(self, call: str, link: LinkState, level: int, qos: flowspec_pb2.QosSpec) -> None:
        super()._reserve(call, link, level, qos)
        held = self._calls[call]
        link.reserved["receiving"] -= held.rates["receiving"]
        held.rates["receiving"] = 0


class ConnectsBeyondCapacity(ReferenceProvider):
    """At NEEDED, grants the full request even when it does not fit (never refuses for capacity)."""

    description = "BROKEN: connects instead of refusing at NEEDED"

    def _refuse_or_fallback(
        self, request: AdmissionRequest, kind: RefusalKind, message: str, offer: flowspec_pb2.QosSpec
    ) -> Decision:
        if kind is RefusalKind.ADMISSION and request.level == Level.SERVICE_LEVEL_NEEDED:
            link = self._route(request.destination)
            granted = flowspec_pb2.QosSpec(
                sending=self._resolve(request.qos.sending, request.qos.sending, link),
                receiving=self._resolve(request.qos.receiving, request.qos.sending, link),
                provider_specific=request.qos.provider_specific,
            )
            self._reserve(request.call, link, request.level, granted)
            return Grant(granted)
        return super()._refuse_or_fallback(request, kind, message, offer)


class RefusedCounterOffer(ReferenceProvider):
    """Its counter-offer is the refused request itself, so retrying with it is refused again."""

    description = "BROKEN: counter-offer that is itself refused"

    def _refuse_or_fallback(
        self, request: AdmissionRequest, kind: RefusalKind, message: str, offer: flowspec_pb2.QosSpec
    ) -> Decision:
        if request.level == Level.SERVICE_LEVEL_NEEDED:
            return Refusal(kind, message, request.qos)
        return super()._refuse_or_fallback(request, kind, message, offer)


class AdvertisesRenegotiationButRefuses(ReferenceProvider):
    """Advertises renegotiation (inherited capabilities) but refuses every renegotiation."""

    description = "BROKEN: advertises renegotiation but refuses it"

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return Refusal(RefusalKind.ADMISSION, "renegotiation is not really supported", None)


class Hangs(ReferenceProvider):
    """admit() never returns (a provider stuck on a dead network element)."""

    description = "BROKEN: hangs"

    async def admit(self, request: AdmissionRequest) -> Decision:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class KeepsCallsOnCapacityLoss(ReferenceProvider):
    """Lowers a link's capacity without shedding: reservations exceed it and nobody is told."""

    description = "BROKEN: keeps every call when a link loses capacity"

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        async with self._lock:
            link = self._links[link_id]
            link.capacity = capacity
            return self._link_proto(link)
