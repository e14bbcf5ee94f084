"""The provider contract: what a QoS provider (the TAPI "service provider") implements.

A provider is a Python class registered under the `callqos.providers` entry-point group (or
named as `module:Class`). The server creates one instance per configured provider, passing the
provider's own settings table from the configuration, then calls `start()` once. Provider
authors import these types from `callqos.server.providers`, the plugin's public face.

The server does everything around the provider: it validates requests before the provider sees
them (a provider never receives an invalid flowspec, nor provider_specific bytes its
`validate_provider_specific` refuses), resolves SERVICE_TYPE_NO_CHANGE, enforces
ownership, idempotency and etags, stores calls and events, and times out slow providers. The
provider decides one thing: what QoS it can provide, reserving and releasing capacity.

Rules a provider keeps, each a clause of conformance/SPEC.md (which gives its source and the
conformance checks that verify it):
- `admit` either reserves and returns a `Grant`, or reserves nothing and returns a `Refusal`
  (PROV-1). At level NEEDED a grant must satisfy the request in both directions (LEVEL-1,
  GRANT-3); at IF_AVAILABLE it may be less (LEVEL-2); at BEST_EFFORT the server does not call
  `admit` with a reservation request (LEVEL-3, PROV-12).
- A `Refusal` carries the best counter-offer the provider could grant right now; admitting the
  counter-offer immediately afterwards must succeed (PROV-2).
- `renegotiate` replaces the call's reservation atomically: on `Refusal` the previous
  reservation stays exactly as it was (PROV-3).
- `release` frees everything the call holds (PROV-4); releasing twice, or an unknown call, is
  harmless (PROV-5). A call whose lease runs out is released exactly as a dropped one is: a
  provider sees nothing else of leases (LEASE-3), and after a restart it may be asked to release
  a call it has just re-taken (LEASE-6).
- Concurrent calls never make the sum of reservations exceed capacity (PROV-6).
- Provider-initiated changes are reported through `ProviderHost.report_change`, never by
  writing to the server's state directly (PROV-7).
- `capabilities()` does not change while serving, and what it does not advertise is refused
  cleanly (PROV-8, PROV-9).
- A call between two applications on this server (a call to an open line's address) is one
  call to the provider: admitted once, when its owner answers, under the caller's call name and
  in the caller's terms; released, renegotiated and changed under that name too (PROV-13). Its
  other leg never reaches the provider.
- A provider that advertises `incoming_calls` reports each call arriving from its own network
  with `ProviderHost.offer_call` (PROV-14). When the line's owner answers it, `admit` is called
  with `AdmissionRequest.incoming` set: connect that call, do not place a new one. An offer that
  ends unanswered (rejected, rung out, refused at NEEDED, its line closed) is told to
  `offer_ended`; a caller who gives up is reported with `report_change(ProviderChange(call,
  None, ...))`.
- A validated request never makes it raise: every quantity it derives is bounded, and what it
  cannot represent in a flowspec field it refuses, with a counter-offer that it can (PROV-20,
  DELAY-5).
- An operation that fails leaves nothing half-done: a decision, or the shedding after a capacity
  change, either takes effect whole or not at all (PROV-21).
- Optionally, `reservations()` lists what it holds, call by call, for the server to reconcile
  its ledger with (advertised as `capabilities().reservation_listing`, PROV-19).
Calls arrive on the server's event loop; long or blocking work belongs in `asyncio.to_thread`
(PROV-10: every call returns within the host's provider deadline). A provider that blocks
throughout (a blocking driver or library) sets `threaded = true` in its settings table: the host
then runs all of it — start, admit, ..., stop — on an event loop of its own in a thread of its
own, and its `ProviderHost` hands changes back to the server's loop. Either way the host contains
what a provider does (PROV-15): an exception of any kind fails only that call, an answer of the
wrong type is a contract violation, and a call that ignores its cancellation is abandoned.

What the host does around failures, so that a provider need not: it commits every outcome after
the provider's decision and, when the commit fails, undoes the decision (it releases a fresh
grant, renegotiates a call back to its previous QoS); a release it could not complete is retried
with backoff until it succeeds; and at start-up and periodically it compares `reservations()` with
the connected calls it recorded, releasing what no call holds and re-taking, or disconnecting,
what a call lost (CALL-5, CALL-6, PROV-19).

Several replicas. A server may run as several processes (replicas) on one database; each hosts
its own instance of every provider, and any of them may be asked to admit, release or change a
link. A provider whose books live in its own memory would then let each replica admit the whole
capacity. So the host offers one capability: `ProviderHost.ledger`, a `SharedLedger` when the
server's replicas share a database (None when one process owns its store, where memory is
right). A provider that keeps admission books keeps them there when it is offered one: each
decision opens `ledger.books(provider_id)`, locks the rows of the links it decides on
(`LedgerBooks.links(..., lock=True)`: every other replica deciding on those links waits), reads
and writes reservations, and commits at the end of the block, before it answers (as the
reference provider does); `reservations()` then lists the shared books, so that the server's
reconciliation — run by the one replica that leads background work — puts right what a replica
that died between a decision and the server's commit left behind. A threaded provider's ledger
runs each transaction on the server's loop, where the database connections are, handing every
step over. (A provider in another process, `remote`, keeps its books there and is refused on
replicas for now.)
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2

QosSpec = flowspec_pb2.QosSpec
Level = call_pb2.ServiceLevel


@dataclass(frozen=True)
class AdmissionRequest:
    """A request for QoS on one call: a new call (`current` is None) or a renegotiation."""

    call: str  # `calls/{call}`
    destination: str
    level: int  # callqos.v1.ServiceLevel, never UNSPECIFIED (the server resolves it to NEEDED)
    qos: QosSpec  # validated; NO_CHANGE already resolved
    principal: str
    current: QosSpec | None = None  # the QoS in effect, for a renegotiation
    # True when admitting a call this provider offered (ProviderHost.offer_call) as its owner
    # answers it: connect that call rather than place a new one to `destination`. `qos` is then
    # in the answering party's terms.
    incoming: bool = False


@dataclass(frozen=True)
class Grant:
    """The QoS the provider put in effect, with the defaults it chose resolved."""

    qos: QosSpec


class RefusalKind(enum.Enum):
    ADMISSION = "admission"  # lack of resources: QOS_UNAVAILABLE / QE_ADMISSIONFAILURE
    POLICY = "policy"  # administrative refusal: QOS_POLICY_FAILURE / QE_POLICYFAILURE


@dataclass(frozen=True)
class Refusal:
    """The provider cannot provide the requested QoS now. Nothing is reserved for it."""

    kind: RefusalKind
    message: str
    counter_offer: QosSpec | None = None


Decision = Grant | Refusal


@dataclass(frozen=True)
class ProviderChange:
    """A change the provider made on its own, e.g. after a link lost capacity.

    `qos` is the QoS now in effect; None means the provider dropped the call (it is recorded
    DISCONNECTED with reason QOS_UNAVAILABLE). `event` is the QoS event kind that announces a
    loss (NOQOS, ADMISSION_FAILURE, POLICY_FAILURE or GENERIC_ERROR); a degradation is also
    announced as QOS_CHANGED.
    """

    call: str
    qos: QosSpec | None
    message: str
    event: event_pb2.QosEventType = event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS


@dataclass(frozen=True)
class IncomingOffer:
    """A call arriving from the provider's network (capability `incoming_calls`).

    The server offers it to the owner of the line open for `destination`, with the QoS the caller
    asked for mirrored into the callee's terms; nothing is reserved until the owner answers."""

    destination: str  # the address called: the address of an open line on this server
    caller_id: str  # who is calling, as the network identifies them (for people; may be empty)
    level: int  # callqos.v1.ServiceLevel the caller asked for (not UNSPECIFIED)
    # The caller's request in the caller's terms: its sending is what it sends. A direction left
    # out is BEST_EFFORT, as in CreateCall (SPEC.md FLOW-20).
    caller_qos: QosSpec


