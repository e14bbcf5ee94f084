"""Group commit (store/group.py) against real SQLite files: commits made at the same moment share
one transaction, and still each is acknowledged only once it is durable — alone when it fails
(a quota exceeded), never when its group's transaction fails (a full disk) — with the events of
every acknowledged commit numbered consecutively, none lost and none reused (store/base.py's
guarantees), whatever mix of commits and failures meets in a group."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callqos.server.store.base import QuotaExceededError, UsageLimits
from callqos.server.store.sqlite import SqliteStore
from callqos.v1 import call_pb2, event_pb2

State = call_pb2.Call.State
QosEvent = event_pb2.QosEvent
GRANTED = event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED


def connected(name: str, tenant: str = "default") -> call_pb2.Call:
    return call_pb2.Call(name=name, provider="providers/p", state=State.STATE_CONNECTED, tenant=tenant)


def events_of(call: call_pb2.Call, count: int = 1) -> list[QosEvent]:
    return [QosEvent(call=call.name, tenant=call.tenant, type=GRANTED) for _ in range(count)]


async def test_commits_made_together_share_one_transaction_and_number_their_events_in_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "callqos.db")
    calls = [connected(f"calls/c{i}") for i in range(20)]
    results = await asyncio.gather(*(store.commit(call, events_of(call, 2)) for call in calls))
    assert store._committer.groups == 1 and store._committer.writes == 20
    sequences = [event.sequence for numbered in results for event in numbered]
    assert sequences == list(range(1, 41))  # in the order they were made, none skipped
    for call, numbered in zip(calls, results, strict=True):
        assert {event.call for event in numbered} == {call.name}
    await store.close()
    reopened = SqliteStore(tmp_path / "callqos.db")  # and all of it is in the file
    assert [event.sequence for event in await reopened.events_after(0, 100)] == list(range(1, 41))
    assert (await reopened.event_bounds()).last == 40
    await reopened.close()


async def test_a_commit_over_quota_fails_alone_and_the_rest_of_its_group_commits(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "callqos.db")
    limits = UsageLimits("acme", active_calls=2)
    calls = [connected(f"calls/q{i}", "acme") for i in range(4)]
    outcomes = await asyncio.gather(
        *(store.commit(call, events_of(call), limits=limits) for call in calls), return_exceptions=True
    )
    assert [isinstance(outcome, QuotaExceededError) for outcome in outcomes] == [False, False, True, True]
    assert [event.sequence for outcome in outcomes[:2] for event in outcome] == [1, 2]  # type: ignore[union-attr]
    assert [event.call for event in await store.events_after(0, 10)] == ["calls/q0", "calls/q1"]
    assert await store.get_call("calls/q2") is None
    assert (await store.usage("acme")).active_calls == 2
    await store.close()


async def test_when_the_groups_transaction_fails_no_commit_of_it_is_acknowledged(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "callqos.db")
    first = connected("calls/first")
    await store.commit(first, events_of(first))
    # A database that cannot grow: the group's writes fill it (SQLITE_FULL, as on a full disk).
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    big = [connected(f"calls/big{i}") for i in range(30)]
    for call in big:
        call.destination = "sip:" + "x" * 3000
    outcomes = await asyncio.gather(*(store.commit(call, events_of(call)) for call in big), return_exceptions=True)
    assert all(isinstance(outcome, sqlite3.Error) for outcome in outcomes)
    assert [event.call for event in await store.events_after(0, 100)] == ["calls/first"]
    assert [await store.get_call(call.name) for call in big] == [None] * len(big)
    assert (await store.event_bounds()).last == 1
    # The numbers the failed group took are free again: the next event is 2.
    store._db.execute("PRAGMA max_page_count = 1073741823")
    after = connected("calls/after")
    assert [event.sequence for event in await store.commit(after, events_of(after))] == [2]
    await store.close()


# A commit: how many events, and whether it goes over the tenant's quota of calls (fails alone).
Commit = tuple[int, bool]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.lists(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=8), max_size=6))
def test_whatever_meets_in_a_group_every_acknowledged_event_is_stored_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, groups: list[list[Commit]]
) -> None:
    asyncio.run(_run_groups(tmp_path_factory.mktemp("group") / "callqos.db", groups))


async def _run_groups(path: Path, groups: list[list[Commit]]) -> None:
    store = SqliteStore(path)
    limits = UsageLimits("full", active_calls=1)
    blocker = connected("calls/blocker", "full")  # the tenant "full" is at its quota of one call
    await store.commit(blocker, [], limits=limits)
    acknowledged: list[QosEvent] = []
    made = 0
    for group in groups:
        commits = []
        for count, over_quota in group:
            made += 1
            call = connected(f"calls/m{made}", "full" if over_quota else "default")
            commits.append(store.commit(call, events_of(call, count), limits=limits if over_quota else None))
        outcomes = await asyncio.gather(*commits, return_exceptions=True)
        for (count, over_quota), outcome in zip(group, outcomes, strict=True):
            if over_quota:
                assert isinstance(outcome, QuotaExceededError)
            else:
                assert isinstance(outcome, list) and len(outcome) == count
                acknowledged += outcome
    assert [event.sequence for event in acknowledged] == list(range(1, len(acknowledged) + 1))
    stored = await store.events_after(0, 1000)
    assert [(e.sequence, e.call) for e in stored] == [(e.sequence, e.call) for e in acknowledged]
    assert (await store.event_bounds()).last == len(acknowledged)
    await store.close()
