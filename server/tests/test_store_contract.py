"""The storage contract (store/base.py), one suite run against both backends: a SQLite file and a
real PostgreSQL database (the session's throwaway cluster). That PostgreSQL "slots in" behind the
contract is what this file shows: every test runs, unchanged, on each.

What it holds them to: a commit stores its calls, lines, events and idempotency record in one
transaction, or nothing (a refused quota, a second open line for an address); events are
numbered consecutively, never reused, also across a reopen; reads, listings and pages are per
tenant; usage counts what connected calls hold (exactly, at the largest rates too); retention
prunes by count and by age and says how far it pruned; concurrent commits on one store get
distinct, gap-free numbers. And the admission ledger's bookkeeping (#11): a release owed is
written in the commit's own transaction (nothing when the commit is refused), updated in place,
listed oldest first, and forgotten with the call's next commit (`released`) or `forget_release`;
a capacity kept from UpdateLink, with the configured one it overrode, survives a reopen, up to
the largest uint64. And the lease index (#14) the lease timer reads: every call's live lease —
CONNECTED or RINGBACK, leased, not the answering leg of a pair — whatever its tenant, earliest
first, moved or dropped by the call's next commit, across a reopen, at any instant a Timestamp
can hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callqos.server.store.base import (
    AddressInUseError,
    IdempotencyRecord,
    LinkCapacity,
    PendingRelease,
    QuotaExceededError,
    Store,
    Usage,
    UsageLimits,
    lease_deadline_us,
)
from callqos.server.store.sqlite import SqliteStore
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2

Call = call_pb2.Call
State = Call.State
QosEvent = event_pb2.QosEvent
EventType = event_pb2.QosEventType
Opener = Callable[[], Awaitable[Store]]

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the test's store: each call a new connection to the same data (a reopen)."""
    if request.param == "sqlite":
        path = tmp_path / "callqos.db"

        async def sqlite() -> Store:
            return SqliteStore(path)

        return sqlite
    from callqos.server.store.postgres import PostgresStore

    url = request.getfixturevalue("database_url")

    async def postgresql() -> Store:
        return await PostgresStore.open(url, pool_size=4)

    return postgresql


@pytest.fixture
async def store(open_store: Opener) -> AsyncIterator[Store]:
    opened = await open_store()
    try:
        yield opened
    finally:
        await opened.close()


def qos(sending: int, receiving: int = 0) -> flowspec_pb2.QosSpec:
    spec = flowspec_pb2.QosSpec()
    for direction, rate in (("sending", sending), ("receiving", receiving)):
        flow = getattr(spec, direction)
        flow.service_type = flowspec_pb2.ServiceType.SERVICE_TYPE_CONTROLLED_LOAD
        flow.token_rate_bytes_per_second = rate
    return spec


def call(
    name: str,
    *,
    state: int = State.STATE_CONNECTED,
    tenant: str = "default",
    provider: str = "providers/reference",
    rate: int = 0,
    line: str = "",
) -> Call:
    made = Call(name=f"calls/{name}", state=state, tenant=tenant, provider=provider, line=line)
    made.granted_qos.CopyFrom(qos(rate))
    return made


def event(of: Call, kind: int = EventType.QOS_EVENT_TYPE_QOS_GRANTED) -> QosEvent:
    return QosEvent(call=of.name, tenant=of.tenant, type=kind, provider=of.provider)


def line(
    name: str, address: str, *, tenant: str = "default", state: int = line_pb2.Line.State.STATE_OPEN
) -> line_pb2.Line:
    return line_pb2.Line(name=f"lines/{name}", address=address, owner="bob", state=state, tenant=tenant)


def record(request_id: str, of: str, *, tenant: str = "default") -> IdempotencyRecord:
    return IdempotencyRecord(request_id, "alice", "CreateCall", "f" * 64, of, b"", tenant)


async def sequences(store: Store, after: int = 0) -> list[int]:
    return [e.sequence for e in await store.events_after(after, 10_000)]