@dataclass
class BookedLink:
    """A link as a shared ledger keeps it: its capacity (bytes/s, each direction), the capacity
    the configuration gave it (`SharedLedger.add_links` compares them), the rate reserved on it
    in each direction, the last admission order given on it, and (read only) how many
    reservations on it reserve anything."""

    id: str  # the provider's own link id
    capacity: int
    configured: int
    sending: int = 0
    receiving: int = 0
    last_order: int = 0
    reserving: int = 0


@dataclass
class BookedReservation:
    """What one call holds in a shared ledger: on which link, at which level and QoS, the rate
    it reserves in each direction, and its admission order on the link."""

    call: str  # `calls/{call}`
    link: str
    level: int
    qos: QosSpec
    sending: int
    receiving: int
    order: int


class LedgerBooks(Protocol):
    """A provider's books inside one transaction of a shared ledger. Rows read with `lock=True`
    stay locked against every other replica until the transaction ends."""

    async def links(self, ids: Sequence[str], *, lock: bool) -> dict[str, BookedLink]:
        """The rows of the links `ids` that exist; `lock`: locked until the end (in id order, so
        that two deciders never wait for each other)."""

    async def reservations(self, *, calls: Sequence[str] = (), links: Sequence[str] = ()) -> list[BookedReservation]:
        """The reservations of `calls`, and every reservation on `links`."""

    async def put_link(self, link: BookedLink) -> None:
        """Write a link's capacity, reserved rates and last order (a locked link's)."""

    async def put_reservation(self, reservation: BookedReservation) -> None:
        """Insert or replace the reservation of `reservation.call`."""

    async def delete_reservation(self, call: str) -> None: ...


