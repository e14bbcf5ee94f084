"""What the PostgreSQL store adds to the contract for several replicas, against a real PostgreSQL:
forward-only migrations checked at start-up; sequence order equal to commit order across
PROCESSES (a reader never sees a gap filled later); key locks and the leader across stores, and
released when the process holding them is killed; the shared ledger, which two reference
providers on two stores decide against without ever over-admitting together, which every
replica lists alike for the leader's reconciliation, and whose links a new configuration
changes (shedding what no longer fits); the database unreachable as
StoreUnavailable, never a crash; a password never logged.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callqos.server.providers import AdmissionRequest, Grant, Holding, ProviderChange
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.store import pg_schema
from callqos.server.store.base import SharedLedger, StoreUnavailable
from callqos.server.store.pg_coordination import shown
from callqos.server.store.postgres import PostgresStore
from callqos.server.testing import PostgresServer
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2

Level = call_pb2.ServiceLevel
ST = flowspec_pb2.ServiceType
CAPACITY = 1_250_000


@pytest.fixture
async def two_stores(database_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database: two replicas, as far as the store is concerned."""
    first = await PostgresStore.open(database_url, pool_size=4)
    second = await PostgresStore.open(database_url, pool_size=4)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


# -- migrations -------------------------------------------------------------------------------
async def test_a_fresh_database_is_migrated_once_and_a_newer_one_refused(database_url: str) -> None:
    opened = await asyncio.gather(*(PostgresStore.open(database_url, pool_size=2) for _ in range(3)))
    for store in opened:
        await store.close()
    with psycopg.connect(database_url) as conn:
        versions = conn.execute("SELECT version, description FROM callqos_schema ORDER BY version").fetchall()
        assert [row[0] for row in versions] == [step.version for step in pg_schema.MIGRATIONS]
        conn.execute(
            "INSERT INTO callqos_schema (version, description) VALUES (%s, 'from the future')",
            (pg_schema.SCHEMA_VERSION + 1,),
        )
    with pytest.raises(pg_schema.SchemaError, match=f"version {pg_schema.SCHEMA_VERSION + 1}, newer than"):
        await PostgresStore.open(database_url)


async def allow_connections(postgres: PostgresServer, database_url: str, allowed: bool) -> None:
    """The database of `database_url` away (new connections refused, open ones cut) or back."""
    database = database_url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(postgres.url(), autocommit=True) as admin:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}'.encode())
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
            )


async def test_an_unreachable_database_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        await PostgresStore.open("postgresql://callqos:secret@127.0.0.1:1/none?connect_timeout=2")


def test_a_password_is_never_shown() -> None:
    assert "secret" not in shown("postgresql://callqos:secret@db:5432/callqos")
    assert "password=***" in shown("host=db user=callqos password=secret dbname=callqos")
    assert "dbname=callqos" in shown("postgresql://callqos:secret@db:5432/callqos")


