"""The storage contract. The service and the providers only ever see this interface, so a
PostgreSQL backend (several replicas sharing admission and events) slots in beside SQLite.

Guarantees every backend gives:
- `commit` stores the new state of a call — or of several: both legs of a call between two lines
  — and of any lines it changes, the events that announce it and the idempotency record in ONE
  transaction, and assigns the events strictly increasing sequence numbers, never reused once
  acknowledged. It returns only once all of that is durable.
- A backend may write several commits in one transaction (SQLite's group commit, store.group;
  PostgreSQL gives each its own): then a commit that fails on its own (over quota, an address in
  use) fails alone and the others commit as if it had never been tried, while a failure of the
  storage fails every commit of the transaction with `StoreUnavailable` — to each caller exactly
  what a commit alone would have got, so the call manager compensates the same way whichever the
  backend.
- At most one line of a tenant is open per address, whatever commits race.
- Sequence order is commit order: once `commit` returns, no event with a lower sequence can
  appear later (a watcher that has read up to N never misses an event below N).
- `events_after(n)` returns retained events with sequence > n in order.
- A call's live lease (`lease_deadline_us`) is indexed as it is committed: `next_lease_expiry`
  and `expired_leases` read it back, so the lease timer needs nothing but the store to find, after
  any restart, every lease that ended while no server ran.
- Calls, lines, events and request_ids belong to a tenant (`Call.tenant`, `Line.tenant`,
  `QosEvent.tenant`); listing, finding a line by address and request_id lookup are per tenant,
  and `commit` given a tenant's `UsageLimits` refuses, in the same transaction, a commit that
  would take the tenant beyond them (so concurrent admissions, or several replicas sharing a
  database, cannot overshoot a quota together).
- A write (or read) the storage cannot take now (the disk is full, an I/O error, the file is
  locked or read-only, the database cannot be reached) raises `StoreUnavailable`, naming the
  cause, with nothing written; the next one may succeed (no restart needed once space is freed
  or the database is back).
- The releases the server owes its providers (`PendingRelease`) are written in the same
  transaction as the call's end, and forgotten only once the provider confirmed the release
  (conformance/SPEC.md CALL-6).
- A link capacity set with UpdateLink is kept (`LinkCapacity`) with the configured capacity it
  overrode, so that a changed configuration can win over it (LINK-5).
- A store that several server processes share (`shared`: PostgreSQL) gives them, besides: sequence
  order equal to commit order ACROSS processes; `changes()`, to learn of events the others
  committed; `shared_locks()`, mutual exclusion by key among them (the call manager's per-call,
  per-line and per-request_id locks); `shared_ledger()`, admission books every process decides
  against (`ProviderHost.ledger`); and `leadership()`, which one of them does the background work
  that must happen once. A store one process owns (SQLite) keeps the defaults below: no locks or
  ledger to share, and it always leads.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from callqos.server.providers.base import SharedLedger
from callqos.server.qos import reserved_rate
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.wire import DEFAULT_TENANT


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first outcome of a request carrying a request_id (AIP-155)."""

    request_id: str
    principal: str
    method: str
    fingerprint: str  # hash of the request without its request_id
    call: str  # the resource (a call, or a line) the request created or changed
    status: bytes = b""  # serialized google.rpc.Status when it failed; empty on success
    tenant: str = DEFAULT_TENANT  # a principal is unique only within its tenant


@dataclass(frozen=True)
class Usage:
    """What a tenant holds: its connected calls, and the bytes/s they reserve in each direction
    (`qos.reserved_rate` of the granted flowspecs). A call between two applications counts once,
    as the one reservation it holds: under its caller's leg, in the caller's terms."""

    active_calls: int = 0
    sending: int = 0
    receiving: int = 0


def holds_reservation(call: call_pb2.Call) -> bool:
    """Whether the provider holds `call`'s reservation under the call's own name. Every call
    does but the answering leg of a call between two applications: that pair's one reservation
    is held under the caller's leg, its `peer`."""
    return not (call.direction == call_pb2.Call.Direction.DIRECTION_INCOMING and call.peer)


# Rates are uint64 and a database's integers int64: a rate beyond it is stored as the int64
# maximum, far above any quota (every quantity is bounded, none overflows), by every backend.
INT64_MAX = 2**63 - 1


def stored_rate(rate: int) -> int:
    """A rate as a database stores it (saturated at INT64_MAX)."""
    return min(rate, INT64_MAX)


def held_usage(call: call_pb2.Call) -> Usage:
    """What `call` counts toward its tenant's quotas: while connected, one active call and the
    bytes/s its grant reserves — unless its pair's reservation is held under its peer, which
    then counts for both (an offered call, like any unconnected one, counts nothing)."""
    if call.state != call_pb2.Call.State.STATE_CONNECTED or not holds_reservation(call):
        return Usage()
    return Usage(1, reserved_rate(call.granted_qos.sending), reserved_rate(call.granted_qos.receiving))


