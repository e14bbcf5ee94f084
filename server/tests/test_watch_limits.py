"""Limits on watchers: the total and per-principal caps (and a tenant's quota of streams per
principal, SEC-5) are never overshot, and a watcher that stops reading is cut with a resumable
status once its backlog outgrows the window, while one that keeps up is left alone
(conformance/SPEC.md WATCH-10, WATCH-11, WATCH-12)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_testkit import Level, details, make_request, owner, qos, reason

from callqos.client import AsyncClient
from callqos.server import testing
from callqos.server.errors import ServiceError
from callqos.server.security.identity import Caller
from callqos.server.watchers import Watcher, Watchers, WatchLimits
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import START_SEQUENCE_HEADER

# A client that reads only when told to: no BDP probing, so HTTP/2 flow control stops the server
# after a modest window instead of growing it to megabytes.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


async def opened(stub: svc_grpc.CallQosServiceStub, principal: str) -> tuple[str, object]:
    """Open a watch (after_sequence 0: a store read, an await, before the stream starts) and say
    how it went: ("open", call) or (reason, call)."""
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0), metadata=owner(principal))
    metadata = await stream.initial_metadata()
    if any(key == START_SEQUENCE_HEADER for key, _ in metadata or ()):
        return "open", stream
    try:
        await stream.read()
    except grpc.aio.AioRpcError as error:
        return reason(error), error
    raise AssertionError("a refused watch sent a message")


async def test_concurrent_watch_opens_never_overshoot_the_limits(tmp_path: Path) -> None:
    """50 watches opened at once against max_watchers=5: exactly 5 open, the rest are refused
    TOO_MANY_WATCHERS (the count used to be taken after an await, so all 50 got in)."""
    async with (
        testing.InProcessServer(tmp_path, max_watchers=5, max_watchers_per_principal=5) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        outcomes = await asyncio.gather(*(opened(stub, f"p{i % 7}") for i in range(50)))
        kinds = [kind for kind, _ in outcomes]
        assert kinds.count("open") == 5, kinds
        assert set(kinds) == {"open", "TOO_MANY_WATCHERS"}
        assert server.running.servicer.open_watchers == 5
        for kind, stream in outcomes:
            if kind == "open":
                stream.cancel()  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        assert server.running.servicer.open_watchers == 0


async def test_one_principal_cannot_take_every_watcher_slot(tmp_path: Path) -> None:
    async with (
        testing.InProcessServer(tmp_path, max_watchers=10, max_watchers_per_principal=3) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        greedy = await asyncio.gather(*(opened(stub, "greedy") for _ in range(8)))
        assert sorted(kind for kind, _ in greedy) == ["TOO_MANY_WATCHERS"] * 5 + ["open"] * 3
        _, refused = next(item for item in greedy if item[0] != "open")
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert details(refused)["ErrorInfo"].metadata["scope"] == "principal"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other, stream = await opened(stub, "someone-else")
        assert other == "open"
        for kind, each in [*greedy, (other, stream)]:
            if kind == "open":
                each.cancel()  # type: ignore[attr-defined]


BIG = b"x" * 4000  # provider_specific rides in every QOS_GRANTED event: fewer events fill the window


async def make_calls(stub: svc_grpc.CallQosServiceStub, count: int) -> None:
    for _ in range(count):
        await stub.CreateCall(make_request(qos(None, provider_specific=BIG), level=Level.SERVICE_LEVEL_BEST_EFFORT))


async def test_a_watcher_that_stops_reading_is_cut_and_resumes_without_loss(tmp_path: Path) -> None:
    """A client stops reading its watch; events pile up until HTTP/2 flow control stops the
    server. Once its backlog exceeds the window and it has not moved for the stall period, the
    server cuts it: UNAVAILABLE WATCHER_TOO_SLOW, its slot freed. The client's watch() resumes
    from its cursor and sees every event exactly once."""
    settings = {"watch_stall_seconds": 1.0, "watch_backlog_events": 20, "max_watchers": 2}
    async with testing.InProcessServer(tmp_path, **settings) as server:
        async with (
            grpc.aio.insecure_channel(server.target, options=SMALL_WINDOW) as reader_channel,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            stub = svc_grpc.CallQosServiceStub(channel)
            stalled = svc_grpc.CallQosServiceStub(reader_channel).WatchEvents(svc.WatchEventsRequest(after_sequence=0))
            await stalled.initial_metadata()
            deadline = time.monotonic() + 60
            while server.running.servicer.open_watchers and time.monotonic() < deadline:
                await make_calls(stub, 20)
                await asyncio.sleep(0.1)
            assert server.running.servicer.open_watchers == 0, "the stalled watcher was never cut"
            total = server.running.hub.last_sequence
            # The client reads again: what was buffered, then the status.
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async with asyncio.timeout(30):
                    async for response in stalled:
                        received.append(response.event.sequence)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(cut.value) == "WATCHER_TOO_SLOW"
            assert received == list(range(1, len(received) + 1)) and len(received) < total
            trailer = sum(len(key) + len(value) for key, value in cut.value.trailing_metadata() or ())
            assert trailer < 2048

        # The library watch resumes after the cut from its cursor and loses nothing.
        async with AsyncClient(server.target) as client:
            stream = client.watch(after_sequence=received[-1])
            rest = []
            async with asyncio.timeout(30):
                async for event in stream:
                    rest.append(event.sequence)
                    if event.sequence == total:
                        break
            await stream.aclose()
            assert received + rest == list(range(1, total + 1))


async def test_a_slow_reader_that_keeps_moving_is_not_cut(tmp_path: Path) -> None:
    """Reading slowly is not stalling: a watcher that keeps taking events, however far behind,
    keeps its stream."""
    settings = {"watch_stall_seconds": 0.5, "watch_backlog_events": 5}
    async with (
        testing.InProcessServer(tmp_path, **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        await make_calls(stub, 60)
        seen = []
        stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0))
        async with asyncio.timeout(30):
            async for response in stream:
                seen.append(response.event.sequence)
                await asyncio.sleep(0.05)  # 60 events over 3 s: six stall periods
                if len(seen) == 60:
                    break
        stream.cancel()
        assert seen == list(range(1, 61))


# -- the one rule of watch slots: server total, tenant quota, per-principal cap ----------------
SUBJECTS = [Caller(p, tenant=t) for t in ("acme", "globex") for p in ("alice", "bob")]


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 8),
    cap=st.integers(1, 5),
    quotas=st.fixed_dictionaries({"acme": st.integers(0, 5), "globex": st.integers(0, 5)}),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, len(SUBJECTS) - 1)), max_size=60),
)
def test_watch_slots_follow_one_rule(
    total: int, cap: int, quotas: dict[str, int], steps: list[tuple[bool, int]]
) -> None:
    """Random opens and closes by principals of two tenants, against a model: the server's total,
    then the tenant's quota (QUOTA_EXCEEDED, 0 = none), then the per-principal cap
    (TOO_MANY_WATCHERS scope=principal) — a principal holds at most min(quota, cap), the same
    name in another tenant is another principal, and no limit is ever exceeded."""
    watchers = Watchers(WatchLimits(total=total, per_principal=cap, stall_seconds=30.0, backlog_events=1000))
    held: dict[str, list[Watcher]] = {caller.subject: [] for caller in SUBJECTS}
    for opening, index in steps:
        caller = SUBJECTS[index]
        mine = held[caller.subject]
        if not opening:
            if mine:
                watchers.release(mine.pop())
            continue
        quota = quotas[caller.tenant]
        count = sum(len(each) for each in held.values())
        if count >= total:
            expected = ("TOO_MANY_WATCHERS", "server")
        elif quota and len(mine) >= quota:
            expected = ("QUOTA_EXCEEDED", None)
        elif len(mine) >= cap:
            expected = ("TOO_MANY_WATCHERS", "principal")
        else:
            expected = None
        try:
            mine.append(watchers.admit(caller, quota))
            outcome = None
        except ServiceError as refused:
            outcome = (refused.reason_name, refused.metadata.get("scope"))
            if refused.reason_name == "QUOTA_EXCEEDED":
                assert refused.metadata["subject"] == f"principal:{caller.subject}"
        assert outcome == expected
        assert watchers.open == sum(len(each) for each in held.values()) <= total
        for subject, each in held.items():
            tenant_quota = quotas[subject.partition("/")[0]]
            assert len(each) <= min(cap, tenant_quota or cap)