class SharedLedger(abc.ABC):
    """Admission books shared by every replica of a server (`ProviderHost.ledger`): link rows and
    reservation rows in the replicas' database, one set per provider id."""

    @abc.abstractmethod
    def books(self, provider: str) -> AbstractAsyncContextManager[LedgerBooks]:
        """One transaction on `provider`'s books: committed when the block ends, rolled back (and
        nothing written) when it raises."""

    @abc.abstractmethod
    async def add_links(self, provider: str, links: Sequence[BookedLink]) -> None:
        """At start-up: add each configured link the books lack. A link already there keeps its
        capacity (set by UpdateLink on any replica) while its configured capacity is unchanged;
        once the configuration gives it another, the configuration wins."""


class ProviderHost(Protocol):
    """What the server offers a running provider."""

    # A ledger shared by every replica of the server, or None when this process owns its
    # store alone (keep admission books in memory then). See the module docstring.
    ledger: SharedLedger | None

    async def report_change(self, change: ProviderChange) -> None:
        """Apply a provider-initiated change: store it and emit its events. For a call still
        offered (not yet answered), `qos=None` means the caller gave up: it is disconnected
        PEER_DROPPED. Never raises: a change the server cannot record now is reconciled later
        (PROV-19)."""

    async def offer_call(self, offer: IncomingOffer) -> str | None:
        """Offer a call arriving from the provider's network (capability `incoming_calls`) to the
        owner of the line open for its destination (among the lines of the tenant the provider's
        `incoming_tenant` setting names). Returns the offered call's name
        (`calls/{call}`), or None when no line is open for the address (tell the network the
        callee is not available). Raises ValueError, naming what is wrong, for an invalid offer."""


@dataclass(frozen=True)
class Holding:
    """What the provider holds for one call, as its own books account it (`Provider.reservations`):
    the rate reserved in each direction, and on which link (`providers/{p}/links/{l}`, or "" for a
    provider without links). The server compares these rates with what the call's granted QoS
    reserves by GRANT-1."""

    call: str  # `calls/{call}`
    sending_bytes_per_second: int
    receiving_bytes_per_second: int
    link: str = ""


@dataclass(frozen=True)
class Restored:
    """A connected call handed back to its provider after a server restart."""

    call: str
    destination: str
    level: int
    qos: QosSpec  # the QoS that was in effect


