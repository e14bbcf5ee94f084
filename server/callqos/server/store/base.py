"""The storage contract. The service and the providers only ever see this interface, so a
PostgreSQL backend (several replicas sharing admission and events) slots in beside SQLite.

Guarantees every backend gives:
- `commit` stores the new state of a call — or of several: both legs of a call between two lines
  — and of any lines it changes, the events that announce it and the idempotency record in ONE
  transaction, and assigns the events strictly increasing sequence numbers, never reused.
- At most one line is open per address, whatever commits race.
- Sequence order is commit order: once `commit` returns, no event with a lower sequence can
  appear later (a watcher that has read up to N never misses an event below N).
- `events_after(n)` returns retained events with sequence > n in order.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from callqos.v1 import call_pb2, event_pb2, line_pb2


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first outcome of a request carrying a request_id (AIP-155)."""

    request_id: str
    principal: str
    method: str
    fingerprint: str  # hash of the request without its request_id
    call: str  # the resource (a call, or a line) the request created or changed
    status: bytes = b""  # serialized google.rpc.Status when it failed; empty on success


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
    """`commit` would open a second line for an address; nothing was stored."""


class Store(abc.ABC):
    @abc.abstractmethod
    async def get_call(self, name: str) -> call_pb2.Call | None: ...

    @abc.abstractmethod
    async def list_calls(
        self, *, state: int | None, provider: str | None, limit: int, before: int, line: str | None = None
    ) -> CallPage:
        """Calls newest first; `before` = 0 starts at the newest."""

    @abc.abstractmethod
    async def connected_calls(self) -> list[call_pb2.Call]: ...

    @abc.abstractmethod
    async def calls_in_state(self, state: int) -> list[call_pb2.Call]:
        """Every call in `state`, oldest first (the offered calls to ring out at start-up)."""

    @abc.abstractmethod
    async def commit(
        self,
        call: call_pb2.Call | Sequence[call_pb2.Call],
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        lines: Sequence[line_pb2.Line] = (),
    ) -> list[event_pb2.QosEvent]:
        """Store the call or calls and the lines (each inserted or replaced) with the events;
        returns the events numbered. AddressInUseError (nothing stored) when a line would be the
        second open one for its address."""

    @abc.abstractmethod
    async def get_line(self, name: str) -> line_pb2.Line | None: ...

    @abc.abstractmethod
    async def open_line(self, address: str) -> line_pb2.Line | None:
        """The line open for `address`, if there is one."""

    @abc.abstractmethod
    async def list_lines(
        self, *, state: int | None, address: str | None, owner: str | None, limit: int, before: int
    ) -> LinePage:
        """Lines newest first; `before` = 0 starts at the newest."""

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