# -- sequence order is commit order, across processes -----------------------------------------
COMMITTER = textwrap.dedent(
    """
    import asyncio, random, sys
    from callqos.server.store.postgres import PostgresStore
    from callqos.v1 import call_pb2, event_pb2

    async def main(url, worker, commits):
        store = await PostgresStore.open(url, pool_size=4)
        rng = random.Random(worker)

        async def one(index):
            call = call_pb2.Call(name=f"calls/p{worker}-{index}", tenant="default", state=2)
            await store.commit(call, [event_pb2.QosEvent(call=call.name, tenant="default")] * rng.randint(1, 3))

        for start in range(0, commits, 8):  # 8 transactions in flight at a time
            await asyncio.gather(*(one(i) for i in range(start, min(start + 8, commits))))
        await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


async def test_a_reader_never_sees_a_gap_filled_later_whatever_processes_commit(database_url: str) -> None:
    """Four processes commit concurrently (eight transactions in flight each); a reader polling
    events_after(cursor) must only ever receive cursor+1, cursor+2, ... — had a number been taken
    by a transaction that committed after a higher one, the reader would have stepped past it."""
    await (await PostgresStore.open(database_url)).close()  # migrate before the race
    processes = [
        subprocess.Popen(  # noqa: ASYNC220 -- processes that run beside the reader
            [sys.executable, "-c", COMMITTER, database_url, str(worker), "60"], env=os.environ.copy()
        )
        for worker in range(4)
    ]
    reader = await PostgresStore.open(database_url, pool_size=2)
    cursor, reads = 0, 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            events = await reader.events_after(cursor, 1000)
            reads += 1
            if events:
                assert [e.sequence for e in events] == list(range(cursor + 1, cursor + len(events) + 1))
                cursor = events[-1].sequence
            elif all(p.poll() is not None for p in processes):
                break
        assert [p.wait(30) for p in processes] == [0, 0, 0, 0]
        assert cursor == (await reader.event_bounds()).last
        assert len(await reader.calls_in_state(2)) == 240
        assert reads > 10  # the reader did read while they committed
    finally:
        for process in processes:
            process.kill()
        await reader.close()


# -- key locks and the leader -----------------------------------------------------------------
async def test_a_key_is_held_by_one_store_at_a_time(two_stores: tuple[PostgresStore, PostgresStore]) -> None:
    first, second = two_stores
    order: list[str] = []

    async def hold(store: PostgresStore, who: str, key: str) -> None:
        async with store.shared_locks().hold(key):
            order.append(f"{who} in")
            await asyncio.sleep(0.2)
            order.append(f"{who} out")

    await asyncio.gather(
        hold(first, "a", "call:calls/x"), hold(second, "b", "call:calls/x"), hold(second, "c", "call:calls/y")
    )
    xs = [step for step in order if step[0] in "ab"]
    assert xs in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
    assert order.index("c in") < order.index("c out") and order.index("c in") < 2  # another key: no wait


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from callqos.server.store.postgres import PostgresStore

    async def main(url):
        store = await PostgresStore.open(url, pool_size=2)
        assert await store.leadership().lead()
        async with store.shared_locks().hold("call:calls/held"):
            print("held", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_killed_process_releases_its_keys_and_its_lead(database_url: str) -> None:
    holder = subprocess.Popen(  # noqa: ASYNC220 -- a process to kill, not to wait on
        [sys.executable, "-c", HOLDER, database_url], stdout=subprocess.PIPE, text=True
    )
    store = await PostgresStore.open(database_url, pool_size=2)
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
        assert not await store.leadership().lead()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), store.shared_locks().hold("call:calls/held"):
                pass
        holder.kill()
        holder.wait()
        async with asyncio.timeout(10):
            async with store.shared_locks().hold("call:calls/held"):
                pass
            while not await store.leadership().lead():  # noqa: ASYNC110 -- asking is the point
                await asyncio.sleep(0.1)
    finally:
        holder.kill()
        await store.close()


async def test_one_store_leads_and_another_takes_over_when_it_closes(database_url: str) -> None:
    stores = [await PostgresStore.open(database_url, pool_size=2) for _ in range(3)]
    try:
        leading = [await store.leadership().lead() for store in stores]
        assert leading == [True, False, False]
        assert await stores[0].leadership().lead()  # it keeps the lead
        await stores[0].close()
        assert [await store.leadership().lead() for store in stores[1:]] == [True, False]
    finally:
        for store in stores[1:]:
            await store.close()


# -- the shared ledger ------------------------------------------------------------------------
class Host:
    """The host a provider is given (ProviderHost): the store's ledger, and the changes it reports."""

    def __init__(self, ledger: SharedLedger | None, changes: list[ProviderChange] | None = None) -> None:
        self.ledger = ledger
        self.changes: list[ProviderChange] = [] if changes is None else changes  # may be shared

    async def report_change(self, change: ProviderChange) -> None:
        self.changes.append(change)

    async def offer_call(self, offer: object) -> str | None:
        return None


async def reference_on(
    store: PostgresStore,
    capacity: int = CAPACITY,
    shed: list[ProviderChange] | None = None,
    reported: list[ProviderChange] | None = None,
) -> tuple[ReferenceProvider, Host]:
    """A reference provider started on `store`'s shared ledger (as a replica's host starts it);
    what its start sheds is put in `shed` (and must be nothing when not asked for), and what it
    reports later in `reported` (when given: several providers' reports in the order made)."""
    provider = ReferenceProvider({"links": [{"id": "default", "capacity_bytes_per_second": capacity}]})
    provider.id = "reference"
    host = Host(store.shared_ledger(), reported)
    changes = await provider.start(host, [])
    if shed is None:
        assert changes == []
    else:
        shed.extend(changes)
    return provider, host


def request(call: str, rate: int, level: int = Level.SERVICE_LEVEL_NEEDED) -> AdmissionRequest:
    spec = flowspec_pb2.QosSpec()
    spec.sending.service_type = ST.SERVICE_TYPE_CONTROLLED_LOAD
    spec.sending.token_rate_bytes_per_second = rate
    spec.receiving.service_type = ST.SERVICE_TYPE_BEST_EFFORT
    return AdmissionRequest(call, "sip:x@example.test", level, spec, "alice")


async def reserved_on(provider: ReferenceProvider) -> int:
    (link,) = await provider.list_links()
    return link.sending_reserved_bytes_per_second


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rates=st.lists(st.integers(1, CAPACITY), min_size=2, max_size=24), capacity=st.integers(0, CAPACITY))
def test_two_replicas_deciding_at_once_never_reserve_more_than_the_link(
    postgres: PostgresServer, rates: list[int], capacity: int
) -> None:
    """Requests of any size, half to each replica's provider, all at once: what is granted fits
    the link, what the books say is reserved is exactly what was granted, and every refusal
    was right when it was made (each fits what the others had left)."""

    async def scenario() -> None:
        url = postgres.database()
        stores = [await PostgresStore.open(url, pool_size=4) for _ in range(2)]
        try:
            providers = [(await reference_on(store, capacity))[0] for store in stores]
            decisions = await asyncio.gather(
                *(providers[i % 2].admit(request(f"calls/c{i}", rate)) for i, rate in enumerate(rates))
            )
            granted = sum(rate for rate, d in zip(rates, decisions, strict=True) if isinstance(d, Grant))
            assert granted <= capacity
            assert await reserved_on(providers[0]) == await reserved_on(providers[1]) == granted
            assert all(
                rate > capacity - granted or isinstance(d, Grant) for rate, d in zip(rates, decisions, strict=True)
            )
            # Each release frees exactly the call's reservation, on whichever replica.
            for index, decision in enumerate(decisions):
                if isinstance(decision, Grant):
                    await providers[(index + 1) % 2].release(f"calls/c{index}")
            assert await reserved_on(providers[0]) == 0
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