# -- one transaction --------------------------------------------------------------------------
async def test_a_commit_stores_calls_events_and_record_together_numbered_from_one(store: Store) -> None:
    first, second = call("a", rate=100), call("b", state=State.STATE_DISCONNECTED)
    numbered = await store.commit(
        [first, second],
        [event(first), event(second, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED)],
        record("r1", first.name),
    )
    assert [e.sequence for e in numbered] == [1, 2]
    assert await store.events_after(0, 10) == numbered
    assert await store.get_call(first.name) == first
    assert await store.get_call(second.name) == second
    assert await store.find_request("r1", "alice") == record("r1", first.name)
    assert (await store.event_bounds()).last == 2
    # Replacing a call keeps one row, and a commit without events takes no number.
    first.state = State.STATE_DISCONNECTED
    assert await store.commit(first, []) == []
    assert await store.get_call(first.name) == first
    assert (await store.event_bounds()).last == 2


async def test_a_refused_quota_stores_nothing_and_takes_no_number(store: Store) -> None:
    await store.commit(call("held", rate=600), [event(call("held"))])
    limits = UsageLimits("default", active_calls=0, reserved_bytes_per_second=1000)
    over = call("over", rate=500)
    with pytest.raises(QuotaExceededError) as refused:
        await store.commit(over, [event(over)], record("r-over", over.name), limits=limits)
    assert refused.value.quotas == ["reserved_bytes_per_second"]
    assert await store.get_call(over.name) is None
    assert await store.find_request("r-over", "alice") is None
    assert await sequences(store) == [1]
    fits = call("fits", rate=400)
    assert [e.sequence for e in await store.commit(fits, [event(fits)], limits=limits)] == [2]
    # Lowering usage is never refused, even over a quota lowered since.
    smaller = UsageLimits("default", active_calls=1)
    fits.state = State.STATE_DISCONNECTED
    await store.commit(fits, [event(fits)], limits=smaller)
    assert await store.usage("default") == Usage(1, 600, 0)


async def test_one_open_line_per_address_and_tenant_and_nothing_stored_beside_a_second(store: Store) -> None:
    await store.commit([], [], lines=[line("one", "sip:bob@example.test")])
    offered = call("offered", state=State.STATE_OFFERING, line="lines/one")
    with pytest.raises(AddressInUseError):
        await store.commit(offered, [event(offered)], lines=[line("two", "sip:bob@example.test")])
    assert await store.get_line("lines/two") is None
    assert await store.get_call(offered.name) is None
    assert await sequences(store) == []
    # Another tenant may open the address; closing the line frees it for its own tenant.
    await store.commit([], [], lines=[line("other", "sip:bob@example.test", tenant="acme")])
    await store.commit([], [], lines=[line("one", "sip:bob@example.test", state=line_pb2.Line.State.STATE_CLOSED)])
    await store.commit([], [], lines=[line("two", "sip:bob@example.test")])
    assert (await store.open_line("sip:bob@example.test", "default")) == line("two", "sip:bob@example.test")
    assert (await store.open_line("sip:bob@example.test", "acme")) == line(
        "other", "sip:bob@example.test", tenant="acme"
    )


async def test_a_second_record_of_a_request_replaces_the_first(store: Store) -> None:
    await store.commit(call("a"), [], record("r", "calls/a"))
    await store.commit(call("a"), [], IdempotencyRecord("r", "alice", "CreateCall", "f" * 64, "calls/a", b"\x08\x05"))
    found = await store.find_request("r", "alice")
    assert found is not None and found.status == b"\x08\x05"


