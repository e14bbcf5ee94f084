"""The event hub's window arithmetic (events.py) against a real in-memory SqliteStore: a watcher
reads from the in-memory window of the newest events when its cursor is inside it, from the store
when it is behind, and across the two when it straddles them — always every event after its
cursor, in order, once (conformance/SPEC.md WATCH-1, WATCH-2). Cursors beyond the newest event
or older than retention are refused, and a watcher overtaken by pruning is told so instead of
being left behind a gap (WATCH-6, WATCH-7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callqos.server import events
from callqos.server.errors import Reason, ServiceError
from callqos.server.events import EventHub
from callqos.server.store.sqlite import MEMORY, SqliteStore
from callqos.v1 import call_pb2, event_pb2

QosEvent = event_pb2.QosEvent
EVERYTHING: Callable[[QosEvent], bool] = lambda _event: True  # noqa: E731
# Reads of the store a watcher may make before the test calls it a loop that never ends.
READ_LIMIT = 1000


class CountingStore(SqliteStore):
    """The real in-memory store, counting reads so a test can tell where events came from."""

    def __init__(self) -> None:
        super().__init__(MEMORY)
        self.reads = 0

    async def events_after(self, sequence: int, limit: int) -> list[QosEvent]:
        self.reads += 1
        if self.reads > READ_LIMIT:
            raise AssertionError(f"the hub read the store {READ_LIMIT} times after cursor {sequence} without progress")
        return await super().events_after(sequence, limit)


async def commit(store: SqliteStore, count: int) -> list[QosEvent]:
    """`count` events, one call each, committed and numbered by the store."""
    numbered: list[QosEvent] = []
    for _ in range(count):
        n = (await store.event_bounds()).last + 1
        call = call_pb2.Call(name=f"calls/c{n}", provider="providers/p", state=call_pb2.Call.State.STATE_CONNECTED)
        event = QosEvent(call=call.name, type=event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED)
        numbered += await store.commit(call, [event])
    return numbered


async def hub_with(before: int, after: int, window: int) -> tuple[CountingStore, EventHub]:
    """A hub started over `before` stored events, then given `after` more as the service would:
    committed, then published."""
    store = CountingStore()
    await commit(store, before)
    hub = EventHub(store, window=window)
    await hub.start()
    for _ in range(after):
        await hub.publish(await commit(store, 1))
    store.reads = 0
    return store, hub


async def take(hub: EventHub, cursor: int, count: int) -> list[int]:
    """The sequences of the first `count` events a watcher from `cursor` receives."""
    got: list[int] = []
    if count == 0:
        return got
    stream = hub.watch(cursor, EVERYTHING, tenant="default")
    try:
        async with asyncio.timeout(5):
            async for event in stream:
                got.append(event.sequence)
                if len(got) == count:
                    break
    finally:
        await stream.aclose()
    return got


async def test_a_cursor_inside_the_window_reads_from_memory() -> None:
    store, hub = await hub_with(before=0, after=10, window=4)  # the window holds 7..10
    assert await take(hub, 7, 3) == [8, 9, 10]
    assert await take(hub, 6, 4) == [7, 8, 9, 10]
    assert store.reads == 0


async def test_a_cursor_behind_the_window_reads_from_the_store() -> None:
    store, hub = await hub_with(before=8, after=4, window=4)  # 1..8 stored before start, window 9..12
    assert await take(hub, 2, 10) == list(range(3, 13))
    assert store.reads == 1


async def test_a_watcher_straddling_store_and_window_gets_every_event_once() -> None:
    store, hub = await hub_with(before=0, after=300, window=100)  # window 201..300, store batches of 256
    assert await take(hub, 0, 300) == list(range(1, 301))
    assert store.reads == 1  # 1..256 from the store, 257..300 from the window


@settings(max_examples=60, deadline=None)
@given(
    before=st.integers(0, 30),
    after=st.integers(0, 30),
    window=st.integers(1, 12),
    batch=st.integers(1, 7),
    data=st.data(),
)
def test_every_cursor_gets_exactly_the_events_after_it(
    before: int, after: int, window: int, batch: int, data: st.DataObject
) -> None:
    last = before + after
    cursor = data.draw(st.integers(0, last), label="cursor")

    async def scenario() -> list[int]:
        _store, hub = await hub_with(before, after, window)
        return await take(hub, cursor, last - cursor)

    with mock.patch.object(events, "_BATCH", batch):  # small store reads: many batch boundaries
        assert asyncio.run(scenario()) == list(range(cursor + 1, last + 1))


async def test_where_a_watch_starts_and_which_cursors_are_refused() -> None:
    store, hub = await hub_with(before=6, after=4, window=3)
    assert await hub.start_cursor(None) == 10  # "from now"
    assert await hub.start_cursor(0) == 0
    assert await hub.start_cursor(10) == 10
    with pytest.raises(ServiceError) as unknown:
        await hub.start_cursor(11)
    assert unknown.value.reason == Reason.ERROR_REASON_CURSOR_UNKNOWN
    assert unknown.value.metadata == {"after_sequence": "11", "last_sequence": "10"}

    await store.prune_events(keep_last=3, older_than_us=0)  # 1..7 gone
    assert await hub.start_cursor(7) == 7
    with pytest.raises(ServiceError) as expired:
        await hub.start_cursor(6)
    assert expired.value.reason == Reason.ERROR_REASON_CURSOR_EXPIRED
    assert expired.value.metadata["oldest_available"] == "8"


async def test_cursor_zero_means_everything_still_retained_even_after_pruning() -> None:
    # callqos_service.proto: "0: everything still retained" — not "from event 1", which pruning
    # removes first.
    store, hub = await hub_with(before=6, after=4, window=3)
    await store.prune_events(keep_last=3, older_than_us=0)  # 1..7 gone, 8..10 kept
    start = await hub.start_cursor(0)
    assert start == 7
    assert await take(hub, start, 3) == [8, 9, 10]


async def test_pruning_that_overtakes_a_watcher_reading_behind_is_reported() -> None:
    store, hub = await hub_with(before=10, after=0, window=4)
    with mock.patch.object(events, "_BATCH", 3):
        stream = hub.watch(2, EVERYTHING, tenant="default")
        assert [(await anext(stream)).sequence for _ in range(3)] == [3, 4, 5]
        await store.prune_events(keep_last=2, older_than_us=0)  # 1..8 gone: 6..8 will never come
        with pytest.raises(ServiceError) as expired:
            await anext(stream)
    assert expired.value.reason == Reason.ERROR_REASON_CURSOR_EXPIRED


async def test_pruning_every_event_after_a_watcher_is_reported_too() -> None:
    # After a restart the window is empty; the retention age then prunes every stored event while a
    # watcher is still behind. Nothing after its cursor is left to read: that is an expired cursor,
    # not a reason to read the store again and again.
    store, hub = await hub_with(before=10, after=0, window=4)
    stream = hub.watch(2, EVERYTHING, tenant="default")
    await store.prune_events(keep_last=0, older_than_us=time.time_ns() // 1000 + 10**9)
    with pytest.raises(ServiceError) as expired:
        await anext(stream)
    assert expired.value.reason == Reason.ERROR_REASON_CURSOR_EXPIRED
    assert store.reads <= 2


async def test_a_waiting_watcher_wakes_for_new_events_and_ends_at_shutdown() -> None:
    store, hub = await hub_with(before=2, after=1, window=4)
    reader = asyncio.create_task(take(hub, 3, 2))
    await asyncio.sleep(0.01)
    assert not reader.done()  # nothing after 3 yet: it waits, it does not poll
    reads_while_waiting = store.reads
    await hub.publish(await commit(store, 2))
    assert await reader == [4, 5]
    assert reads_while_waiting <= 1

    stream = hub.watch(5, EVERYTHING, tenant="default")
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    await hub.close()
    with pytest.raises(ServiceError) as closed:
        await waiting
    assert closed.value.reason == Reason.ERROR_REASON_SHUTTING_DOWN


async def test_the_filter_skips_events_but_not_the_cursor() -> None:
    _store, hub = await hub_with(before=3, after=3, window=2)
    stream = hub.watch(0, lambda event: event.sequence % 2 == 1, tenant="default")
    async with asyncio.timeout(5):
        odd = [(await anext(stream)).sequence for _ in range(3)]
    await stream.aclose()
    assert odd == [1, 3, 5]
