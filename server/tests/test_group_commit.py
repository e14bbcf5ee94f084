"""Group commit (store/group.py) against real SQLite files: commits made at the same moment share
one transaction, and still each is acknowledged only once it is durable — alone when it fails
(a quota exceeded), never when its group's transaction fails (a full disk) — with the events of
every acknowledged commit numbered consecutively, none lost and none reused (store/base.py's
guarantees), whatever mix of commits and failures meets in a group. And, through a real server,
a group whose commit fails has every call in it compensated by the ledger (issue #11) and every
request answered UNAVAILABLE / STORAGE_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_testkit import details, make_request, qos, reason, reserved
from test_ledger_faults import serving
from test_postgres_store import allow_connections

from callqos.server.hosting import ProviderHostView
from callqos.server.providers import AdmissionRequest, Decision, ProviderChange, ProviderHost, Restored
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.store.base import QuotaExceededError, StoreUnavailable, UsageLimits
from callqos.server.store.sqlite import SqliteStore
from callqos.server.testing import PostgresServer
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

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
    # Each commit of the group fails with the storage's failure, named for the caller (who
    # compensates and answers UNAVAILABLE / STORAGE_UNAVAILABLE, issue #11).
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert {outcome.cause for outcome in outcomes if isinstance(outcome, StoreUnavailable)} == {
        "disk is full (SQLITE_FULL)"
    }
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


# -- a failed group commit, seen from clients of a real server (issue #11's CALL-5 with #17's groups)
class Gated(ReferenceProvider):
    """The reference provider, except that while `gate` is set up its admissions and renegotiations
    wait for it: released together, the calls they decide reach the store in the same turn of the
    loop, so that their commits share one group."""

    gate: asyncio.Event | None = None
    waiting = 0

    async def _through_gate(self) -> None:
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()

    async def admit(self, request: AdmissionRequest) -> Decision:
        await self._through_gate()
        return await super().admit(request)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        await self._through_gate()
        return await super().renegotiate(request)


async def decided_together(
    stub: svc_grpc.CallQosServiceStub, provider: Gated, kept: call_pb2.Call, *, creates: int
) -> list[asyncio.Future[Any]]:
    """`creates` CreateCalls and a renegotiation of `kept`, sent at once and held at `provider`'s
    gate until every one of them is there (the gate is then set by the caller)."""
    provider.gate, provider.waiting = asyncio.Event(), 0
    sent: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(stub.CreateCall(make_request(qos(50_000), destination=f"sip:new{i}@example.test")))
        for i in range(creates)
    ]
    sent.append(
        asyncio.ensure_future(
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=kept.name, qos=qos(600_000, recv_rate=100_000)))
        )
    )
    deadline = time.monotonic() + 20
    while provider.waiting < len(sent):
        assert time.monotonic() < deadline, f"only {provider.waiting} of {len(sent)} decisions reached the provider"
        await asyncio.sleep(0.01)
    return sent


def answered_storage_unavailable(outcomes: Sequence[object], cause: str) -> None:
    """Each request answered with the retryable status, naming the cause."""
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE and reason(outcome) == "STORAGE_UNAVAILABLE"
        assert cause in details(outcome)["ErrorInfo"].metadata["cause"]


def disk_full() -> sqlite3.Error:
    """The very error SQLite raises when the file cannot grow (SQLITE_FULL), made for real."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    db.execute("PRAGMA max_page_count = 3")
    try:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 4000,))
    except sqlite3.Error as error:
        assert error.sqlite_errorcode == 13  # SQLITE_FULL
        return error
    finally:
        db.close()
    raise AssertionError("a database of three pages took 400 KB")


class CommitFails:
    """The store's connection as its group committer sees it, except that COMMIT fails with
    `error` (the writes of the group went in; the disk refused the commit)."""

    def __init__(self, db: sqlite3.Connection, error: sqlite3.Error) -> None:
        self._db, self._error = db, error

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise self._error
        return self._db.execute(sql, *args)


