"""`LedgerProvider`: a small, correct admission-control provider, written against the plugin's public face
(`callqos.server.providers`) as a third party would write one — not derived from the reference provider, so
the deliberately broken providers built on it carry exactly their one fault, and keep carrying it whatever
becomes of the reference's internals.

One full-duplex link (settings: `capacity_bytes_per_second`, `mtu_bytes`, `error_term_c_bytes`,
`error_term_d_microseconds`, `min_path_latency_microseconds`). CONTROLLED_LOAD holds its token rate,
GUARANTEED its peak (its token rate when the peak is unbounded) and is admitted within the RFC 2212 delay
bound; NETWORK_CONTROL is refused by policy. A refusal offers what fits now; IF_AVAILABLE connects with
that offer. A lost capacity sheds the newest calls first (IF_AVAILABLE degraded, NEEDED dropped). The link's
capacity is kept in a small JSON file in the server's working directory (setting `state_file`), so that it
survives a restart like the calls do.

Each step a broken provider overrides is a method: `rates` (what a grant holds), `fits`, `resolve` (a grant's
defaults), `offer` (the counter-offer), `decide`, `take` / `free` (the ledger), `shed`, `remember` /
`recall` (the capacity's durability).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callqos.server.providers import (
    RESERVING,
    AdmissionRequest,
    Decision,
    Grant,
    PathTerms,
    Provider,
    ProviderChange,
    ProviderHost,
    Refusal,
    RefusalKind,
    Restored,
    guaranteed_delay_bound_us,
    link_name,
    reserved_rate,
)
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec
DIRECTIONS = ("sending", "receiving")
LATENCY_LIMIT = 0xFFFFFFFD  # the largest latency a uint32 holds that is not a Winsock sentinel
LINK = "default"


@dataclass
class Holding:
    """What one call holds."""

    level: int
    qos: QosSpec
    rates: tuple[int, int]
    order: int


class LedgerProvider(Provider):
    display_name = "Ledger (conformance suite)"
    description = "A small admission-control provider over one link, written against the plugin face."

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.capacity = int(self.settings.get("capacity_bytes_per_second", 1_000_000))
        self.terms = PathTerms(
            c_bytes=int(self.settings.get("error_term_c_bytes", 1500)),
            d_microseconds=int(self.settings.get("error_term_d_microseconds", 1000)),
            min_path_latency_microseconds=int(self.settings.get("min_path_latency_microseconds", 2000)),
            mtu_bytes=int(self.settings.get("mtu_bytes", 1500)),
        )
        self.advertised = self.capacity
        self.calls: dict[str, Holding] = {}
        self.reserved = [0, 0]
        self.counter = 0
        self.lock = asyncio.Lock()

    # -- what it offers ---------------------------------------------------------------------------
    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        return provider_pb2.ProviderCapabilities(
            qos_supported=True,
            renegotiation=True,
            provider_initiated_changes=True,
            link_admin=True,
            service_types=[
                ST.SERVICE_TYPE_BEST_EFFORT,
                ST.SERVICE_TYPE_CONTROLLED_LOAD,
                ST.SERVICE_TYPE_GUARANTEED,
                ST.SERVICE_TYPE_NO_TRAFFIC,
            ],
            max_reservable_bytes_per_second=self.advertised,
            max_sdu_size_bytes=self.terms.mtu_bytes,
            min_latency_microseconds=self.terms.d_microseconds + self.terms.min_path_latency_microseconds,
            policy=True,
            policy_note="NETWORK_CONTROL belongs to the network operator.",
        )

    # -- the life of a call -------------------------------------------------------------------------
    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        self.host = host
        async with self.lock:
            self.recall()
            for item in restored:
                self.take(item.call, item.level, item.qos)
            return self.shed()

    async def admit(self, request: AdmissionRequest) -> Decision:
        async with self.lock:
            return self.decide(request)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        async with self.lock:
            return self.decide(request)

    async def release(self, call: str) -> None:
        async with self.lock:
            self.free(call)

    async def list_links(self) -> list[provider_pb2.Link]:
        return [self.link()]

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        if link_id != LINK:
            raise KeyError(link_id)
        async with self.lock:
            self.capacity = capacity
            self.remember()
            changes = self.shed()
            link = self.link()
        for change in changes:  # reported outside the lock: the host takes its own locks
            await self.host.report_change(change)
        return link

    # -- deciding ---------------------------------------------------------------------------------
    def rates(self, qos: QosSpec) -> tuple[int, int]:
        """What a grant holds per direction (GRANT-1)."""
        return reserved_rate(qos.sending), reserved_rate(qos.receiving)

    def free_for(self, call: str) -> tuple[int, int]:
        """What is free for `call`: its own reservation counts as free (a renegotiation replaces it)."""
        own = self.calls[call].rates if call in self.calls else (0, 0)
        return (
            max(self.capacity - self.reserved[0] + own[0], 0),
            max(self.capacity - self.reserved[1] + own[1], 0),
        )

    def fits(self, need: int, free: int) -> bool:
        return need <= free

    def bound(self, spec: FlowSpec) -> float:
        return guaranteed_delay_bound_us(spec, self.terms)

    def resolve(self, spec: FlowSpec, sending: FlowSpec) -> FlowSpec:
        """The flowspec as granted: this provider's defaults for what the request left out."""
        out = FlowSpec()
        out.CopyFrom(spec)
        if spec.service_type not in RESERVING:
            return out
        if not out.HasField("token_rate_bytes_per_second"):
            given = sending.HasField("token_rate_bytes_per_second") and sending.service_type in RESERVING
            out.token_rate_bytes_per_second = sending.token_rate_bytes_per_second if given else self.terms.mtu_bytes
        if not out.HasField("max_sdu_size_bytes"):
            out.max_sdu_size_bytes = self.terms.mtu_bytes
        if out.service_type == ST.SERVICE_TYPE_GUARANTEED and not out.HasField("latency_microseconds"):
            bound = math.ceil(self.bound(out))
            if bound <= LATENCY_LIMIT:
                out.latency_microseconds = bound  # else no bound a uint32 can state: none is promised
        return out

    def problems(self, qos: QosSpec, free: tuple[int, int]) -> list[str]:
        out = []
        for direction, need, room in zip(DIRECTIONS, self.rates(qos), free, strict=True):
            spec: FlowSpec = getattr(qos, direction)
            if not self.fits(need, room):
                out.append(f"{direction}: needs {need} B/s, {room} B/s free")
            if spec.service_type == ST.SERVICE_TYPE_GUARANTEED and spec.HasField("latency_microseconds"):
                if self.bound(spec) > spec.latency_microseconds:
                    out.append(
                        f"{direction}: delay bound {math.ceil(self.bound(spec))} us > {spec.latency_microseconds}"
                    )
        return out

    def offer(self, qos: QosSpec, free: tuple[int, int]) -> QosSpec:
        """The best this link grants now for `qos`: rates cut to what is free, latency relaxed to the bound
        that rate achieves, best effort where nothing is free or policy refuses."""
        out = QosSpec(provider_specific=qos.provider_specific)
        for direction, room in zip(DIRECTIONS, free, strict=True):
            spec = self.resolve(getattr(qos, direction), qos.sending)
            target: FlowSpec = getattr(out, direction)
            if spec.service_type == ST.SERVICE_TYPE_NETWORK_CONTROL:
                target.service_type = ST.SERVICE_TYPE_BEST_EFFORT
                continue
            if spec.service_type not in RESERVING:
                target.CopyFrom(spec)
                continue
            if room <= 0:
                target.service_type = ST.SERVICE_TYPE_BEST_EFFORT
                continue
            target.CopyFrom(spec)
            if reserved_rate(target) > room:
                target.token_rate_bytes_per_second = min(target.token_rate_bytes_per_second, room)
                if target.HasField("peak_bandwidth_bytes_per_second") and not target.peak_bandwidth_unbounded:
                    target.peak_bandwidth_bytes_per_second = max(
                        min(target.peak_bandwidth_bytes_per_second, room), target.token_rate_bytes_per_second
                    )
            if target.service_type == ST.SERVICE_TYPE_GUARANTEED:
                bound = math.ceil(self.bound(target))
                if bound > LATENCY_LIMIT:
                    target.ClearField("latency_microseconds")
                else:
                    target.latency_microseconds = max(target.latency_microseconds, bound)
        return out

    def decide(self, request: AdmissionRequest) -> Decision:
        free = self.free_for(request.call)
        granted = QosSpec(
            sending=self.resolve(request.qos.sending, request.qos.sending),
            receiving=self.resolve(request.qos.receiving, request.qos.sending),
            provider_specific=request.qos.provider_specific,
        )
        policy = [
            direction
            for direction in DIRECTIONS
            if getattr(request.qos, direction).service_type == ST.SERVICE_TYPE_NETWORK_CONTROL
        ]
        problems = self.problems(granted, free)
        if not policy and not problems:
            self.take(request.call, request.level, granted)
            return Grant(granted)
        offer = self.offer(request.qos, free)
        if request.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
            self.take(request.call, request.level, offer)
            return Grant(offer)
        if policy:
            return Refusal(RefusalKind.POLICY, f"{', '.join(policy)}: NETWORK_CONTROL is the operator's", offer)
        return Refusal(RefusalKind.ADMISSION, "; ".join(problems), offer)

    # -- the ledger -------------------------------------------------------------------------------
    def take(self, call: str, level: int, qos: QosSpec) -> None:
        self.free(call)
        rates = self.rates(qos)
        self.reserved = [self.reserved[0] + rates[0], self.reserved[1] + rates[1]]
        self.counter += 1
        self.calls[call] = Holding(level, qos, rates, self.counter)

    def free(self, call: str) -> None:
        held = self.calls.pop(call, None)
        if held is not None:
            self.reserved = [self.reserved[0] - held.rates[0], self.reserved[1] - held.rates[1]]

    def over(self) -> bool:
        return self.reserved[0] > self.capacity or self.reserved[1] > self.capacity

    def shed(self) -> list[ProviderChange]:
        """Newest first until the link fits: IF_AVAILABLE degraded to what is free, NEEDED dropped."""
        changes = []
        for call, held in sorted(self.calls.items(), key=lambda item: item[1].order, reverse=True):
            if not self.over():
                break
            if not any(held.rates):
                continue
            self.free(call)
            message = f"link capacity fell to {self.capacity} B/s"
            if held.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
                degraded = self.offer(held.qos, self.free_for(call))
                self.take(call, held.level, degraded)
                changes.append(ProviderChange(call, degraded, message, event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS))
            else:
                changes.append(ProviderChange(call, None, message, event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS))
        return changes

    def link(self) -> provider_pb2.Link:
        return provider_pb2.Link(
            name=link_name(self.id, LINK),
            capacity_bytes_per_second=self.capacity,
            sending_reserved_bytes_per_second=self.reserved[0],
            receiving_reserved_bytes_per_second=self.reserved[1],
            mtu_bytes=self.terms.mtu_bytes,
            reservation_count=sum(1 for held in self.calls.values() if any(held.rates)),
            error_term_c_bytes=self.terms.c_bytes,
            error_term_d_microseconds=self.terms.d_microseconds,
            min_path_latency_microseconds=self.terms.min_path_latency_microseconds,
        )

    # -- durability of the capacity ---------------------------------------------------------------
    def state_file(self) -> Path:
        return Path(str(self.settings.get("state_file", f"{self.id or 'ledger'}-link.json")))

    def remember(self) -> None:
        path = self.state_file()
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"capacity_bytes_per_second": self.capacity}))
        temporary.replace(path)

    def recall(self) -> None:
        try:
            self.capacity = int(json.loads(self.state_file().read_text())["capacity_bytes_per_second"])
        except (OSError, ValueError, KeyError):
            pass  # never changed: the configured capacity
