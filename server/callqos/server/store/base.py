"""The storage contract. The service and the providers only ever see this interface, so a
PostgreSQL backend (several replicas sharing admission and events) slots in beside SQLite.

Guarantees every backend gives:
- `commit` stores a call's new state, the events that announce it and the idempotency record in
  ONE transaction, and assigns the events strictly increasing sequence numbers, never reused.
- Sequence order is commit order: once `commit` returns, no event with a lower sequence can
  appear later (a watcher that has read up to N never misses an event below N).
- `events_after(n)` returns retained events with sequence > n in order.
- A write the storage cannot take now (the disk is full, an I/O error, the file is locked or
  read-only) raises `StoreUnavailable`, naming the cause, with nothing written; the next write
  may succeed (no restart needed once space is freed).
- The releases the server owes its providers (`PendingRelease`) are written in the same
  transaction as the call's end, and forgotten only once the provider confirmed the release
  (conformance/SPEC.md CALL-6).
- A link capacity set with UpdateLink is kept (`LinkCapacity`) with the configured capacity it
  overrode, so that a changed configuration can win over it (LINK-5).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from callqos.v1 import call_pb2, event_pb2


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first outcome of a request carrying a request_id (AIP-155)."""

    request_id: str
    principal: str
    method: str
    fingerprint: str  # hash of the request without its request_id
    call: str  # the call the request created or changed
    status: bytes = b""  # serialized google.rpc.Status when it failed; empty on success


class StoreUnavailable(Exception):
    """The storage cannot take a write (or a read) now; nothing was written. `cause` says why, in
    words an operator acts on ("disk is full")."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


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


class Store(abc.ABC):
    @abc.abstractmethod
    async def get_call(self, name: str) -> call_pb2.Call | None: ...

    @abc.abstractmethod
    async def list_calls(self, *, state: int | None, provider: str | None, limit: int, before: int) -> CallPage:
        """Calls newest first; `before` = 0 starts at the newest."""

    @abc.abstractmethod
    async def connected_calls(self) -> list[call_pb2.Call]: ...

    @abc.abstractmethod
    async def commit(
        self,
        call: call_pb2.Call,
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        owe: PendingRelease | None = None,
        released: bool = False,
    ) -> list[event_pb2.QosEvent]:
        """Store the call (insert or replace) with its events; returns the events numbered. In the
        same transaction, `owe` records (or updates) a release owed for the call, and `released`
        forgets the one owed for it."""

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
    async def find_request(self, request_id: str, principal: str) -> IdempotencyRecord | None: ...

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