OPERATIONS = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 5), st.integers(0, 700_000), st.sampled_from(list(Level.values())[1:])),
    st.tuples(
        st.just("renegotiate"), st.integers(0, 5), st.integers(0, 700_000), st.sampled_from(list(Level.values())[1:])
    ),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.just("update_link"), st.integers(0, 2 * CAPACITY)),
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATIONS, min_size=1, max_size=30))
def test_shared_books_decide_exactly_as_books_in_memory(
    postgres: PostgresServer, operations: list[tuple[int | str, ...]]
) -> None:
    """Any sequence of admissions, renegotiations, releases and capacity changes, sent to two
    replicas in turn, decides exactly as one provider with its books in memory: the same
    grants and refusals (with the same counter-offers), the same calls shed or degraded, the same
    links. Only where the books are differs."""

    async def scenario() -> None:
        store_a = await PostgresStore.open(postgres.database(), pool_size=2)
        store_b = await PostgresStore.open(store_a.dsn, pool_size=2)
        try:
            memory = ReferenceProvider({})
            memory.id = "reference"
            memory_host = Host(None)
            await memory.start(memory_host, [])
            reported: list[ProviderChange] = []  # both replicas' reports, in the order made
            (a, _), (b, _) = (
                await reference_on(store_a, reported=reported),
                await reference_on(store_b, reported=reported),
            )
            for index, operation in enumerate(operations):
                shared = a if index % 2 == 0 else b
                outcomes = []
                for provider in (memory, shared):
                    kind = operation[0]
                    if kind in ("admit", "renegotiate"):
                        _, call, rate, level = operation
                        asked = request(f"calls/c{call}", int(rate), int(level))
                        outcomes.append(await getattr(provider, str(kind))(asked))
                    elif kind == "release":
                        outcomes.append(await provider.release(f"calls/c{operation[1]}"))
                    else:
                        outcomes.append(await provider.update_link("default", int(operation[1])))
                assert outcomes[0] == outcomes[1], operation
                assert await memory.list_links() == await shared.list_links()
                assert memory_host.changes == reported
        finally:
            await store_a.close()
            await store_b.close()

    asyncio.run(scenario())