# -- reads per tenant -------------------------------------------------------------------------
async def test_reads_listings_and_pages_are_per_tenant_newest_first(store: Store) -> None:
    for index in range(7):
        tenant = "default" if index % 2 == 0 else "acme"
        state = State.STATE_CONNECTED if index < 5 else State.STATE_DISCONNECTED
        await store.commit(call(f"c{index}", tenant=tenant, state=state, line="lines/l" if index == 4 else ""), [])
    await store.commit([], [], record("r", "calls/c0", tenant="acme"))
    assert await store.find_request("r", "alice", "acme") is not None
    assert await store.find_request("r", "alice", "default") is None

    async def names(**filters: object) -> list[str]:
        got, before = [], 0
        while True:
            page = await store.list_calls(limit=2, before=before, **filters)  # type: ignore[arg-type]
            got += [c.name.removeprefix("calls/") for c in page.calls]
            if not page.next_cursor:
                return got
            before = page.next_cursor

    assert await names(tenant="default", state=None, provider=None) == ["c6", "c4", "c2", "c0"]
    assert await names(tenant="acme", state=None, provider=None) == ["c5", "c3", "c1"]
    assert await names(tenant="default", state=State.STATE_CONNECTED, provider=None) == ["c4", "c2", "c0"]
    assert await names(tenant="default", state=None, provider="providers/none") == []
    assert await names(tenant="default", state=None, provider=None, line="lines/l") == ["c4"]
    assert [c.name for c in await store.connected_calls()] == [f"calls/c{i}" for i in range(5)]
    assert [c.name for c in await store.calls_in_state(State.STATE_DISCONNECTED)] == ["calls/c5", "calls/c6"]

    for index in range(5):
        await store.commit(
            [], [], lines=[line(f"l{index}", f"sip:{index}@x", tenant="acme" if index == 3 else "default")]
        )
    page = await store.list_lines(tenant="default", state=None, address=None, owner=None, limit=3, before=0)
    assert [each.name for each in page.lines] == ["lines/l4", "lines/l2", "lines/l1"]
    rest = await store.list_lines(
        tenant="default", state=None, address=None, owner=None, limit=3, before=page.next_cursor
    )
    assert [each.name for each in rest.lines] == ["lines/l0"] and rest.next_cursor == 0
    assert (await store.get_line("lines/l3")) == line("l3", "sip:3@x", tenant="acme")


async def test_usage_counts_what_connected_calls_hold_once_per_pair(store: Store) -> None:
    caller = call("caller", rate=300)
    caller.peer = "calls/callee"
    callee = call("callee", rate=0)
    callee.direction, callee.peer = Call.Direction.DIRECTION_INCOMING, caller.name
    callee.granted_qos.CopyFrom(qos(0, 300))
    await store.commit(
        [caller, callee, call("alone", rate=200), call("gone", rate=900, state=State.STATE_DISCONNECTED)], []
    )
    assert await store.usage("default") == Usage(active_calls=2, sending=500, receiving=0)
    assert await store.usage("acme") == Usage()


async def test_usage_at_the_largest_rates_is_exact_and_never_overflows(store: Store) -> None:
    """Rates are uint64, database integers int64: each call's rate is stored saturated at the
    int64 maximum, and the sums never overflow, on every backend alike."""
    largest = 2**64 - 1
    await store.commit([call(f"big-{index}", rate=largest) for index in range(3)], [])
    assert await store.usage("default") == Usage(3, 3 * (2**63 - 1), 0)
    await store.commit(call("small", rate=7), [])
    assert (await store.usage("default")).sending == 3 * (2**63 - 1) + 7


# -- the admission ledger's bookkeeping -------------------------------------------------------
def owed(of: Call, attempts: int = 0, error: str = "") -> PendingRelease:
    return PendingRelease(of.name, of.provider, attempts, 1_000 * attempts, error)


async def test_a_release_owed_is_written_with_the_commit_and_forgotten_with_the_next(store: Store) -> None:
    first, second = call("first", state=State.STATE_DISCONNECTED), call("second", state=State.STATE_DISCONNECTED)
    await store.commit(first, [event(first)], owe=owed(first))
    await store.commit(second, [event(second)], owe=owed(second))
    assert await store.pending_releases() == [owed(first), owed(second)]  # oldest first
    # Updated in place (a failed attempt), keeping its place in the order.
    await store.commit(first, [], owe=owed(first, attempts=2, error="provider away"))
    assert await store.pending_releases() == [owed(first, 2, "provider away"), owed(second)]
    # Forgotten with the call's next commit, or on its own; the others stay.
    await store.commit(first, [event(first, EventType.QOS_EVENT_TYPE_RELEASE_COMPLETED)], released=True)
    assert await store.pending_releases() == [owed(second)]
    await store.forget_release(second.name)
    await store.forget_release(second.name)  # harmless again
    assert await store.pending_releases() == []