class Provider(abc.ABC):
    """Base class of every provider. Subclasses set `display_name` and `description`."""

    display_name: str = ""
    description: str = ""
    # Set by the host before start(): the provider's {provider} id in `providers/{provider}`.
    id: str = ""
    host: ProviderHost

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: Mapping[str, Any] = settings or {}

    async def prepare(self) -> None:
        """Optional: called once before anything else — before the host reads `capabilities()`
        again and `list_links`, and puts back the capacities kept from UpdateLink with
        `update_link` (LINK-5), all before `start` — under the start deadline. A provider that
        must reach something to know its capabilities and links (a provider process) does it
        here. If it raises, the server does not start."""

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        """Called before serving, with the calls that were connected when the server last
        stopped. Re-take their reservations; return a change for each that no longer fits.

        If it raises, the host calls it once more with no calls, then re-takes each call with
        `admit` (oldest first) and disconnects those that fail, with a reason: no stored call
        stops the server (CALL-7). If it raises with no calls, the server does not start. It runs
        under the start deadline (`provider_start_timeout_seconds`), not the provider deadline.

        Offered a shared ledger (`host.ledger`), there is nothing to re-take: the books outlive
        every replica. Add the configured links the books lack (`SharedLedger.add_links`) and
        return a change for each call that no longer fits a link whose capacity changed."""
        self.host = host
        return []

    async def stop(self) -> None:
        """Called once at shutdown."""

    @abc.abstractmethod
    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        """What this provider can do. Must not change while serving."""

    def validate_provider_specific(self, data: bytes) -> list[str]:
        """What is wrong with `data` as this provider's `QosSpec.provider_specific` (empty: it
        is acceptable). Optional: by default provider-specific bytes are opaque and any are fine.

        Called by the server's validation, before anything is reserved, for a CreateCall and for
        a RenegotiateCall that carries new bytes (empty bytes on renegotiation keep the call's
        current ones and are not checked). Each problem becomes one INVALID_ARGUMENT field
        violation on `call.requested_qos.provider_specific` (or `qos.provider_specific`). Must be
        fast and side-effect free: it runs on the event loop and under no provider lock."""
        return []

    @abc.abstractmethod
    async def admit(self, request: AdmissionRequest) -> Decision:
        """Reserve QoS for a new call, or refuse."""

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        """Replace the QoS of a connected call, or refuse and leave it as it was. Only called
        when capabilities().renegotiation is true."""
        raise NotImplementedError

    @abc.abstractmethod
    async def release(self, call: str) -> None:
        """Free everything `call` holds. Idempotent."""

    async def offer_ended(self, call: str, reason: int) -> None:
        """An offered call (`offer_call`) ended without being admitted: `reason` is its
        callqos.v1.DisconnectReason (REJECTED, NO_ANSWER, QOS_UNAVAILABLE when the answer fell
        short of a NEEDED request). Optional: only providers with `incoming_calls` get it."""

    async def list_links(self) -> list[provider_pb2.Link]:
        """The provider's links (only when capabilities().link_admin)."""
        raise NotImplementedError

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        """Change a link's capacity (only when capabilities().link_admin). Raise KeyError for an
        unknown link. Calls that no longer fit are reported through the host, from within this
        call (the host lists them in the UpdateLink response), all of them or none: if it raises,
        nothing changed (PROV-21).

        The host also calls it BEFORE `start()`, with no call held yet, to put back a capacity an
        operator set with UpdateLink before the server restarted (LINK-5); it must then change the
        capacity and report nothing."""
        raise NotImplementedError

    async def reservations(self) -> list[Holding]:
        """Every call this provider holds a reservation for, with the rates its books hold
        (only when capabilities().reservation_listing, PROV-19). Calls holding nothing (best
        effort) may be left out. The server reconciles its ledger with this listing at start-up
        and every `reconcile_interval_seconds`; it must be consistent with what `list_links`
        reports (each link's reserved rates are the sums of its holdings)."""
        raise NotImplementedError
