"""The event hub: wakes watchers after a commit and serves them from the store's sequence.

Watchers always read by sequence number — from a small in-memory window of the newest events
when their cursor is inside it, otherwise from the store — so resuming after a reconnect and
after a restart is the same code path, and a slow watcher can never make the hub drop an event
(it just reads further behind, from the store). conformance/SPEC.md WATCH-1 … WATCH-9 state the
contract this serves.

The window only ever grows by contiguous sequence numbers: the events a commit publishes are
appended when they follow the newest one the hub has, and anything else — another replica's
events (a store several replicas share), or this process's own published out of turn (the commits
of one SQLite group, `store.group`, resume one after another; concurrent tasks on PostgreSQL) — is
read from the store after the newest one it has (`_catch_up`), for other replicas woken by the
store's `changes()` (NOTIFY, or a poll). Because the store's sequence
order is commit order, a read after N that returns N+1 … M can never later be missing an event
in between: every replica's watchers see every event, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from callqos.server.errors import Reason, ServiceError
from callqos.server.store.base import Store
from callqos.v1 import event_pb2
from callqos.wire import DEFAULT_TENANT

log = logging.getLogger(__name__)

QosEvent = event_pb2.QosEvent
_BATCH = 256


class EventHub:
    def __init__(self, store: Store, window: int = 4096) -> None:
        self._store = store
        self._recent: deque[QosEvent] = deque(maxlen=window)
        # One future per watcher waiting for a newer event, resolved together by the next publish.
        # (An asyncio.Condition would make every woken watcher take its lock again, one after
        # another: a thousand watchers, a thousand lock hand-overs per event.)
        self._waiting: set[asyncio.Future[None]] = set()
        self._last = 0
        self._closed = False
        self._catching_up = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._last = (await self._store.event_bounds()).last
        if self._store.shared:
            self._follower = asyncio.create_task(self._follow(), name="callqos event follower")

    @property
    def last_sequence(self) -> int:
        """The newest sequence published (what a watcher at its cursor is behind by)."""
        return self._last

    async def publish(self, events: Sequence[QosEvent]) -> None:
        """Called after the events are committed, normally in sequence order. The window only
        ever holds consecutive sequences: events that do not follow it are read from the store
        instead, with whatever came between (`_catch_up`)."""
        if not events:
            return
        if events[0].sequence != self._last + 1:
            # Another replica's events, or this one's published out of turn (the commits of one
            # SQLite group resume one by one; tasks on PostgreSQL commit concurrently), come
            # between: read them in order from the store, where every committed event is.
            if events[-1].sequence > self._last:
                await self._catch_up()
            return
        self._append(events)
        self._wake()

    def _append(self, events: Sequence[QosEvent]) -> None:
        self._recent.extend(events)
        self._last = events[-1].sequence

    async def _catch_up(self) -> None:
        """Read every committed event after the newest one this hub has, into the window."""
        async with self._catching_up:
            while True:
                read = await self._store.events_after(self._last, _BATCH)
                # (A publish that followed the window while the store was read appended some.)
                events = [event for event in read if event.sequence > self._last]
                if events:
                    if events[0].sequence != self._last + 1:
                        # Pruned past this hub (it is behind by more than retention): restart the
                        # window there; watchers behind it get CURSOR_EXPIRED from the store.
                        self._recent.clear()
                    self._append(events)
                    self._wake()
                if len(read) < _BATCH:
                    break

    async def _follow(self) -> None:
        """Catch up whenever the store says another replica may have committed."""
        async for _ in self._store.changes():
            try:
                await self._catch_up()
            except Exception:  # the store may be unreachable for a while; the next change retries
                log.warning("could not read other replicas' events; trying again", exc_info=True)

    async def close(self) -> None:
        """Ends every watch (they raise SHUTTING_DOWN so clients reconnect and resume)."""
        self._closed = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, set()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    async def check_cursor(self, after: int) -> None:
        bounds = await self._store.event_bounds()
        if after < bounds.pruned_through:
            raise ServiceError(
                Reason.ERROR_REASON_CURSOR_EXPIRED,
                f"events up to {bounds.pruned_through} are no longer retained; cursor {after} "
                "cannot be resumed without a gap",
                metadata={"after_sequence": str(after), "oldest_available": str(bounds.pruned_through + 1)},
            )
        if after > bounds.last:
            raise ServiceError(
                Reason.ERROR_REASON_CURSOR_UNKNOWN,
                f"cursor {after} is beyond the newest event {bounds.last} this server has stored",
                metadata={"after_sequence": str(after), "last_sequence": str(bounds.last)},
            )

    async def _read(self, after: int) -> list[QosEvent]:
        recent = self._recent
        if recent and recent[0].sequence <= after + 1:
            start = after + 1 - recent[0].sequence
            return [recent[i] for i in range(start, min(len(recent), start + _BATCH))]
        events = await self._store.events_after(after, _BATCH)
        following = events[0].sequence if events else self._last + 1
        if following != after + 1:
            # Pruned while this watcher was behind: a gap would be silent loss, so say so. That
            # includes nothing left at all after the cursor, which would otherwise send the watch
            # back here at once, forever, without ever yielding the event loop.
            await self.check_cursor(after)
        return events

    async def start_cursor(self, after: int | None) -> int:
        """Where a watch starts: after `after` (checked against retention), after the oldest
        retained event when 0, or after the newest event when None ("from now")."""
        if after is None:
            return self._last
        if after == 0:
            # 0 asks for everything still retained (callqos_service.proto), not for event 1,
            # which retention prunes first.
            return (await self._store.event_bounds()).pruned_through
        await self.check_cursor(after)
        return after

    async def watch(
        self,
        cursor: int,
        accept: Callable[[QosEvent], bool],
        *,
        tenant: str,
        passed: Callable[[int], None] | None = None,
    ) -> AsyncIterator[QosEvent]:
        """Every accepted event of `tenant` with sequence > `cursor`, in order, until the hub
        closes. The tenant is the watcher's, as authentication established it: a watcher never
        receives another tenant's events, whatever filter it sent. `passed(sequence)` is told of
        every event the watch gets past, delivered or not (how the server tells a stalled watcher
        from a filtering one, see `watchers`)."""
        while True:
            if self._closed:
                raise ServiceError(
                    Reason.ERROR_REASON_SHUTTING_DOWN, "server is shutting down; resume from your last sequence"
                )
            events = await self._read(cursor)
            if events:
                for event in events:
                    cursor = event.sequence
                    if passed is not None:
                        passed(cursor)
                    if (event.tenant or DEFAULT_TENANT) == tenant and accept(event):
                        yield event
                continue
            if self._closed or self._last > cursor:
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.add(waiter)
            try:
                await waiter
            finally:
                self._waiting.discard(waiter)
