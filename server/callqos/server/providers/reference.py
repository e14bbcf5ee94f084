"""The reference provider: admission control over configured full-duplex links.

- CONTROLLED_LOAD reserves its token rate; GUARANTEED reserves its peak rate (its token rate when
  the peak is unbounded) and is admitted only if the RFC 2212 delay bound is within the
  requested latency; BEST_EFFORT, QUALITATIVE and NO_TRAFFIC reserve nothing.
- Each direction of a link is accounted separately and never exceeds the link's capacity.
- NETWORK_CONTROL is refused by policy (it belongs to the network operator).
- When a link loses capacity, the newest calls are shed first: IF_AVAILABLE calls are degraded
  to what still fits, NEEDED calls are dropped (TAPI: QoS that cannot be sustained disconnects
  the call with LINEDISCONNECTMODE_QOSUNAVAIL).
- Every derived quantity is bounded (conformance/SPEC.md PROV-20, DELAY-5): the delay bound is
  computed exactly; a GUARANTEED flow whose bound exceeds the largest latency a flowspec can
  carry (0xFFFFFFFD µs) is refused, and its counter-offer cuts the token bucket until the bound
  fits (best effort when no bucket can); a counter-offer never carries a raw Winsock sentinel,
  and never a minimum policed size above its max SDU.
- Each decision, and the shedding after a capacity change, takes effect whole or not at all
  (PROV-21); `reservations()` lists what the books hold, for the server's reconciliation
  (PROV-19).
- Its books (each link's capacity and reserved rates, each call's reservation) are in memory when
  the server runs alone, and in the host's shared ledger (`ProviderHost.ledger`) when it runs as
  several replicas on one database: every decision then locks the rows of its link, reads them,
  decides exactly as in memory, and writes back what changed before it answers, so replicas
  deciding on one link take turns and together never reserve more than its capacity.
  `reservations()` then lists the shared books, so that what a replica that died between a
  decision and the server's commit left behind is put right by the server's reconciliation, on
  the replica that leads background work.

Settings (the `[providers.reference]` table of the server configuration):

    [[providers.reference.links]]
    id = "default"
    capacity_bytes_per_second = 1250000   # each direction
    mtu_bytes = 1500
    error_term_c_bytes = 1500             # RFC 2212 Ctot
    error_term_d_microseconds = 1000      # RFC 2212 Dtot
    min_path_latency_microseconds = 2000  # RFC 2215 MINIMUM_PATH_LATENCY
    destinations = []                     # destination prefixes routed here; [] = the rest
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from callqos.server.providers import (
    LARGEST_UINT32_FIELD,
    LARGEST_UINT64,
    RESERVING,
    AdmissionRequest,
    BookedLink,
    BookedReservation,
    Decision,
    Grant,
    Holding,
    LedgerBooks,
    PathTerms,
    Provider,
    ProviderChange,
    ProviderHost,
    Refusal,
    RefusalKind,
    Restored,
    SharedLedger,
    annotate_link,
    best_effort_spec,
    delay_bound_ceil_us,
    is_resource_id,
    largest_bucket_within,
    link_name,
    representable,
    reserved_rate,
)
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2

ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
FlowSpec = flowspec_pb2.FlowSpec
QosSpec = flowspec_pb2.QosSpec

DEFAULT_LINK: dict[str, Any] = {
    "id": "default",
    "capacity_bytes_per_second": 1_250_000,
    "mtu_bytes": 1500,
    "error_term_c_bytes": 1500,
    "error_term_d_microseconds": 1000,
    "min_path_latency_microseconds": 2000,
    "destinations": [],
}
SUPPORTED = (
    ST.SERVICE_TYPE_BEST_EFFORT,
    ST.SERVICE_TYPE_CONTROLLED_LOAD,
    ST.SERVICE_TYPE_GUARANTEED,
    ST.SERVICE_TYPE_QUALITATIVE,
    ST.SERVICE_TYPE_NO_TRAFFIC,
)
DEFAULT_MIN_POLICED = 64


@dataclass
class LinkState:
    """One configured link as the provider accounts it: its capacity and RFC 2212 path terms,
    the destinations routed to it, and the rate reserved on it in each direction. Public for
    providers derived from this one, whose hooks receive it."""

    id: str
    capacity: int
    terms: PathTerms
    destinations: tuple[str, ...]
    reserved: dict[str, int] = field(default_factory=lambda: {"sending": 0, "receiving": 0})

    def free(self, direction: str) -> int:
        return max(self.capacity - self.reserved[direction], 0)


@dataclass
class Reservation:
    """What one call holds: on which link, at which service level and QoS, and the rate it
    reserves in each direction. Public for providers derived from this one."""

    link: LinkState
    level: int
    qos: QosSpec
    rates: dict[str, int]
    order: int  # admission order: the newest are shed first


@dataclass
class _Undo:
    """What an operation under way changed, to put back if it fails part-way: the links' capacities
    and reservations as they were (a few links, copied), and each call's reservation before its
    first change (a journal, so that the cost does not grow with the number of calls held)."""

    capacity: dict[str, int]
    reserved: dict[str, dict[str, int]]
    order: int
    calls: dict[str, Reservation | None] = field(default_factory=dict)


def _bounded(link_id: str, merged: Mapping[str, Any], key: str, low: int, high: int) -> int:
    """A link setting as an int within what its field in `callqos.v1.Link` can carry."""
    value = int(merged[key])
    if not low <= value <= high:
        raise ValueError(f"link {link_id}: {key} must be between {low} and {high}, not {value}")
    return value


def _link_from_settings(raw: Mapping[str, Any]) -> LinkState:
    merged = {**DEFAULT_LINK, **raw}
    link_id = str(merged["id"])
    if not is_resource_id(link_id):
        raise ValueError(f"link id {link_id!r} must be a resource id ([a-z][a-z0-9-]*)")
    terms = PathTerms(
        c_bytes=_bounded(link_id, merged, "error_term_c_bytes", 0, LARGEST_UINT32_FIELD),
        d_microseconds=_bounded(link_id, merged, "error_term_d_microseconds", 0, LARGEST_UINT32_FIELD),
        min_path_latency_microseconds=_bounded(
            link_id, merged, "min_path_latency_microseconds", 0, LARGEST_UINT32_FIELD
        ),
        mtu_bytes=_bounded(link_id, merged, "mtu_bytes", 1, LARGEST_UINT32_FIELD),
    )
    if terms.d_microseconds + terms.min_path_latency_microseconds > LARGEST_UINT32_FIELD:
        raise ValueError(f"link {link_id}: error_term_d_microseconds + min_path_latency_microseconds is too large")
    return LinkState(
        id=link_id,
        capacity=_bounded(link_id, merged, "capacity_bytes_per_second", 0, LARGEST_UINT64),
        terms=terms,
        destinations=tuple(str(d) for d in merged["destinations"]),
    )


class ReferenceProvider(Provider):
    """Admission control over the configured links (see the module docstring).

    Deriving from it (as the conformance suite's broken providers do, each to inject one fault):
    its state is `_links` (id → `LinkState`), `_calls` (call → `Reservation`), `_order` (the
    admission counter) and `_lock`, which every decision holds. The steps a subclass may
    override or reuse are `_route` (destination → link), `_decide` (decide, and reserve on a
    grant), `_refuse_or_fallback` (NEEDED refuses; IF_AVAILABLE takes the counter-offer),
    `_resolve` (a flowspec with this provider's defaults filled in), `_counter_offer`,
    `_reserve` / `_unreserve`, `_shed_all`, `_all_or_nothing` (put the books back if what runs
    inside raises) and `_link_proto`. They keep the underscore because the host never calls them.
    """

    display_name = "Reference admission control"
    description = (
        "Token-bucket admission control over configured links: CONTROLLED_LOAD reserves the token "
        "rate, GUARANTEED the peak rate within the RFC 2212 delay bound."
    )

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        raw_links = list(self.settings.get("links", [DEFAULT_LINK]))
        if not raw_links:
            raise ValueError("the reference provider needs at least one link")
        self._links = {link.id: link for link in map(_link_from_settings, raw_links)}
        if len(self._links) != len(raw_links):
            raise ValueError("link ids must be unique")
        self._calls: dict[str, Reservation] = {}
        self._order = 0
        self._undo: _Undo | None = None  # while an _all_or_nothing block runs
        # Admission is check-then-reserve; the lock keeps it atomic even if a later change
        # adds an await between the two.
        self._lock = asyncio.Lock()
        # The host's shared ledger, when the server runs as replicas (see `_books`).
        self._ledger: SharedLedger | None = None
        # Each link's capacity as configured: the shared books compare it with the one they were
        # given (`SharedLedger.add_links`), whatever capacity was put back before start().
        self._configured = {link.id: link.capacity for link in self._links.values()}

    # -- what it can do -------------------------------------------------------------------
    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        links = self._links.values()
        return provider_pb2.ProviderCapabilities(
            qos_supported=True,
            renegotiation=True,
            provider_initiated_changes=True,
            link_admin=True,
            service_types=list(SUPPORTED),
            max_reservable_bytes_per_second=max(link.capacity for link in links),
            max_sdu_size_bytes=max(link.terms.mtu_bytes for link in links),
            min_latency_microseconds=min(
                link.terms.d_microseconds + link.terms.min_path_latency_microseconds for link in links
            ),
            policy=True,
            policy_note="NETWORK_CONTROL is reserved for the network operator and always refused.",
            reservation_listing=True,
        )

    # -- admission ------------------------------------------------------------------------
    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        self.host = host
        # A host of a single process (or one written before replicas) offers no ledger.
        self._ledger = getattr(host, "ledger", None)
        if self._ledger is not None:
            # The shared books outlive every replica: nothing to re-take (what a replica that died
            # left half-done is the server's reconciliation). A capacity put back before start()
            # (LINK-5) is the one a new link gets; an existing link keeps its books' capacity
            # unless the configuration changed it, and then what no longer fits is shed.
            await self._ledger.add_links(
                self.id,
                [BookedLink(link.id, link.capacity, self._configured[link.id]) for link in self._links.values()],
            )
            async with self._books(list(self._links), [], whole=True):
                with self._all_or_nothing():
                    return self._shed_all()
        async with self._lock:
            with self._all_or_nothing():
                for item in restored:
                    link = self._route(item.destination)
                    self._reserve(item.call, link, item.level, item.qos)
                return self._shed_all()

    async def admit(self, request: AdmissionRequest) -> Decision:
        async with self._books([self._route(request.destination).id], [request.call]):
            with self._all_or_nothing():
                decision = self._decide(request)
            self._annotate(self._route(request.destination))
            return decision

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        async with self._books([self._route(request.destination).id], [request.call]):
            with self._all_or_nothing():
                decision = self._decide(request)
            self._annotate(self._route(request.destination))
            return decision

    async def release(self, call: str) -> None:
        async with self._books(None, [call]):
            held = self._calls.get(call)
            self._unreserve(call)
            if held is not None:
                self._annotate(held.link)

    async def reservations(self) -> list[Holding]:
        if self._ledger is not None:  # the shared books, as committed now
            async with self._ledger.books(self.id) as books:
                rows = await books.reservations(links=list(self._links))
            return [Holding(row.call, row.sending, row.receiving, link_name(self.id, row.link)) for row in rows]
        async with self._lock:
            return [
                Holding(call, held.rates["sending"], held.rates["receiving"], link_name(self.id, held.link.id))
                for call, held in self._calls.items()
            ]

    def _annotate(self, link: LinkState) -> None:
        """The link and its load after the decision, on the server's span for this call."""
        annotate_link(link_name(self.id, link.id), link.capacity, link.reserved["sending"], link.reserved["receiving"])

    # -- links ----------------------------------------------------------------------------
    async def list_links(self) -> list[provider_pb2.Link]:
        if self._ledger is None:
            return [self._link_proto(link) for link in self._links.values()]
        async with self._ledger.books(self.id) as books:
            rows = await books.links(list(self._links), lock=False)
        links = []
        for link_id, link in self._links.items():
            row = rows.get(link_id)
            shown = LinkState(link.id, link.capacity, link.terms, link.destinations)
            if row is not None:
                shown.capacity, shown.reserved = row.capacity, {"sending": row.sending, "receiving": row.receiving}
            links.append(self._link_proto(shown, row.reserving if row is not None else 0))
        return links

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        if link_id not in self._links:
            raise KeyError(link_id)
        async with self._books([link_id], [], whole=True):
            link = self._links[link_id]
            with self._all_or_nothing():
                link.capacity = capacity
                changes = self._shed_all()
            result = self._link_proto(link)
        # Reported after the lock is released: the host takes its own per-call locks, and a
        # provider must never hold its lock while waiting on the host.
        for change in changes:
            await self.host.report_change(change)
        return result

    # -- internals ------------------------------------------------------------------------
    def _route(self, destination: str) -> LinkState:
        for link in self._links.values():
            if any(destination.startswith(prefix) for prefix in link.destinations):
                return link
        for link in self._links.values():
            if not link.destinations:
                return link
        return next(iter(self._links.values()))

    def _decide(self, request: AdmissionRequest) -> Decision:
        link = self._route(request.destination)
        held = self._calls.get(request.call)
        # During a renegotiation the call's own reservation counts as free.
        free = {
            d: link.free(d) + (held.rates[d] if held and held.link is link else 0) for d in ("sending", "receiving")
        }
        for direction in ("sending", "receiving"):
            spec: FlowSpec = getattr(request.qos, direction)
            if spec.service_type == ST.SERVICE_TYPE_NETWORK_CONTROL:
                return self._refuse_or_fallback(
                    request,
                    RefusalKind.POLICY,
                    f"{direction}: NETWORK_CONTROL is reserved for the network operator",
                    self._counter_offer(request.qos, link, free),
                )
            if (
                spec.service_type in RESERVING
                and spec.HasField("max_sdu_size_bytes")
                and spec.max_sdu_size_bytes > link.terms.mtu_bytes
            ):
                return self._refuse_or_fallback(
                    request,
                    RefusalKind.ADMISSION,
                    f"{direction}: max SDU {spec.max_sdu_size_bytes} exceeds link MTU {link.terms.mtu_bytes}",
                    self._counter_offer(request.qos, link, free),
                )
        granted = QosSpec(
            sending=self._resolve(request.qos.sending, request.qos.sending, link),
            receiving=self._resolve(request.qos.receiving, request.qos.sending, link),
            provider_specific=request.qos.provider_specific,
        )
        problems = []
        for direction in ("sending", "receiving"):
            spec = getattr(granted, direction)
            if reserved_rate(spec) > free[direction]:
                problems.append(
                    f"{direction}: needs {reserved_rate(spec)} B/s, {free[direction]} B/s free on link {link.id}"
                )
            if spec.service_type in RESERVING and spec.minimum_policed_size_bytes > spec.max_sdu_size_bytes:
                problems.append(
                    f"{direction}: minimum policed size {spec.minimum_policed_size_bytes} exceeds the max SDU "
                    f"{spec.max_sdu_size_bytes} on link {link.id} (RFC 2212: m <= M)"
                )
            if spec.service_type == ST.SERVICE_TYPE_GUARANTEED:
                bound = delay_bound_ceil_us(spec, link.terms)
                if bound is None or not spec.HasField("latency_microseconds"):
                    # _resolve leaves the latency out when the bound is beyond what it can carry.
                    problems.append(
                        f"{direction}: RFC 2212 delay bound {bound} us exceeds the largest latency a flowspec "
                        f"can carry ({LARGEST_UINT32_FIELD} us)"
                    )
                elif bound > spec.latency_microseconds:
                    problems.append(
                        f"{direction}: RFC 2212 delay bound {bound} us exceeds latency {spec.latency_microseconds} us"
                    )
        if problems:
            return self._refuse_or_fallback(
                request, RefusalKind.ADMISSION, "; ".join(problems), self._counter_offer(request.qos, link, free)
            )
        self._reserve(request.call, link, request.level, granted)
        return Grant(granted)

    def _refuse_or_fallback(
        self, request: AdmissionRequest, kind: RefusalKind, message: str, offer: QosSpec
    ) -> Decision:
        """NEEDED refuses; IF_AVAILABLE connects with the counter-offer instead."""
        if request.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
            link = self._route(request.destination)
            self._reserve(request.call, link, request.level, offer)
            return Grant(offer)
        return Refusal(kind, message, offer)

    def _resolve(self, spec: FlowSpec, sending: FlowSpec, link: LinkState) -> FlowSpec:
        """The flowspec as granted: the provider's defaults filled in for unspecified fields."""
        out = FlowSpec()
        out.CopyFrom(spec)
        if spec.service_type not in RESERVING:
            return out
        mtu = link.terms.mtu_bytes
        if not out.HasField("token_rate_bytes_per_second"):
            # A controlled-load receiver's defaults derive from the sender's TSpec (FLOWSPEC
            # remarks); with no sender rate, the MTU per second.
            out.token_rate_bytes_per_second = (
                sending.token_rate_bytes_per_second if sending.HasField("token_rate_bytes_per_second") else mtu
            )
            if out.HasField("peak_bandwidth_bytes_per_second") and not out.peak_bandwidth_unbounded:
                # Never above the peak the receiver gave (FLOW-10: p >= r).
                out.token_rate_bytes_per_second = min(
                    out.token_rate_bytes_per_second, out.peak_bandwidth_bytes_per_second
                )
        if not out.HasField("max_sdu_size_bytes"):
            out.max_sdu_size_bytes = mtu
        if not out.HasField("minimum_policed_size_bytes"):
            out.minimum_policed_size_bytes = min(DEFAULT_MIN_POLICED, out.max_sdu_size_bytes)
        if not out.HasField("token_bucket_size_bytes"):
            out.token_bucket_size_bytes = out.max_sdu_size_bytes
        if not out.HasField("peak_bandwidth_bytes_per_second"):
            out.peak_bandwidth_unbounded = True
        if out.service_type == ST.SERVICE_TYPE_GUARANTEED and not out.HasField("latency_microseconds"):
            bound = delay_bound_ceil_us(out, link.terms)
            if bound is not None and bound <= LARGEST_UINT32_FIELD:
                out.latency_microseconds = bound
            # Otherwise no latency can promise it: left out, and _decide refuses (DELAY-5).
        return out

    def _counter_offer(self, qos: QosSpec, link: LinkState, free: Mapping[str, int]) -> QosSpec:
        """The best this link can grant now for `qos`: same shape, rates cut to what is free,
        latency relaxed to the delay bound that rate achieves; best effort where nothing is free
        or where policy refuses the service type.

        Always a valid request that this link would grant at once (PROV-2): the max SDU within the
        MTU and the minimum policed size within the max SDU, no field a raw sentinel, and, for
        GUARANTEED, a bound a latency field can carry — the token bucket is cut until it is, and
        best effort offered when no bucket can (DELAY-5)."""
        offer = QosSpec(provider_specific=qos.provider_specific)
        for direction in ("sending", "receiving"):
            spec = self._resolve(getattr(qos, direction), qos.sending, link)
            target: FlowSpec = getattr(offer, direction)
            if spec.service_type == ST.SERVICE_TYPE_NETWORK_CONTROL:
                target.CopyFrom(best_effort_spec())
                continue
            if spec.service_type not in RESERVING:
                target.CopyFrom(spec)
                continue
            available = free[direction]
            if available <= 0:
                target.CopyFrom(best_effort_spec())
                continue
            target.CopyFrom(spec)
            if spec.max_sdu_size_bytes > link.terms.mtu_bytes:
                target.max_sdu_size_bytes = link.terms.mtu_bytes
                target.token_bucket_size_bytes = max(target.token_bucket_size_bytes, target.max_sdu_size_bytes)
            if target.minimum_policed_size_bytes > target.max_sdu_size_bytes:
                target.minimum_policed_size_bytes = target.max_sdu_size_bytes
            if reserved_rate(target) > available:
                cut = representable(available)
                target.token_rate_bytes_per_second = min(target.token_rate_bytes_per_second, cut)
                if target.HasField("peak_bandwidth_bytes_per_second") and not target.peak_bandwidth_unbounded:
                    target.peak_bandwidth_bytes_per_second = max(
                        min(target.peak_bandwidth_bytes_per_second, cut),
                        target.token_rate_bytes_per_second,
                    )
            if target.service_type == ST.SERVICE_TYPE_GUARANTEED:
                bucket = largest_bucket_within(target, link.terms, LARGEST_UINT32_FIELD)
                if bucket is None:
                    target.CopyFrom(best_effort_spec())
                    continue
                target.token_bucket_size_bytes = bucket
                bound = delay_bound_ceil_us(target, link.terms) or 0
                if not target.HasField("latency_microseconds") or target.latency_microseconds < bound:
                    target.latency_microseconds = bound
        return offer

    def _reserve(self, call: str, link: LinkState, level: int, qos: QosSpec) -> None:
        self._journal(call)
        self._unreserve(call)
        rates = {d: reserved_rate(getattr(qos, d)) for d in ("sending", "receiving")}
        for direction, rate in rates.items():
            link.reserved[direction] += rate
        self._order += 1
        self._calls[call] = Reservation(link, level, qos, rates, self._order)

    def _unreserve(self, call: str) -> None:
        self._journal(call)
        held = self._calls.pop(call, None)
        if held is not None:
            for direction, rate in held.rates.items():
                held.link.reserved[direction] -= rate

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """What runs inside takes effect whole, or not at all: if it raises, the capacities, the
        reservations and the admission counter are put back as they were (PROV-21)."""
        if self._undo is not None:  # nested: the outer block puts everything back
            yield
            return
        self._undo = _Undo(
            capacity={link_id: link.capacity for link_id, link in self._links.items()},
            reserved={link_id: dict(link.reserved) for link_id, link in self._links.items()},
            order=self._order,
        )
        try:
            yield
        except BaseException:
            undo = self._undo
            for link_id, link in self._links.items():
                link.capacity = undo.capacity[link_id]
                link.reserved = dict(undo.reserved[link_id])
            for call, before in undo.calls.items():
                if before is None:
                    self._calls.pop(call, None)
                else:
                    self._calls[call] = before
            self._order = undo.order
            raise
        finally:
            self._undo = None

    def _journal(self, call: str) -> None:
        """Remember `call`'s reservation before its first change in an _all_or_nothing block."""
        if self._undo is not None and call not in self._undo.calls:
            self._undo.calls[call] = self._calls.get(call)

    def _shed_all(self) -> list[ProviderChange]:
        """Bring every link back within capacity, newest calls first."""
        changes: list[ProviderChange] = []
        for link in self._links.values():
            victims = sorted(
                (item for item in self._calls.items() if item[1].link is link),
                key=lambda item: item[1].order,
                reverse=True,
            )
            for call, held in victims:
                if all(link.reserved[d] <= link.capacity for d in ("sending", "receiving")):
                    break
                if not any(held.rates.values()):
                    continue
                self._unreserve(call)
                free = {d: link.free(d) for d in ("sending", "receiving")}
                if held.level == Level.SERVICE_LEVEL_IF_AVAILABLE:
                    degraded = self._counter_offer(held.qos, link, free)
                    self._reserve(call, link, held.level, degraded)
                    changes.append(
                        ProviderChange(
                            call,
                            degraded,
                            f"link {link.id} capacity fell to {link.capacity} B/s; QoS degraded",
                            event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS,
                        )
                    )
                else:
                    changes.append(
                        ProviderChange(
                            call,
                            None,
                            f"link {link.id} capacity fell to {link.capacity} B/s; QoS cannot be sustained",
                            event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS,
                        )
                    )
        return changes

    def _link_proto(self, link: LinkState, reserving: int | None = None) -> provider_pb2.Link:
        """`reserving`: how many reservations on it reserve anything (counted from `_calls`
        when not given)."""
        if reserving is None:
            reserving = sum(1 for held in self._calls.values() if held.link is link and any(held.rates.values()))
        return provider_pb2.Link(
            name=link_name(self.id, link.id),
            capacity_bytes_per_second=link.capacity,
            sending_reserved_bytes_per_second=link.reserved["sending"],
            receiving_reserved_bytes_per_second=link.reserved["receiving"],
            mtu_bytes=link.terms.mtu_bytes,
            reservation_count=reserving,
            error_term_c_bytes=link.terms.c_bytes,
            error_term_d_microseconds=link.terms.d_microseconds,
            min_path_latency_microseconds=link.terms.min_path_latency_microseconds,
        )

    # -- the books: in memory, or shared by the server's replicas -------------------------------
    @contextlib.asynccontextmanager
    async def _books(
        self, links: Sequence[str] | None, calls: Sequence[str], *, whole: bool = False
    ) -> AsyncIterator[None]:
        """Hold the books for one decision: the provider's lock and, with a shared ledger, one
        ledger transaction. In it the rows of `links` (None: the links `calls` hold reservations
        on) are locked and read into `_links`, and the reservations of `calls` on them (`whole`:
        every reservation on them) into `_calls`; the block decides on them as it would in
        memory; what it changed is written back and committed as it ends (nothing if it raises).
        Outside a block, `_calls` is empty: another replica may have changed anything since."""
        async with self._lock:
            if self._ledger is None:
                yield
                return
            async with self._ledger.books(self.id) as books:
                if links is None:
                    links = sorted({held.link for held in await books.reservations(calls=calls)})
                rows = await books.links([link for link in links if link in self._links], lock=True)
                self._load(rows, await books.reservations(calls=calls, links=list(rows) if whole else ()))
                before = self._snapshot()
                try:
                    yield
                    await self._write_back(books, rows, before)
                finally:
                    self._calls = {}

    def _load(self, rows: Mapping[str, BookedLink], reservations: Sequence[BookedReservation]) -> None:
        for link_id, row in rows.items():
            link = self._links[link_id]
            link.capacity, link.reserved = row.capacity, {"sending": row.sending, "receiving": row.receiving}
        self._order = max((row.last_order for row in rows.values()), default=0)
        self._calls = {
            held.call: Reservation(
                self._links[held.link],
                held.level,
                held.qos,
                {"sending": held.sending, "receiving": held.receiving},
                held.order,
            )
            for held in reservations
            if held.link in rows  # only what is locked may be changed
        }

    def _snapshot(self) -> dict[str, tuple[object, ...]]:
        return {
            call: (held.link.id, held.level, held.qos.SerializeToString(deterministic=True), held.rates, held.order)
            for call, held in self._calls.items()
        }

    async def _write_back(
        self, books: LedgerBooks, rows: Mapping[str, BookedLink], before: Mapping[str, tuple[object, ...]]
    ) -> None:
        after = self._snapshot()
        for call, state in after.items():
            if before.get(call) != state:
                held = self._calls[call]
                await books.put_reservation(
                    BookedReservation(
                        call,
                        held.link.id,
                        held.level,
                        held.qos,
                        held.rates["sending"],
                        held.rates["receiving"],
                        held.order,
                    )
                )
        for call in before.keys() - after.keys():
            await books.delete_reservation(call)
        for link_id, row in rows.items():
            link = self._links[link_id]
            written = BookedLink(
                link_id,
                link.capacity,
                row.configured,
                link.reserved["sending"],
                link.reserved["receiving"],
                max(row.last_order, self._order),
            )
            if written != row:
                await books.put_link(written)
