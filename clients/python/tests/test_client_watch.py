"""watch(): resume from a cursor, and follow across a killed-and-restarted server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from callqos.client import (
    AsyncClient,
    Client,
    CursorExpiredError,
    CursorUnknownError,
    EventStream,
    InvalidRequestError,
    ResumePolicy,
    TooManyWatchersError,
    UnavailableError,
    controlled_load,
)
from callqos.v1 import event_pb2

QOS_GRANTED = event_pb2.QOS_EVENT_TYPE_QOS_GRANTED
CALL_DISCONNECTED = event_pb2.QOS_EVENT_TYPE_CALL_DISCONNECTED


class Collector:
    """Iterates an EventStream on a thread, keeping every event it yields."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.events: list[event_pb2.QosEvent] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except BaseException as exc:
            self.error = exc

    def wait_for(self, predicate: Callable[[list[event_pb2.QosEvent]], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            if predicate(self.events):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; got {[(e.sequence, e.type, e.call) for e in self.events]}")

    def close(self) -> None:
        self.stream.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "close() did not end the iteration"


def _calls_seen(events: list[event_pb2.QosEvent]) -> set[str]:
    return {e.call for e in events}


def _read_all(target: str, after: int, until: int) -> list[event_pb2.QosEvent]:
    """Every event with after < sequence <= until, read by a fresh watcher."""
    with Client(target) as reader:
        collector = Collector(reader.watch(after))
        try:
            collector.wait_for(lambda evs: bool(evs) and evs[-1].sequence >= until)
        finally:
            collector.close()
        return [e for e in collector.events if e.sequence <= until]


def _assert_gapless_and_unique(events: list[event_pb2.QosEvent], reference: list[event_pb2.QosEvent]) -> None:
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), f"duplicate or out of order: {sequences}"
    assert sequences == [e.sequence for e in reference], "an event was lost"
    assert [e.SerializeToString(deterministic=True) for e in events] == [
        e.SerializeToString(deterministic=True) for e in reference
    ]


def test_resume_from_a_cursor_continues_exactly(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(client.watch())
    try:
        # A "new events only" watch has no cursor until its first event: make one first.
        time.sleep(0.3)
        calls = [client.make_call(f"sip:w{i}@example.com", sending=controlled_load(1_000)) for i in range(3)]
        collector.wait_for(lambda evs: {c.name for c in calls} <= _calls_seen(evs))
        for call in calls:
            client.drop(call.name)
        collector.wait_for(
            lambda evs: sum(e.type == CALL_DISCONNECTED and e.call in {c.name for c in calls} for e in evs) == 3
        )
    finally:
        collector.close()
    events = collector.events
    assert collector.stream.last_sequence == events[-1].sequence
    middle = events[len(events) // 2].sequence
    resumed = _read_all(server.target, middle, events[-1].sequence)
    _assert_gapless_and_unique(resumed, [e for e in events if e.sequence > middle])


def test_watch_filters_by_call_and_type(client: Client) -> None:
    first = client.make_call("sip:f1@example.com")
    other = client.make_call("sip:f2@example.com")
    try:
        stream = client.watch(0, call=first.name, types=["qos-granted", "call-disconnected"])
        collector = Collector(stream)
        client.drop(first.name)
        collector.wait_for(lambda evs: any(e.type == CALL_DISCONNECTED for e in evs))
        collector.close()
        assert {e.call for e in collector.events} == {first.name}
        assert {e.type for e in collector.events} <= {QOS_GRANTED, CALL_DISCONNECTED}
    finally:
        client.drop(other.name)


def test_non_retryable_watch_error_is_raised(client: Client) -> None:
    with pytest.raises(InvalidRequestError):
        next(client.watch(0, call="calls/Not A Valid Name!"))


def test_watch_survives_sigkill_and_restart_without_loss_or_duplicates(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(storage="sqlite")
    with Client(server.target, principal="alice") as client:
        collector = Collector(client.watch(0, resume=ResumePolicy(max_backoff=0.5, give_up_after=60)))
        try:
            before = [client.make_call(f"sip:k{i}@example.com", sending=controlled_load(1_000)) for i in range(3)]
            collector.wait_for(lambda evs: {c.name for c in before} <= _calls_seen(evs))
            server.kill()
            server.start()  # same port, same data dir
            after = [client.make_call(f"sip:r{i}@example.com", sending=controlled_load(1_000)) for i in range(3)]
            client.drop(before[0].name)
            collector.wait_for(
                lambda evs: (
                    {c.name for c in after} <= _calls_seen(evs)
                    and any(e.type == CALL_DISCONNECTED and e.call == before[0].name for e in evs)
                )
            )
            assert collector.stream.reconnects >= 1
            # Every call survived the kill.
            for call in before[1:]:
                assert client.get_call(call.name).state == call.state
        finally:
            collector.close()
        events = collector.events
        reference = _read_all(server.target, 0, events[-1].sequence)
        _assert_gapless_and_unique(events, reference)


async def test_async_watch_resumes_across_graceful_shutdown(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(storage="sqlite")
    async with AsyncClient(server.target, principal="alice") as client:
        stream = client.watch(0, resume=ResumePolicy(max_backoff=0.5))
        first = await client.make_call("sip:a1@example.com")
        seen: list[event_pb2.QosEvent] = []
        async for event in stream:
            seen.append(event)
            if event.call == first.name:
                break
        # SIGTERM: the server ends the stream with UNAVAILABLE / SHUTTING_DOWN; the stream
        # reconnects once the server is back.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        second = await client.make_call("sip:a2@example.com")
        async for event in stream:
            seen.append(event)
            if event.call == second.name:
                break
        await stream.aclose()
        assert stream.reconnects >= 1
    reference = _read_all(server.target, 0, seen[-1].sequence)
    _assert_gapless_and_unique(seen, reference)


def test_cursor_older_than_retention_raises_cursor_expired(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(storage="sqlite", event_retention_count=2)
    with Client(server.target) as client:
        for i in range(3):
            client.drop(client.make_call(f"sip:old{i}@example.com").name)
        # The server prunes on a timer and when it starts: restart to prune now.
        server.restart()
        deadline = time.monotonic() + 10
        while True:
            try:
                first = next(client.watch(1))
            except CursorExpiredError as expired:
                assert expired.code == grpc.StatusCode.OUT_OF_RANGE
                break
            assert time.monotonic() < deadline, f"cursor 1 still served (got #{first.sequence})"
            time.sleep(0.2)
        with pytest.raises(CursorUnknownError):
            next(client.watch(1_000_000))


def test_too_many_watchers_is_not_retried(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(max_watchers=1)
    with Client(server.target) as client:
        first = Collector(client.watch())
        try:
            time.sleep(0.3)
            with pytest.raises(TooManyWatchersError):
                next(client.watch())
        finally:
            first.close()


def test_watch_gives_up_when_the_server_stays_down(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    with Client(server.target) as client:
        server.kill()
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            next(client.watch(0, resume=ResumePolicy(max_backoff=0.2, give_up_after=1.0)))
        assert time.monotonic() - started < 15


async def test_watch_from_now_loses_nothing_when_broken_before_its_first_event(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(storage="sqlite")
    async with AsyncClient(server.target, principal="alice") as client:
        await client.make_call("sip:before@example.com")
        stream = client.watch(resume=ResumePolicy(max_backoff=0.5))  # from now: no cursor given
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.5)  # the stream is open and has told its start, no event yet
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        during = await client.make_call("sip:during@example.com")
        event = await asyncio.wait_for(first, 20)
        await stream.aclose()
        # The call made while the watch was reconnecting is delivered, and nothing older.
        assert event.call == during.name
        assert event.sequence == 2
