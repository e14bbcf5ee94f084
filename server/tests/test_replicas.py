"""Three server processes (`ServerProcess`, storage = "postgresql") on one PostgreSQL database,
used as a load balancer would use them: requests spread across the replicas (SPEC.md REPL-1 …
REPL-4).

- Concurrent CreateCalls spread across the replicas never admit beyond a link's capacity
  together, and every replica's ListLinks agrees with the calls connected.
- A request_id sent to every replica at once runs once: one call, the same answer everywhere.
- A watcher on one replica receives every replica's events, gap-free and in order; resumed on
  another replica from its cursor, it gets the rest, without loss or duplicate.
- `kill -9` of the leading replica under load loses no acknowledged call or event; the
  survivors carry on serving, and one of them takes over the background work the dead one led:
  an offer whose ring timer died with it is rung out, the shared ledger is reconciled with the
  calls connected, and retention is pruned.
- What a replica that died left behind — a reservation for a call it never recorded, a release
  it owed in the store — is put right by the leading replica (reconciliation, release retries).
- Leases end on time and once whichever replica made the call: `kill -9` of the replica that made
  a leased call (the leader) leaves it to the others, which learn of it from the database and
  race to end it; it is released and announced once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from incoming_kit import CAROL, get, open_line, wait_for_state
from lease_kit import leased
from server_testkit import CAPACITY, details, make_request, qos, reason, rpc_error
from test_postgres_store import Host, allow_connections, request

from callqos.server import app
from callqos.server.config import ConfigError
from callqos.server.providers import Grant
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.providers.registry import ProviderLoadError
from callqos.server.remote.provider import RemoteProvider
from callqos.server.store.base import PendingRelease
from callqos.server.store.postgres import PostgresStore
from callqos.server.testing import InProcessServer, PostgresServer, ServerProcess
from callqos.v1 import call_pb2, event_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

pytestmark = pytest.mark.slow

State = call_pb2.Call.State
SERVING_STATUS = health_pb2.HealthCheckResponse.ServingStatus
EventType = event_pb2.QosEventType
# What a replica logs when it takes the lead, and when it loses it (store.pg_coordination).
TOOK_THE_LEAD = "leading the replicas' background work"
LOST_THE_LEAD = "lost the lead"
# Fast background work, so that failover is seen within seconds.
REPLICA_SETTINGS: dict[str, Any] = {
    "leader_check_seconds": 0.5,
    "event_poll_seconds": 0.5,
    "shutdown_grace_seconds": 1.0,
    "reconcile_interval_seconds": 1.0,
    "providers": {"reference": {}, "no-qos": {}},
}


@dataclass
class Cluster:
    """Replicas on one database, and a channel to each (what a load balancer would spread over).
    A failing test's report shows every replica's log (conftest)."""

    replicas: list[ServerProcess]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def stubs(self) -> list[svc_grpc.CallQosServiceStub]:
        return [svc_grpc.CallQosServiceStub(channel) for channel in self.channels]

    def leaders(self) -> list[int]:
        """The running replicas whose log says they lead now: they took the lead and have not
        said since that they lost it."""
        leading = []
        for index, replica in enumerate(self.replicas):
            if not replica.running:
                continue
            log = replica.log(1 << 40)  # all of it
            if log.rfind(TOOK_THE_LEAD) > log.rfind(LOST_THE_LEAD):
                leading.append(index)
        return leading

    async def leader(self, within: float = 10.0) -> int:
        """The one replica that leads, once one does."""
        async with asyncio.timeout(within):
            while not (leading := self.leaders()):  # noqa: ASYNC110 -- the logs of other processes
                await asyncio.sleep(0.1)
        assert len(leading) == 1, f"replicas {leading} all say they lead"
        return leading[0]


async def start_cluster(postgres: PostgresServer, count: int, stack: AsyncExitStack, **settings: Any) -> Cluster:
    url = postgres.database()
    replicas = [
        ServerProcess(storage="postgresql", database_url=url, **{**REPLICA_SETTINGS, **settings}) for _ in range(count)
    ]
    for replica in replicas:
        stack.callback(replica.close)
    await asyncio.gather(*(asyncio.to_thread(replica.start) for replica in replicas))
    cluster = Cluster(replicas)
    for replica in replicas:
        cluster.channels.append(await stack.enter_async_context(grpc.aio.insecure_channel(replica.target)))
    return cluster


@pytest.fixture
async def cluster(postgres: PostgresServer) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield await start_cluster(postgres, 3, stack)


async def read_events(
    stub: svc_grpc.CallQosServiceStub, after: int, until: int, within: float = 20.0
) -> list[event_pb2.QosEvent]:
    """Every event after `after` up to `until`, from one replica's WatchEvents."""
    events: list[event_pb2.QosEvent] = []
    if until <= after:
        return events
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=after))
    try:
        async with asyncio.timeout(within):
            async for response in stream:
                events.append(response.event)
                if response.event.sequence >= until:
                    break
    finally:
        stream.cancel()
    return events