async def test_a_refused_commit_owes_nothing(store: Store) -> None:
    await store.commit(call("held", rate=600), [])
    over = call("over", rate=500)
    with pytest.raises(QuotaExceededError):
        await store.commit(
            over, [event(over)], owe=owed(over), limits=UsageLimits("default", reserved_bytes_per_second=1000)
        )
    await store.commit([], [], lines=[line("one", "sip:bob@x")])
    offered = call("offered", state=State.STATE_OFFERING)
    with pytest.raises(AddressInUseError):
        await store.commit(offered, [], owe=owed(offered), lines=[line("two", "sip:bob@x")])
    assert await store.pending_releases() == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["owe", "released", "forget", "commit"]), st.integers(0, 4), st.integers(0, 50)),
        min_size=1,
        max_size=30,
    )
)
def test_the_releases_owed_are_what_a_model_says_whatever_the_order(
    open_store: Opener, steps: list[tuple[str, int, int]]
) -> None:
    """Owing, re-owing, forgetting by commit and on its own, in any order, against a model: an
    ordered map call → what is owed, where re-owing keeps the place."""

    async def scenario() -> None:
        store = await open_store()
        try:
            for stale in await store.pending_releases():  # examples share the store
                await store.forget_release(stale.call)
            model: dict[str, PendingRelease] = {}
            for kind, which, attempts in steps:
                each = call(f"c{which}", state=State.STATE_DISCONNECTED)
                if kind == "owe":
                    await store.commit(each, [event(each)], owe=owed(each, attempts))
                    model[each.name] = owed(each, attempts)
                elif kind == "released":
                    await store.commit(each, [], released=True)
                    model.pop(each.name, None)
                elif kind == "forget":
                    await store.forget_release(each.name)
                    model.pop(each.name, None)
                else:  # a commit that neither owes nor forgets leaves what is owed alone
                    await store.commit(each, [event(each)])
                assert await store.pending_releases() == list(model.values())
        finally:
            await store.close()

    asyncio.run(scenario())


async def test_a_capacity_kept_from_update_link_survives_a_reopen_up_to_the_largest(open_store: Opener) -> None:
    largest = 2**64 - 1
    first = await open_store()
    try:
        await first.set_link_capacity(
            LinkCapacity("providers/reference/links/b", largest, 1_250_000), "providers/reference/links/b"
        )
        await first.set_link_capacity(
            LinkCapacity("providers/reference/links/a", 500, 1_000), "providers/reference/links/a"
        )
        await first.set_link_capacity(
            LinkCapacity("providers/reference/links/a", 700, 1_000), "providers/reference/links/a"
        )  # replaced
        await first.set_link_capacity(LinkCapacity("providers/reference/links/c", 1, 2), "providers/reference/links/c")
        await first.set_link_capacity(None, "providers/reference/links/c")  # forgotten
        await first.set_link_capacity(None, "providers/reference/links/none")  # nothing kept: harmless
    finally:
        await first.close()
    second = await open_store()
    try:
        assert await second.link_capacities() == [
            LinkCapacity("providers/reference/links/a", 700, 1_000),
            LinkCapacity("providers/reference/links/b", largest, 1_250_000),
        ]
    finally:
        await second.close()


# -- the lease index --------------------------------------------------------------------------
def with_lease(made: Call, expire_us: int) -> Call:
    made.lease_duration.seconds = 60
    made.lease_expire_time.FromMicroseconds(expire_us)
    return made


def answering(name: str, expire_us: int) -> Call:
    """The answering leg of a pair: it shows its caller's lease, which the caller's leg holds."""
    leg = with_lease(call(name), expire_us)
    leg.direction, leg.peer = Call.Direction.DIRECTION_INCOMING, "calls/its-caller"
    return leg