async def test_a_restarted_replica_keeps_the_capacity_update_link_set(database_url: str) -> None:
    store = await PostgresStore.open(database_url, pool_size=2)
    try:
        provider, _ = await reference_on(store)
        await provider.update_link("default", 400_000)
        again, _ = await reference_on(store)  # same configuration: the books keep UpdateLink's
        assert [link.capacity_bytes_per_second for link in await again.list_links()] == [400_000]
        changed, _ = await reference_on(store, capacity=900_000)  # a new configuration wins
        assert [link.capacity_bytes_per_second for link in await changed.list_links()] == [900_000]
    finally:
        await store.close()


async def test_a_new_configuration_sheds_what_no_longer_fits_once(database_url: str) -> None:
    """A replica started with a lower configured capacity than the books': the configuration wins
    (LINK-5) and its start sheds the newest calls that no longer fit; the next replica started
    with the same configuration finds nothing to shed."""
    store = await PostgresStore.open(database_url, pool_size=2)
    try:
        first, _ = await reference_on(store)
        for index in range(4):
            assert isinstance(await first.admit(request(f"calls/c{index}", 300_000)), Grant)
        shed: list[ProviderChange] = []
        lowered, _ = await reference_on(store, capacity=700_000, shed=shed)
        assert [(change.call, change.qos) for change in shed] == [("calls/c3", None), ("calls/c2", None)]
        assert await reserved_on(first) == await reserved_on(lowered) == 600_000
        await reference_on(store, capacity=700_000)  # nothing more to shed
    finally:
        await store.close()


async def test_every_replica_lists_the_shared_books_for_reconciliation(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """What the server's reconciliation compares with the calls it recorded (PROV-19): a replica
    died after its provider reserved but before the server recorded the call (an orphan), and
    another after it released a dropped call's reservation but before recording the drop. Every
    replica lists the books alike — the orphan held, the dropped call not — and a release on any
    of them (what reconciliation does with the orphan) frees it for all."""
    (dead, _), (leader, _) = [await reference_on(store) for store in two_stores]
    assert isinstance(await dead.admit(request("calls/orphan", 600_000)), Grant)
    assert isinstance(await dead.admit(request("calls/kept", 300_000)), Grant)
    assert isinstance(await dead.admit(request("calls/dropped", 200_000)), Grant)
    await dead.release("calls/dropped")  # ... and the replica died before recording the drop
    link = "providers/reference/links/default"
    expected = [Holding("calls/orphan", 600_000, 0, link), Holding("calls/kept", 300_000, 0, link)]
    assert await dead.reservations() == await leader.reservations() == expected
    await leader.release("calls/orphan")
    assert await dead.reservations() == [Holding("calls/kept", 300_000, 0, link)]
    assert await reserved_on(dead) == 300_000


async def test_a_commit_while_the_database_is_away_writes_nothing(postgres: PostgresServer) -> None:
    """Connections to the database killed under the store: the commit in flight fails with
    StoreUnavailable (never a crash), and the pool reconnects for the next one."""
    url = postgres.database()
    store = await PostgresStore.open(url, pool_size=2)
    try:
        call = call_pb2.Call(name="calls/a", tenant="default", state=2)
        await store.commit(call, [event_pb2.QosEvent(call=call.name)])
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (url.rsplit("/", 1)[1],),
            )
        outcomes = []
        for index in range(4):
            each = call_pb2.Call(name=f"calls/b{index}", tenant="default", state=2)
            try:
                await store.commit(each, [event_pb2.QosEvent(call=each.name)])
                outcomes.append("stored")
            except StoreUnavailable:
                outcomes.append("unavailable")
        assert "stored" in outcomes
        stored = {c.name for c in await store.calls_in_state(2)}
        assert [e.sequence for e in await store.events_after(0, 100)] == list(range(1, len(stored) + 1))
    finally:
        await store.close()