async def test_a_group_whose_commit_fails_compensates_every_call_in_it_and_answers_each_retryably(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, providers={"reference": {"plugin": f"{__name__}:Gated"}}) as served:
        stub, store, provider = served.stub, served.server.running.store, served.provider
        kept = await stub.CreateCall(make_request(qos(300_000, recv_rate=100_000), destination="sip:kept@example.test"))
        victim = await stub.CreateCall(make_request(qos(200_000), destination="sip:victim@example.test"))
        before_link = await reserved(stub)
        before_holdings = {holding.call: holding for holding in await provider.reservations()}
        before_events = (await store.event_bounds()).last
        committer = store._committer
        groups, writes = committer.groups, committer.writes

        # Every COMMIT fails as on a full disk; eight admissions and a renegotiation decided
        # together, and a drop, meet in the group(s) that fail.
        committer._db = CommitFails(committer._db, disk_full())
        decisions = await decided_together(stub, provider, kept, creates=8)
        drop = asyncio.ensure_future(stub.DropCall(svc.DropCallRequest(name=victim.name)))
        provider.gate.set()
        outcomes = await asyncio.gather(*decisions, drop, return_exceptions=True)
        answered_storage_unavailable(outcomes, "disk is full (SQLITE_FULL)")
        # The ten commits went through the group committer, and the eight admissions and the
        # renegotiation let through together shared a group: one failed group held several calls.
        assert committer.writes - writes == 10
        assert committer.groups - groups < 10
        # Every member compensated: each fresh admission released, the renegotiation put back, the
        # drop released nothing (it releases only after its commit); none of it acknowledged.
        assert await reserved(stub) == before_link
        assert {holding.call: holding for holding in await provider.reservations()} == before_holdings
        assert (await store.event_bounds()).last == before_events
        assert await stub.GetCall(svc.GetCallRequest(name=kept.name)) == kept
        assert await stub.GetCall(svc.GetCallRequest(name=victim.name)) == victim
        page = await stub.ListCalls(svc.ListCallsRequest(page_size=100))
        assert sorted(call.name for call in page.calls) == sorted([kept.name, victim.name])

        # The disk recovers: the same requests go through, without a restart.
        committer._db = store._db
        provider.gate = None
        made = await stub.CreateCall(make_request(qos(50_000), destination="sip:after@example.test"))
        assert made.state == State.STATE_CONNECTED
        await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=kept.name, qos=qos(600_000, recv_rate=100_000)))
        await stub.DropCall(svc.DropCallRequest(name=victim.name))
        assert await reserved(stub) == (650_000, 100_000)
        assert (await store.event_bounds()).last > before_events


# -- the same on PostgreSQL, which commits without store.group (each commit its own transaction) --
class GatedOwnBooks(Gated):
    """`Gated` keeping its books in memory on PostgreSQL too (the host's shared ledger declined),
    so that its decisions and releases go on while the database is away."""

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        assert isinstance(host, ProviderHostView)
        return await super().start(dataclasses.replace(host, ledger=None), restored)


async def test_on_postgresql_a_commit_that_meets_the_database_away_is_compensated_and_answered_the_same(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """PostgreSQL does not group commits, but a decision whose commit the storage cannot take is
    handled as on SQLite: the provider's fresh reservation released, a renegotiation put back,
    nothing acknowledged, each request answered UNAVAILABLE / STORAGE_UNAVAILABLE naming the
    cause; with the database back, the same requests go through without a restart."""
    url = postgres.database()
    providers = {"reference": {"plugin": f"{__name__}:GatedOwnBooks"}}
    async with serving(tmp_path, storage="postgresql", database_url=url, providers=providers) as served:
        stub, store, provider = served.stub, served.server.running.store, served.provider
        kept = await stub.CreateCall(make_request(qos(300_000, recv_rate=100_000), destination="sip:kept@example.test"))
        before_link = await reserved(stub)
        before_holdings = {holding.call: holding for holding in await provider.reservations()}
        before_events = (await store.event_bounds()).last

        decisions = await decided_together(stub, provider, kept, creates=3)
        await allow_connections(postgres, url, False)  # decided, not yet recorded: the database goes away
        provider.gate.set()
        outcomes = await asyncio.gather(*decisions, return_exceptions=True)
        answered_storage_unavailable(outcomes, "the database cannot be reached")
        assert await reserved(stub) == before_link  # every decision undone at the provider
        assert {holding.call: holding for holding in await provider.reservations()} == before_holdings

        await allow_connections(postgres, url, True)
        provider.gate = None
        deadline = time.monotonic() + 20
        while True:  # the pool reconnects by itself
            try:
                assert await stub.GetCall(svc.GetCallRequest(name=kept.name)) == kept
                break
            except grpc.aio.AioRpcError as error:
                assert reason(error) == "STORAGE_UNAVAILABLE" and time.monotonic() < deadline, error
                await asyncio.sleep(0.2)
        assert (await store.event_bounds()).last == before_events  # nothing of it was recorded
        page = await stub.ListCalls(svc.ListCallsRequest(page_size=100))
        assert [call.name for call in page.calls] == [kept.name]
        made = await stub.CreateCall(make_request(qos(50_000), destination="sip:after@example.test"))
        assert made.state == State.STATE_CONNECTED
        await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=kept.name, qos=qos(600_000, recv_rate=100_000)))
        assert await reserved(stub) == (650_000, 100_000)