_LIVE = (call_pb2.Call.State.STATE_CONNECTED, call_pb2.Call.State.STATE_RINGBACK)


def lease_deadline_us(call: call_pb2.Call) -> int:
    """When `call`'s live lease ends, in microseconds since the epoch, or 0 when there is none to
    act on: the call is not CONNECTED or RINGBACK, has no lease, or is the answering leg of a pair
    (which shows its caller's lease; the caller's leg holds it, as it holds the reservation)."""
    if call.state not in _LIVE or not call.HasField("lease_expire_time") or not holds_reservation(call):
        return 0
    return max(1, call.lease_expire_time.ToMicroseconds())


@dataclass(frozen=True)
class UsageLimits:
    """A tenant's quotas (0 = unlimited), which `Store.commit` refuses to let a commit exceed."""

    tenant: str
    active_calls: int = 0
    reserved_bytes_per_second: int = 0  # each direction

    def exceeded(self, usage: Usage, before: Usage) -> list[str]:
        """The quotas `usage` exceeds where it grew from `before` (a commit that lowers or keeps
        usage is never refused, even over a quota lowered since)."""
        over = []
        if self.active_calls and usage.active_calls > self.active_calls and usage.active_calls > before.active_calls:
            over.append("active_calls")
        limit = self.reserved_bytes_per_second
        if limit and (
            (usage.sending > limit and usage.sending > before.sending)
            or (usage.receiving > limit and usage.receiving > before.receiving)
        ):
            over.append("reserved_bytes_per_second")
        return over


class QuotaExceededError(Exception):
    """A commit would take a tenant beyond its quotas; nothing was stored."""

    def __init__(self, limits: UsageLimits, quotas: list[str], usage: Usage) -> None:
        super().__init__(f"tenant {limits.tenant}: {', '.join(quotas)} exceeded")
        self.limits, self.quotas, self.usage = limits, quotas, usage


@dataclass(frozen=True)
class PendingRelease:
    """A release the server owes a provider: the call ended (or never connected) and the provider
    has not confirmed that it freed what the call held."""

    call: str  # `calls/{call}`
    provider: str  # `providers/{provider}`
    attempts: int = 0  # failed attempts so far
    next_attempt_us: int = 0  # when to try again (epoch microseconds; 0: now)
    last_error: str = ""


@dataclass(frozen=True)
class LinkCapacity:
    """A capacity set with UpdateLink, and the configured capacity of the link at the time."""

    link: str  # `providers/{provider}/links/{link}`
    capacity: int
    configured: int


@dataclass(frozen=True)
class EventBounds:
    pruned_through: int  # every event with sequence <= this is gone (0: none pruned)
    last: int  # the newest sequence ever assigned (0: none)


@dataclass(frozen=True)
class CallPage:
    calls: list[call_pb2.Call]
    next_cursor: int  # pass back as `before` for the next page; 0 when there is none


@dataclass(frozen=True)
class LinePage:
    lines: list[line_pb2.Line]
    next_cursor: int  # pass back as `before` for the next page; 0 when there is none


class AddressInUseError(Exception):
    """`commit` would open a second line of a tenant for an address; nothing was stored."""