async def test_the_lease_index_holds_every_live_lease_earliest_first_across_a_reopen(open_store: Opener) -> None:
    store = await open_store()
    try:
        assert await store.next_lease_expiry() is None
        assert await store.expired_leases(2**62, 10) == []
        await store.commit(
            [
                with_lease(call("connected"), 3_000),
                with_lease(call("ringback", state=State.STATE_RINGBACK), 1_000),
                with_lease(call("acme", tenant="acme"), 2_000),  # every tenant's
                with_lease(call("offering", state=State.STATE_OFFERING), 10),  # not live: nothing to end
                with_lease(call("ended", state=State.STATE_DISCONNECTED), 20),
                call("unleased"),
                answering("answering", 30),
            ],
            [],
        )
        assert await store.next_lease_expiry() == 1_000
        assert await store.expired_leases(999, 10) == []
        assert await store.expired_leases(1_000, 10) == ["calls/ringback"]  # at or before
        assert await store.expired_leases(2_500, 10) == ["calls/ringback", "calls/acme"]
        assert await store.expired_leases(2**62, 2) == ["calls/ringback", "calls/acme"]
        # The call's next commit moves its lease (an extension), or drops it (the call ended).
        await store.commit(with_lease(call("connected"), 500), [])
        ended = with_lease(call("ringback", state=State.STATE_DISCONNECTED), 1_000)
        await store.commit(ended, [event(ended, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED)])
        assert await store.expired_leases(2**62, 10) == ["calls/connected", "calls/acme"]
    finally:
        await store.close()
    reopened = await open_store()
    try:
        assert await reopened.next_lease_expiry() == 500
        assert await reopened.expired_leases(2**62, 10) == ["calls/connected", "calls/acme"]
    finally:
        await reopened.close()


# Any instant a protobuf Timestamp holds (years 1 to 9999), in microseconds.
INSTANTS = st.integers(-62_135_596_800 * 10**6, 253_402_300_799 * 10**6 + 999_999)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from([State.STATE_CONNECTED, State.STATE_RINGBACK, State.STATE_DISCONNECTED]),
            st.sampled_from(["leased", "unleased", "answering"]),
            INSTANTS,
        ),
        min_size=1,
        max_size=20,
    ),
    looks=st.lists(st.tuples(INSTANTS, st.integers(1, 8)), min_size=1, max_size=4),
)
def test_the_lease_index_is_what_a_model_says_whatever_the_commits(
    open_store: Opener, steps: list[tuple[int, int, str, int]], looks: list[tuple[int, int]]
) -> None:
    """Calls committed and recommitted in any state, with and without leases, as either leg,
    at any instant: the index is a model's map call → `lease_deadline_us(call)` (0: not
    indexed). `next_lease_expiry` is its least deadline; `expired_leases(now, limit)` the names of
    the `limit` earliest at or before `now` (ties in any order)."""

    async def scenario() -> None:
        store = await open_store()
        try:
            for stale in await store.expired_leases(2**62, 10_000):  # examples share the store
                left = await store.get_call(stale)
                assert left is not None
                left.state = State.STATE_DISCONNECTED
                await store.commit(left, [])
            model: dict[str, int] = {}
            for which, state, kind, instant in steps:
                if kind == "answering":
                    each = answering(f"c{which}", instant)
                else:
                    each = call(f"c{which}", state=state)
                    if kind == "leased":
                        with_lease(each, instant)
                each.state = state
                await store.commit(each, [])
                model[each.name] = lease_deadline_us(each)
                live = {name: deadline for name, deadline in model.items() if deadline}
                assert await store.next_lease_expiry() == (min(live.values()) if live else None)
            for now, limit in looks:
                due = sorted(deadline for deadline in live.values() if deadline <= now)[:limit]
                found = await store.expired_leases(now, limit)
                assert len(set(found)) == len(found)
                assert [live[name] for name in found] == due
        finally:
            await store.close()

    asyncio.run(scenario())