async def newest_sequence(stub: svc_grpc.CallQosServiceStub) -> int:
    """A sequence every event committed so far is at or below: that of a probe call's
    disconnection, committed after them (sequence order is commit order)."""
    probe = await stub.CreateCall(make_request(qos(1), call_id=f"probe-{uuid.uuid4().hex[:8]}"))
    await stub.DropCall(svc.DropCallRequest(name=probe.name))
    stream = stub.WatchEvents(svc.WatchEventsRequest(call=probe.name, after_sequence=0))
    try:
        async with asyncio.timeout(10):
            async for response in stream:
                if response.event.type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED:
                    return response.event.sequence
    finally:
        stream.cancel()
    raise AssertionError("no disconnection event for the probe")


async def books(cluster: Cluster, alive: Sequence[int]) -> set[tuple[int, int]]:
    """(bytes/s reserved, reservations) on the reference provider's link, as each replica reads it."""
    seen = set()
    for index in alive:
        (link,) = (await cluster.stubs[index].ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        seen.add((link.sending_reserved_bytes_per_second, link.reservation_count))
    return seen


async def connected(stub: svc_grpc.CallQosServiceStub) -> tuple[int, int]:
    """(bytes/s, calls) the connected calls hold, as the server recorded them."""
    page = await stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED", page_size=1000))
    assert not page.next_page_token
    return sum(call.granted_qos.sending.token_rate_bytes_per_second for call in page.calls), len(page.calls)


# -- admission and idempotency across replicas ------------------------------------------------
async def test_concurrent_calls_across_replicas_never_exceed_capacity(cluster: Cluster) -> None:
    stubs = cluster.stubs
    rate = 100_000
    fits = CAPACITY // rate  # 12
    outcomes = await asyncio.gather(
        *(stubs[i % 3].CreateCall(make_request(qos(rate), call_id=f"c{i}")) for i in range(5 * fits)),
        return_exceptions=True,
    )
    granted = [o for o in outcomes if isinstance(o, call_pb2.Call)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(granted) == fits and len(refused) == 4 * fits
    assert {reason(error) for error in refused} == {"QOS_UNAVAILABLE"}
    assert await books(cluster, [0, 1, 2]) == {(fits * rate, fits)}
    # Dropped on one replica, freed for all: the next calls fit wherever they are made.
    await asyncio.gather(
        *(stubs[(i + 1) % 3].DropCall(svc.DropCallRequest(name=c.name)) for i, c in enumerate(granted))
    )
    assert await books(cluster, [0, 1, 2]) == {(0, 0)}
    again = await asyncio.gather(*(stubs[i % 3].CreateCall(make_request(qos(rate))) for i in range(fits)))
    assert all(call.state == State.STATE_CONNECTED for call in again)


async def test_a_request_id_sent_to_every_replica_at_once_runs_once(cluster: Cluster) -> None:
    request = make_request(qos(200_000), request_id=str(uuid.uuid4()))
    answers = await asyncio.gather(*(stub.CreateCall(request) for stub in cluster.stubs for _ in range(3)))
    assert len({answer.name for answer in answers}) == 1
    assert await books(cluster, [0, 1, 2]) == {(200_000, 1)}
    page = await cluster.stubs[2].ListCalls(svc.ListCallsRequest())
    assert [call.name for call in page.calls] == [answers[0].name]


async def test_a_capacity_lowered_on_one_replica_sheds_calls_made_on_the_others_once(cluster: Cluster) -> None:
    """UpdateLink on one replica changes the link for all: calls made on the other replicas are
    shed newest first (NEEDED disconnected), once, and every replica then reads the same books."""
    stubs = cluster.stubs
    made = [await stubs[1 + index % 2].CreateCall(make_request(qos(300_000))) for index in range(4)]
    await stubs[0].UpdateLink(
        svc.UpdateLinkRequest(
            link=provider_pb2.Link(name="providers/reference/links/default", capacity_bytes_per_second=700_000)
        )
    )
    states = [(await stubs[2].GetCall(svc.GetCallRequest(name=call.name))).state for call in made]
    assert states == [State.STATE_CONNECTED] * 2 + [State.STATE_DISCONNECTED] * 2  # the newest shed
    for index in range(3):
        (link,) = (await stubs[index].ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        assert link.capacity_bytes_per_second == 700_000
    assert await books(cluster, [0, 1, 2]) == {(600_000, 2)} == {await connected(stubs[1])}
    # Each shed call was announced once, whichever replica the watcher is on.
    last = await newest_sequence(stubs[1])
    events = await read_events(stubs[2], 0, last)
    for call in made[2:]:
        ends = [e for e in events if e.call == call.name and e.type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        assert len(ends) == 1, call.name


# -- events across replicas -------------------------------------------------------------------
async def test_a_watcher_on_one_replica_sees_every_replicas_events_and_resumes_on_another(cluster: Cluster) -> None:
    stubs = cluster.stubs
    watcher = stubs[0].WatchEvents(svc.WatchEventsRequest(after_sequence=0))
    made = []
    for index in range(12):
        call = await stubs[1 + index % 2].CreateCall(make_request(qos(10_000)))
        await stubs[2 - index % 2].DropCall(svc.DropCallRequest(name=call.name))
        made.append(call.name)
    received: list[event_pb2.QosEvent] = []
    async with asyncio.timeout(20):
        async for response in watcher:
            received.append(response.event)
            if len(received) == 12:
                break
    watcher.cancel()
    assert [event.sequence for event in received] == list(range(1, 13))
    # The rest from another replica, from the cursor: nothing lost, nothing twice.
    rest = await read_events(stubs[2], received[-1].sequence, 24)
    everything = received + rest
    assert [event.sequence for event in everything] == list(range(1, 25))
    assert [event.call for event in everything if event.type == EventType.QOS_EVENT_TYPE_QOS_GRANTED] == made


# -- kill -9 under load -----------------------------------------------------------------------
@dataclass
class Acknowledged:
    created: set[str] = field(default_factory=set)  # CreateCall answered with a connected call
    dropped: set[str] = field(default_factory=set)  # DropCall answered
    unknown: set[str] = field(default_factory=set)  # a request whose answer never came


async def load(cluster: Cluster, worker: int, alive: list[int], stop: asyncio.Event, acked: Acknowledged) -> None:
    """Make and drop calls round the live replicas until `stop`, noting what was acknowledged."""
    stubs = cluster.stubs
    turn = itertools.count(worker)
    for index in itertools.count():
        if stop.is_set() or index >= 500:
            return
        name = f"calls/w{worker}-{index}"
        request = make_request(qos(20_000), call_id=name.removeprefix("calls/"), request_id=str(uuid.uuid4()))
        for step in ("create", "drop"):
            replica = alive[next(turn) % len(alive)]
            try:
                if step == "create":
                    call = await stubs[replica].CreateCall(request, timeout=10)
                    assert call.state == State.STATE_CONNECTED
                    acked.created.add(name)
                else:
                    await stubs[replica].DropCall(svc.DropCallRequest(name=name), timeout=10)
                    acked.dropped.add(name)
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), error
                acked.unknown.add(name)
                break


async def test_kill_9_of_the_leader_under_load_loses_nothing_acknowledged_and_the_others_take_over(
    cluster: Cluster,
) -> None:
    stubs = cluster.stubs
    leader = await cluster.leader()
    survivors = [index for index in range(3) if index != leader]
    # An offer made on the leader: its ring timer lives (and dies) there.
    line = await open_line(stubs[survivors[0]], timeout_s=5.0)
    offered = await stubs[leader].CreateCall(make_request(qos(10_000), destination=line.address), metadata=CAROL)
    # A watcher on a survivor, from the start, through the kill.
    watched: list[event_pb2.QosEvent] = []

    async def watch() -> None:
        async for response in stubs[survivors[1]].WatchEvents(svc.WatchEventsRequest(after_sequence=0)):
            watched.append(response.event)

    watcher = asyncio.create_task(watch())
    acked = Acknowledged()
    stop = asyncio.Event()
    alive = [0, 1, 2]
    workers = [asyncio.create_task(load(cluster, worker, alive, stop, acked)) for worker in range(6)]
    await asyncio.sleep(2.0)
    assert (await get(stubs[leader], offered.peer)).state == State.STATE_OFFERING  # still ringing
    cluster.replicas[leader].kill()
    killed_at = time.monotonic()
    alive.remove(leader)  # new requests go to the survivors; those in flight on it fail
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*workers)
    assert len(acked.created) > 20, "the load did not run"

    # Every acknowledged call is there, as acknowledged (or changed by a request whose answer was lost).
    for name in acked.created:
        call = await stubs[survivors[0]].GetCall(svc.GetCallRequest(name=name))
        if name in acked.dropped:
            assert call.state == State.STATE_DISCONNECTED, name
        elif name not in acked.unknown:
            assert call.state == State.STATE_CONNECTED, name
    # Every event, gap-free, on both survivors; each acknowledged outcome announced.
    last = await newest_sequence(stubs[survivors[0]])
    events = await read_events(stubs[survivors[0]], 0, last)
    assert [event.sequence for event in events] == list(range(1, last + 1))
    granted = {e.call for e in events if e.type == EventType.QOS_EVENT_TYPE_QOS_GRANTED}
    disconnected = {e.call for e in events if e.type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED}
    assert acked.created <= granted and acked.dropped <= disconnected
    async with asyncio.timeout(20):
        while not watched or watched[-1].sequence < last:  # noqa: ASYNC110 -- a stream read by another task
            await asyncio.sleep(0.05)
    watcher.cancel()
    assert [event.sequence for event in watched[:last]] == list(range(1, last + 1))

    # The survivors took over what the dead leader led: one of them leads ...
    new_leader = await cluster.leader()
    assert new_leader in survivors
    # ... its offer is rung out ...
    callee = await wait_for_state(stubs[survivors[0]], offered.peer, State.STATE_DISCONNECTED, within=20)
    assert callee.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_NO_ANSWER
    assert time.monotonic() - killed_at < 20
    # ... and the shared ledger agrees with the calls connected (a reservation the dead replica
    # took for a call it never recorded is released by reconciliation).
    async with asyncio.timeout(20):
        while await books(cluster, survivors) != {await connected(stubs[survivors[1]])}:  # noqa: ASYNC110 -- other processes' state
            await asyncio.sleep(0.2)
    # And they carry on.
    after = await stubs[survivors[1]].CreateCall(make_request(qos(50_000)))
    assert after.state == State.STATE_CONNECTED


# -- leases across replicas -------------------------------------------------------------------
async def test_a_lease_ends_once_on_time_though_the_replica_that_made_the_call_was_killed(cluster: Cluster) -> None:
    """A leased call made on the leader, which is then killed with SIGKILL, and one made on a
    survivor with a longer lease. Every replica's lease timer may end any call (REPL-4, LEASE-3):
    the survivors learn of the dead replica's lease from the database and end its call on time
    (never before its lease_expire_time, and long before the survivor's own lease would have
    woken it); the two survivors race for each lease, and each call is released and announced
    CALL_DISCONNECTED(LEASE_EXPIRED) exactly once."""
    stubs = cluster.stubs
    dead = await cluster.leader()
    survivors = [index for index in range(3) if index != dead]
    # The survivor's lease first: its timer is then set for it, and told of nothing later.
    kept = await stubs[survivors[0]].CreateCall(leased(9.0, qos(200_000)))
    orphan = await stubs[dead].CreateCall(leased(3.0, qos(100_000)))
    assert orphan.state == kept.state == State.STATE_CONNECTED
    assert await books(cluster, [0, 1, 2]) == {(300_000, 2)}
    cluster.replicas[dead].kill()
    ended = await wait_for_state(stubs[survivors[1]], orphan.name, State.STATE_DISCONNECTED, within=20)
    assert ended.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED
    assert (await get(stubs[survivors[1]], kept.name)).state == State.STATE_CONNECTED
    async with asyncio.timeout(10):
        while await books(cluster, survivors) != {(200_000, 1)}:  # noqa: ASYNC110 -- the survivors' work
            await asyncio.sleep(0.1)
    # The survivor's own lease ends too (both survivors racing for it), and frees everything.
    ended = await wait_for_state(stubs[survivors[1]], kept.name, State.STATE_DISCONNECTED, within=20)
    assert ended.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED
    async with asyncio.timeout(10):
        while await books(cluster, survivors) != {(0, 0)}:  # noqa: ASYNC110 -- the survivors' work
            await asyncio.sleep(0.1)
    events = await read_events(stubs[survivors[1]], 0, await newest_sequence(stubs[survivors[0]]))
    ends = {}
    for call in (orphan, kept):
        mine = [e for e in events if e.call == call.name and e.type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        assert len(mine) == 1, (call.name, mine)
        (ends[call.name],) = mine
        assert ends[call.name].disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED
        assert ends[call.name].reason == "LEASE_EXPIRED"
        assert ends[call.name].create_time.ToNanoseconds() >= call.lease_expire_time.ToNanoseconds(), call.name
        assert not [e for e in events if e.call == call.name and e.type == EventType.QOS_EVENT_TYPE_RELEASE_PENDING]
    # Ended by a replica that learned of it from the database, not when its own lease woke it.
    assert ends[orphan.name].create_time.ToNanoseconds() < kept.lease_expire_time.ToNanoseconds()


async def test_the_leader_puts_right_what_a_dead_replica_left_behind(postgres: PostgresServer) -> None:
    """A replica died after its provider reserved for a call it never recorded (an orphan), and
    another after recording a call's end but before its provider released it (a release owed in
    the store). The leading replica's reconciliation releases the orphan, and its retries the
    owed release; every replica then reads the books empty, and nothing is owed any more."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(postgres, 2, stack)
        await cluster.leader()
        store = await PostgresStore.open(cluster.replicas[0].config.database_url, pool_size=2)
        stack.push_async_callback(store.close)
        dead = ReferenceProvider({})  # the dead replica's provider, on the same books
        dead.id = "reference"
        await dead.start(Host(store.shared_ledger()), [])
        assert isinstance(await dead.admit(request("calls/orphan", 300_000)), Grant)
        assert isinstance(await dead.admit(request("calls/ended", 200_000)), Grant)
        ended = call_pb2.Call(name="calls/ended", provider="providers/reference", state=State.STATE_DISCONNECTED)
        await store.commit(ended, [], owe=PendingRelease(ended.name, ended.provider))
        assert await books(cluster, [0, 1]) == {(500_000, 2)}
        async with asyncio.timeout(20):
            while await books(cluster, [0, 1]) != {(0, 0)} or await store.pending_releases():  # noqa: ASYNC110 -- other processes' work
                await asyncio.sleep(0.2)


async def test_the_next_leader_prunes_retention(postgres: PostgresServer) -> None:
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(postgres, 2, stack, event_retention_count=5)
        stubs = cluster.stubs
        leader = await cluster.leader()
        follower = 1 - leader
        cluster.replicas[leader].kill()  # its next prune was a minute away
        for _ in range(10):
            call = await stubs[follower].CreateCall(make_request(qos(1000)))
            await stubs[follower].DropCall(svc.DropCallRequest(name=call.name))
        assert await cluster.leader() == follower
        async with asyncio.timeout(15):
            while True:
                try:
                    await read_events(stubs[follower], 1, 2, within=1)
                except grpc.aio.AioRpcError as error:
                    assert reason(error) == "CURSOR_EXPIRED"
                    break
                await asyncio.sleep(0.2)


# -- a threaded provider on replicas ----------------------------------------------------------
async def test_a_threaded_reference_provider_shares_the_books_across_replicas(database_url: str) -> None:
    """`threaded = true` runs the provider on a loop of its own; its shared ledger still runs
    every transaction on the server's loop (where the database connections are), so two
    replicas still never admit beyond the link together, and a refused block writes nothing."""
    threaded = {"reference": {"threaded": True}, "no-qos": {}}
    async with (
        InProcessServer(storage="postgresql", database_url=database_url, providers=threaded) as first,
        InProcessServer(storage="postgresql", database_url=database_url, providers=threaded) as second,
        grpc.aio.insecure_channel(first.target) as one,
        grpc.aio.insecure_channel(second.target) as two,
    ):
        stubs = [svc_grpc.CallQosServiceStub(one), svc_grpc.CallQosServiceStub(two)]
        rate = 250_000
        outcomes = await asyncio.gather(
            *(stubs[i % 2].CreateCall(make_request(qos(rate))) for i in range(12)), return_exceptions=True
        )
        granted = [o for o in outcomes if isinstance(o, call_pb2.Call)]
        assert len(granted) == CAPACITY // rate
        assert {reason(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)} == {"QOS_UNAVAILABLE"}
        for stub in stubs:
            (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
            assert (link.sending_reserved_bytes_per_second, link.reservation_count) == (
                len(granted) * rate,
                len(granted),
            )


# -- readiness --------------------------------------------------------------------------------
async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_readiness_follows_the_database_and_liveness_does_not(postgres: PostgresServer) -> None:
    """The database away (connections refused, those open cut): the API service turns
    NOT_SERVING (readiness: a load balancer sends requests elsewhere) while the server itself
    stays SERVING (liveness: a restart would not help); back, it serves again and leads again."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(postgres, 1, stack)
        (channel,) = cluster.channels
        database_url = cluster.replicas[0].config.database_url
        await cluster.leader()

        async def until(service: str, status: int) -> None:
            async with asyncio.timeout(20):
                while await health_of(channel, service) != status:  # noqa: ASYNC110 -- another process's state
                    await asyncio.sleep(0.2)

        await allow_connections(postgres, database_url, False)
        await until(app.SERVICE_NAME, SERVING_STATUS.NOT_SERVING)
        assert await health_of(channel, "") == SERVING_STATUS.SERVING
        # A request that reaches it anyway fails as retryable, naming the cause; never INTERNAL.
        for attempt in (
            cluster.stubs[0].CreateCall(make_request(qos(10_000)), timeout=30),
            cluster.stubs[0].ListCalls(svc.ListCallsRequest(), timeout=30),
        ):
            error = await rpc_error(attempt)
            assert (error.code(), reason(error)) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            assert "the database cannot be reached" in details(error)["ErrorInfo"].metadata["cause"]
        await allow_connections(postgres, database_url, True)
        await until(app.SERVICE_NAME, SERVING_STATUS.SERVING)
        call = await cluster.stubs[0].CreateCall(make_request(qos(10_000)))
        assert call.state == State.STATE_CONNECTED
        await cluster.leader()


async def test_a_provider_out_of_process_is_refused_on_replicas(database_url: str) -> None:
    """A remote provider keeps its books in its own process, mirrored by each host: replicas would
    each mirror only their own calls (or launch a provider each), so such a configuration is
    refused (`callqos serve` exits with a configuration error), and the provider's own start
    refuses a shared ledger too, rather than over-admit."""
    remote = {"acme": {"plugin": "remote", "endpoint": "unix:///nonexistent/acme.sock"}}
    with pytest.raises(ConfigError, match="several replicas cannot share"):
        ServerProcess(storage="postgresql", database_url=database_url, providers=remote, default_provider="acme")
    store = await PostgresStore.open(database_url, pool_size=2)
    try:
        provider = RemoteProvider({"endpoint": "unix:///nonexistent/acme.sock"})
        provider.id = "acme"
        with pytest.raises(ProviderLoadError, match="several replicas cannot share"):
            await provider.start(Host(store.shared_ledger()), [])
    finally:
        await store.close()


async def test_a_replica_with_another_provider_list_does_not_start_and_cuts_no_call(postgres: PostgresServer) -> None:
    """REPL-5: a server starting with providers other than a live replica's would disconnect the
    calls of each provider it does not host — calls the other replica serves. It does not start
    (a configuration error, exit 2), and the other replica's calls stay as they were. With the
    other replica gone (`kill -9` included: the mark goes with its connection), the new list
    starts, and ends what no provider of it hosts any more (CALL-7)."""
    url = postgres.database()
    settings = {**REPLICA_SETTINGS, "providers": {"reference": {}, "no-qos": {}}}
    async with AsyncExitStack() as stack:
        first = ServerProcess(storage="postgresql", database_url=url, **settings)
        stack.callback(first.close)
        await asyncio.to_thread(first.start)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(first.target))
        stub = svc_grpc.CallQosServiceStub(channel)
        best_effort = await stub.CreateCall(
            make_request(qos(1_000), call_pb2.ServiceLevel.SERVICE_LEVEL_BEST_EFFORT, provider="providers/no-qos")
        )
        reserved = await stub.CreateCall(make_request(qos(10_000)))

        other = ServerProcess(storage="postgresql", database_url=url, **{**settings, "providers": {"reference": {}}})
        stack.callback(other.close)
        with pytest.raises(Exception):  # noqa: B017 -- the process exits before it serves
            await asyncio.to_thread(other.start)
        assert other.stop() == 2
        assert "another replica on this database hosts other providers" in other.log()
        for call in (best_effort, reserved):
            assert (await stub.GetCall(svc.GetCallRequest(name=call.name))).state == State.STATE_CONNECTED

        same = ServerProcess(storage="postgresql", database_url=url, **settings)  # the same list starts
        stack.callback(same.close)
        await asyncio.to_thread(same.start)
        same.stop()

        first.kill()
        await asyncio.to_thread(other.start)
        async with grpc.aio.insecure_channel(other.target) as again:
            stub = svc_grpc.CallQosServiceStub(again)
            ended = await stub.GetCall(svc.GetCallRequest(name=best_effort.name))
            assert ended.state == State.STATE_DISCONNECTED  # no-qos is hosted by no replica any more
            kept = await stub.GetCall(svc.GetCallRequest(name=reserved.name))
            assert kept.state == State.STATE_CONNECTED


async def test_a_replica_says_again_which_providers_it_hosts_after_the_database_was_away(
    postgres: PostgresServer,
) -> None:
    """REPL-5 across a database outage: the mark of a replica's provider list goes with its
    session, so the replica takes it again once the database is back (its readiness check), and
    a replica with another list is still refused."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(postgres, 1, stack)
        (channel,) = cluster.channels
        database_url = cluster.replicas[0].config.database_url

        async def until(status: int) -> None:
            async with asyncio.timeout(20):
                while await health_of(channel, app.SERVICE_NAME) != status:  # noqa: ASYNC110 -- another process's state
                    await asyncio.sleep(0.2)

        await allow_connections(postgres, database_url, False)  # every session cut: the mark with them
        await until(SERVING_STATUS.NOT_SERVING)
        await allow_connections(postgres, database_url, True)
        await until(SERVING_STATUS.SERVING)
        other = ServerProcess(
            storage="postgresql", database_url=database_url, **{**REPLICA_SETTINGS, "providers": {"reference": {}}}
        )
        stack.callback(other.close)
        with pytest.raises(Exception):  # noqa: B017 -- the process exits before it serves
            await asyncio.to_thread(other.start)
        assert other.stop() == 2
        assert "another replica on this database hosts other providers" in other.log()