class StoreUnavailable(Exception):
    """The storage cannot take a write (or a read) now; nothing was written. `cause` says why, in
    words an operator acts on ("disk is full", "the database cannot be reached")."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class SharedLocks(abc.ABC):
    """Mutual exclusion by key among every server process sharing a store: while one process
    holds a key, another that asks for it waits. Not re-entrant: a process serialises its own
    holders of one key first (`locks.KeyedLocks` does)."""

    @abc.abstractmethod
    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


class Leadership(abc.ABC):
    """Which of the processes sharing a store does the background work that must happen once
    (pruning, ringing out offers, reconciling a shared ledger). At most one leads at a time as
    far as the store can tell; every duty is written so that a second leader (one that lost the
    lead without knowing it yet) only repeats harmlessly what the first did."""

    @abc.abstractmethod
    async def lead(self) -> bool:
        """Whether this process leads now, taking the lead if no process holds it. Asked before
        every round of duties, so that a leader that died is replaced within one round."""

    async def close(self) -> None:
        """Give the lead up (at shutdown), so that another process takes it at once."""


class SoleLeader(Leadership):
    """The one process that owns its store leads, always."""

    async def lead(self) -> bool:
        return True


class Store(abc.ABC):
    @abc.abstractmethod
    async def get_call(self, name: str) -> call_pb2.Call | None: ...

    @abc.abstractmethod
    async def list_calls(
        self,
        *,
        tenant: str,
        state: int | None,
        provider: str | None,
        limit: int,
        before: int,
        line: str | None = None,
    ) -> CallPage:
        """The tenant's calls newest first; `before` = 0 starts at the newest."""

    @abc.abstractmethod
    async def usage(self, tenant: str) -> Usage:
        """What the tenant's connected calls hold now."""

    @abc.abstractmethod
    async def connected_calls(self) -> list[call_pb2.Call]: ...

    @abc.abstractmethod
    async def calls_in_state(self, state: int) -> list[call_pb2.Call]:
        """Every call in `state`, oldest first (the offered calls to ring out at start-up)."""

    @abc.abstractmethod
    async def next_lease_expiry(self) -> int | None:
        """The earliest `lease_deadline_us` of any call (of any tenant) that has one, None when no
        call has a live lease."""

    @abc.abstractmethod
    async def expired_leases(self, now_us: int, limit: int) -> list[str]:
        """The names of at most `limit` calls whose live lease ended at or before `now_us`
        (`lease_deadline_us`), the earliest ending first."""

    @abc.abstractmethod
    async def pending_releases(self) -> list[PendingRelease]:
        """Every release still owed, oldest first."""

    @abc.abstractmethod
    async def forget_release(self, call: str) -> None:
        """The provider confirmed the release of `call`: nothing is owed for it any more."""

    @abc.abstractmethod
    async def link_capacities(self) -> list[LinkCapacity]:
        """Every link capacity set with UpdateLink that is still in force."""

    @abc.abstractmethod
    async def set_link_capacity(self, capacity: LinkCapacity | None, link: str) -> None:
        """Keep `capacity` for `link` (None: forget what was kept, the configured one applies)."""

    @abc.abstractmethod
    async def commit(
        self,
        call: call_pb2.Call | Sequence[call_pb2.Call],
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        lines: Sequence[line_pb2.Line] = (),
        limits: UsageLimits | None = None,
        owe: PendingRelease | None = None,
        released: bool = False,
    ) -> list[event_pb2.QosEvent]:
        """Store the call or calls and the lines (each inserted or replaced) with the events;
        returns the events numbered. AddressInUseError (nothing stored) when a line would be the
        second open one of its tenant for its address. With `limits` (the calls' tenant's: both
        legs of a pair are of one tenant), raises QuotaExceededError instead when the commit would
        take the tenant beyond them. In the same transaction, `owe` records (or updates) a release
        owed to a provider, and `released` forgets the ones owed for the calls stored."""

    @abc.abstractmethod
    async def get_line(self, name: str) -> line_pb2.Line | None:
        """The line `name`, of whichever tenant: the caller checks the tenant."""

    @abc.abstractmethod
    async def open_line(self, address: str, tenant: str) -> line_pb2.Line | None:
        """The tenant's line open for `address`, if there is one."""

    @abc.abstractmethod
    async def list_lines(
        self,
        *,
        tenant: str,
        state: int | None,
        address: str | None,
        owner: str | None,
        limit: int,
        before: int,
    ) -> LinePage:
        """The tenant's lines newest first; `before` = 0 starts at the newest."""

    @abc.abstractmethod
    async def find_request(
        self, request_id: str, principal: str, tenant: str = DEFAULT_TENANT
    ) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    async def events_after(self, sequence: int, limit: int) -> list[event_pb2.QosEvent]: ...

    @abc.abstractmethod
    async def event_bounds(self) -> EventBounds: ...

    @abc.abstractmethod
    async def prune_events(self, *, keep_last: int, older_than_us: int) -> int:
        """Drop events beyond retention (by count, and by age when `older_than_us` > 0), and
        idempotency records older than that age; returns how many events were dropped."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- several server processes on one store (see the module docstring) ---------------------
    shared = False  # True: other server processes may commit to this store at the same time

    def shared_locks(self) -> SharedLocks | None:
        """Locks held across every process sharing the store; None when one process owns it."""
        return None

    def shared_ledger(self) -> SharedLedger | None:
        """Admission books shared by every process (`ProviderHost.ledger`); None when one owns it."""
        return None

    def leadership(self) -> Leadership:
        return SoleLeader()

    async def host_providers(self, ids: Sequence[str]) -> bool:
        """Tell every process sharing the store that this one hosts the providers `ids`, for as
        long as it runs; False when a live one hosts a different list (REPL-5). A store one
        process owns: always True."""
        return True

    async def changes(self) -> AsyncIterator[None]:
        """Yields whenever another process may have committed events (the store notified it, or
        a poll interval passed: notifications can be lost): read `events_after` your cursor.
        A store one process owns never yields."""
        await asyncio.Event().wait()
        yield

    async def check(self) -> None:
        """Raise StoreUnavailable when the storage cannot be reached now (readiness)."""