# -- retention and reopening ------------------------------------------------------------------
async def test_retention_by_count_and_by_age(store: Store) -> None:
    for index in range(10):
        await store.commit(call(f"c{index}"), [event(call(f"c{index}"))], record(f"r{index}", f"calls/c{index}"))
    assert await store.prune_events(keep_last=4, older_than_us=0) == 6
    bounds = await store.event_bounds()
    assert (bounds.pruned_through, bounds.last) == (6, 10)
    assert await sequences(store) == [7, 8, 9, 10]
    assert await store.prune_events(keep_last=4, older_than_us=0) == 0  # already done: harmless again
    assert await store.find_request("r0", "alice") is not None  # kept: no age limit
    # By age: everything older than a second from now goes, events and request_ids alike.
    assert await store.prune_events(keep_last=100, older_than_us=time.time_ns() // 1000 + 1_000_000) == 4
    assert (await store.event_bounds()).pruned_through == 10
    assert await store.find_request("r9", "alice") is None
    # Numbering carries on after everything was pruned.
    assert [e.sequence for e in await store.commit(call("next"), [event(call("next"))])] == [11]


async def test_a_reopened_store_has_everything_and_numbers_on(open_store: Opener) -> None:
    first = await open_store()
    try:
        kept = call("kept", rate=100)
        await first.commit(kept, [event(kept)], record("r", kept.name), lines=[line("l", "sip:l@x")])
        await first.prune_events(keep_last=1, older_than_us=0)
    finally:
        await first.close()
    second = await open_store()
    try:
        assert await second.get_call(kept.name) == kept
        assert await second.get_line("lines/l") == line("l", "sip:l@x")
        assert await second.find_request("r", "alice") is not None
        assert [e.sequence for e in await second.commit(call("more"), [event(call("more"))] * 2)] == [2, 3]
        bounds = await second.event_bounds()
        assert (bounds.pruned_through, bounds.last) == (0, 3)
    finally:
        await second.close()


# -- concurrency ------------------------------------------------------------------------------
async def test_concurrent_commits_get_distinct_gap_free_numbers(store: Store) -> None:
    async def committer(worker: int) -> list[list[int]]:
        got = []
        for index in range(10):
            each = call(f"w{worker}-{index}")
            numbered = await store.commit(each, [event(each)] * (1 + index % 3))
            got.append([e.sequence for e in numbered])
        return got

    batches = [batch for worker in await asyncio.gather(*(committer(w) for w in range(6))) for batch in worker]
    everything = sorted(seq for batch in batches for seq in batch)
    assert everything == list(range(1, len(everything) + 1))
    assert all(batch == list(range(batch[0], batch[0] + len(batch))) for batch in batches)
    assert await sequences(store) == everything


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("commit"), st.integers(0, 4)),
            st.tuples(st.just("prune"), st.integers(0, 12)),
        ),
        min_size=1,
        max_size=25,
    ),
    cursors=st.lists(st.integers(0, 60), max_size=4),
)
def test_events_after_any_cursor_are_exactly_those_retained_after_it(
    open_store: Opener, steps: list[tuple[str, int]], cursors: list[int]
) -> None:
    """A model of the event log — a number per event, retention by count — against the store,
    over any sequence of commits and prunes: events_after(c) is exactly the retained events after
    c, in order, and the bounds say where retention cut."""

    async def scenario() -> None:
        store = await open_store()
        try:
            bounds = await store.event_bounds()
            last, pruned = bounds.last, bounds.pruned_through  # examples share the store's history
            for kind, amount in steps:
                if kind == "commit":
                    numbered = await store.commit(call(f"c{last}"), [event(call(f"c{last}"))] * amount)
                    assert [e.sequence for e in numbered] == list(range(last + 1, last + amount + 1))
                    last += amount
                else:
                    await store.prune_events(keep_last=max(amount, 1), older_than_us=0)
                    pruned = max(pruned, last - max(amount, 1))
                bounds = await store.event_bounds()
                assert (bounds.pruned_through, bounds.last) == (pruned, last)
            for cursor in [0, pruned, last, *cursors]:
                expected = list(range(max(cursor, pruned) + 1, last + 1))
                assert [e.sequence for e in await store.events_after(cursor, 10_000)] == expected
        finally:
            await store.close()

    asyncio.run(scenario())
