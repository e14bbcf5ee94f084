"""Quotas against a live server: a tenant's active calls and reserved bytes/s, and a principal's
open watch streams, are never exceeded — not by a concurrent burst whose admissions are all decided
before the first is committed (the store's check in the commit transaction is what holds then) —
and what the store refuses, the provider gets back.

Invariant (README "Security"): at every commit, each tenant's connected calls ≤ its active_calls
quota and its reserved bytes/s per direction ≤ its reserved_bytes_per_second quota (a commit that
does not raise usage is never refused); the link's reservations equal those of connected calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_testkit import PROVIDER_CALLS, AuditLines, bearer, jwt_settings
from server_testkit import details, make_request, qos, reason, rpc_error

from callqos.server.store.base import Usage
from callqos.server.store.sqlite import MEMORY, SqliteStore
from callqos.server.testing import InProcessServer
from callqos.server.testpki import TestIssuer
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CONNECTED = call_pb2.Call.State.STATE_CONNECTED
# Admissions decided at once but answered 0.2 s later: a burst is all admitted by the provider
# before any of it is committed, so only the store's transaction can keep the quota.
SLOW_COUNTING = {"reference": {"plugin": "security_testkit:CountingProvider", "delay_seconds": 0.2}}


async def burst(stub: svc_grpc.CallQosServiceStub, metadata: Any, requests: list[Any]) -> list[Any]:
    """Send every request at once; the answers (a Call or the AioRpcError), in order."""

    async def one(request: Any) -> Any:
        try:
            return await stub.CreateCall(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            return error

    return await asyncio.gather(*(one(r) for r in requests))


async def reserved(stub: svc_grpc.CallQosServiceStub, metadata: Any) -> tuple[int, int]:
    """(sending, receiving) bytes/s reserved on the reference provider's default link."""
    [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"), metadata=metadata)).links
    return link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second


async def connected(stub: svc_grpc.CallQosServiceStub, metadata: Any) -> list[Any]:
    listed = await stub.ListCalls(svc.ListCallsRequest(page_size=500), metadata=metadata)
    return [c for c in listed.calls if c.state == CONNECTED]


async def test_a_concurrent_burst_cannot_overshoot_the_active_call_quota(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    settings = jwt_settings(
        issuer, providers=SLOW_COUNTING, quota_active_calls=5, tenant_quotas={"big": {"active_calls": 8}}
    )
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        acme = bearer(issuer.token("alice", tenant="acme"))
        PROVIDER_CALLS.clear()
        answers = await burst(stub, acme, [make_request(qos(10_000)) for _ in range(20)])
        made = [a for a in answers if not isinstance(a, grpc.aio.AioRpcError)]
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(made) == 5 and len(refused) == 15
        for error in refused:
            assert (error.code(), reason(error)) == (EXHAUSTED, "QUOTA_EXCEEDED")
            [violation] = details(error)["QuotaFailure"].violations
            assert violation.subject == "tenant:acme" and "active_calls" in violation.description
        # All 20 were admitted by the provider; the 15 the store refused were released again,
        # so the link holds exactly what the 5 connected calls hold.
        assert sum(c.startswith("admit") for c in PROVIDER_CALLS) == 20
        assert sum(c.startswith("release") for c in PROVIDER_CALLS) == 15
        assert await reserved(stub, acme) == (5 * 10_000, 0)
        assert len(await connected(stub, acme)) == 5
        # Other tenants have quotas of their own; a dropped call makes room.
        big = bearer(issuer.token("bea", tenant="big"))
        assert (
            sum(not isinstance(a, grpc.aio.AioRpcError) for a in await burst(stub, big, [make_request(qos(1))] * 10))
            == 8
        )
        await stub.DropCall(svc.DropCallRequest(name=made[0].name), metadata=acme)
        assert (await stub.CreateCall(make_request(qos(10_000)), metadata=acme)).state == CONNECTED
        # The quota is checked before the provider, too: a tenant at its quota costs it nothing.
        PROVIDER_CALLS.clear()
        error = await rpc_error(stub.CreateCall(make_request(qos(10_000)), metadata=acme))
        assert reason(error) == "QUOTA_EXCEEDED" and PROVIDER_CALLS == []
    assert audit_lines.where(method="CreateCall", outcome="denied", reason="QUOTA_EXCEEDED", tenant="acme")


async def test_reserved_rate_quota_holds_for_bursts_and_renegotiation(tmp_path: Path, issuer: TestIssuer) -> None:
    settings = jwt_settings(issuer, providers=SLOW_COUNTING, quota_reserved_bytes_per_second=300_000)
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        acme = bearer(issuer.token("alice", tenant="acme"))
        answers = await burst(stub, acme, [make_request(qos(100_000, 50_000)) for _ in range(10)])
        made = [a for a in answers if not isinstance(a, grpc.aio.AioRpcError)]
        assert len(made) == 3
        assert await reserved(stub, acme) == (300_000, 150_000)
        # Growing a call beyond the quota is refused and changes nothing; shrinking is fine.
        error = await rpc_error(
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=made[0].name, qos=qos(150_000)), metadata=acme)
        )
        assert reason(error) == "QUOTA_EXCEEDED"
        assert (await stub.GetCall(svc.GetCallRequest(name=made[0].name), metadata=acme)).etag == made[0].etag
        smaller = await stub.RenegotiateCall(
            svc.RenegotiateCallRequest(name=made[0].name, qos=qos(40_000, 50_000)), metadata=acme
        )
        assert smaller.granted_qos.sending.token_rate_bytes_per_second == 40_000
        assert await reserved(stub, acme) == (240_000, 150_000)
        # Best effort reserves nothing and is not held back by the rate quota.
        free = await stub.CreateCall(make_request(qos(None)), metadata=acme)
        assert free.state == CONNECTED


async def test_a_renegotiation_the_store_refuses_is_taken_back_from_the_provider(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    """A renegotiation passes the quota check, but a concurrent admission of the same tenant
    commits first and fills the quota: the store refuses the renegotiation's commit, and the
    provider is asked to go back to the QoS the call keeps, so link and store agree."""
    provider = {"plugin": "security_testkit:CountingProvider", "delay_seconds": 0.1, "renegotiate_delay_seconds": 0.4}
    settings = jwt_settings(issuer, providers={"reference": provider}, quota_reserved_bytes_per_second=250_000)
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        acme = bearer(issuer.token("alice", tenant="acme"))
        first = await stub.CreateCall(make_request(qos(100_000)), metadata=acme)
        grow = stub.RenegotiateCall(svc.RenegotiateCallRequest(name=first.name, qos=qos(200_000)), metadata=acme)
        grown, second = await asyncio.gather(
            rpc_error(grow), stub.CreateCall(make_request(qos(100_000)), metadata=acme)
        )
        assert reason(grown) == "QUOTA_EXCEEDED" and second.state == CONNECTED
        kept = await stub.GetCall(svc.GetCallRequest(name=first.name), metadata=acme)
        assert kept.granted_qos.sending.token_rate_bytes_per_second == 100_000
        assert await reserved(stub, acme) == (200_000, 0)


async def test_open_watch_streams_per_principal(tmp_path: Path, issuer: TestIssuer) -> None:
    async with (
        InProcessServer(tmp_path, **jwt_settings(issuer, quota_watchers_per_principal=2)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        alice = bearer(issuer.token("alice", tenant="acme"))
        streams = [stub.WatchEvents(svc.WatchEventsRequest(), metadata=alice) for _ in range(2)]
        for stream in streams:
            await stream.initial_metadata()
        third = stub.WatchEvents(svc.WatchEventsRequest(), metadata=alice)
        error = await rpc_error(third.read())
        assert (error.code(), reason(error)) == (EXHAUSTED, "QUOTA_EXCEEDED")
        assert details(error)["QuotaFailure"].violations[0].subject == "principal:acme/alice"
        # Another principal has its own; a closed stream frees its place.
        other = stub.WatchEvents(svc.WatchEventsRequest(), metadata=bearer(issuer.token("bob", tenant="acme")))
        await other.initial_metadata()
        streams[0].cancel()
        for _ in range(50):
            again = stub.WatchEvents(svc.WatchEventsRequest(), metadata=alice)
            try:
                await asyncio.wait_for(again.read(), 0.1)
            except TimeoutError:
                break  # open and waiting for events: admitted
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)  # the cancelled stream is not closed yet
        else:
            raise AssertionError("a closed watch stream did not free its place")
        for stream in (*streams, other, again):
            stream.cancel()


async def test_the_watch_quota_and_the_per_principal_cap_bind_whichever_is_lower(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    """acme's quota (2) is below the server's per-principal cap (3): alice of acme is refused
    QUOTA_EXCEEDED at 2. globex's quota (10) is above it: alice of globex is refused
    TOO_MANY_WATCHERS (scope principal) at 3. The two alices are different principals."""
    settings = jwt_settings(
        issuer,
        quota_watchers_per_principal=2,
        tenant_quotas={"globex": {"watchers_per_principal": 10}},
        max_watchers_per_principal=3,
    )
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        opened = []
        for tenant, allowed, refused in (("acme", 2, "QUOTA_EXCEEDED"), ("globex", 3, "TOO_MANY_WATCHERS")):
            alice = bearer(issuer.token("alice", tenant=tenant))
            for _ in range(allowed):
                stream = stub.WatchEvents(svc.WatchEventsRequest(), metadata=alice)
                await stream.initial_metadata()
                opened.append(stream)
            error = await rpc_error(stub.WatchEvents(svc.WatchEventsRequest(), metadata=alice).read())
            assert (error.code(), reason(error)) == (EXHAUSTED, refused), tenant
            if refused == "QUOTA_EXCEEDED":
                assert details(error)["QuotaFailure"].violations[0].subject == f"principal:{tenant}/alice"
            else:
                assert details(error)["ErrorInfo"].metadata["scope"] == "principal"
        assert server.running.servicer.open_watchers == 5
        for stream in opened:
            stream.cancel()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 6),
    rate_limit=st.integers(0, 4),
    rates=st.lists(st.integers(1, 3), min_size=1, max_size=12),
)
async def test_no_burst_exceeds_any_quota(
    tmp_path_factory: Any, issuer: TestIssuer, limit: int, rate_limit: int, rates: list[int]
) -> None:
    """Over the range of quotas and bursts: connected calls and reserved rate never exceed the
    quota, a request is refused only when it would, and the link matches the connected calls."""
    unit = 10_000
    settings = jwt_settings(
        issuer,
        providers=SLOW_COUNTING,
        quota_active_calls=limit,
        quota_reserved_bytes_per_second=rate_limit * 2 * unit,
    )
    async with (
        InProcessServer(tmp_path_factory.mktemp("quota"), **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        who = bearer(issuer.token("p", tenant="t"))
        answers = await burst(stub, who, [make_request(qos(r * unit)) for r in rates])
        calls = await connected(stub, who)
        total = sum(c.granted_qos.sending.token_rate_bytes_per_second for c in calls)
        assert len(calls) <= limit
        if rate_limit:
            assert total <= rate_limit * 2 * unit
        assert await reserved(stub, who) == (total, 0)
        for answer, rate in zip(answers, rates, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                assert reason(answer) == "QUOTA_EXCEEDED"
                # Refused only when it could not have fitted beside what was connected.
                fits_count = len(calls) + 1 <= limit
                fits_rate = not rate_limit or total + rate * unit <= rate_limit * 2 * unit
                assert not (fits_count and fits_rate)


async def test_usage_at_the_largest_rates_is_exact_and_never_overflows() -> None:
    """Rates are uint64 and SQLite integers int64: each call's rate is stored saturated at the
    int64 maximum and the sums taken so that none overflows, so a tenant holding the largest
    grants (a link raised to 2^64-1) still commits, and its usage is what it holds, exactly."""
    store = SqliteStore(MEMORY)
    try:
        largest = 2**64 - 1
        calls = [
            call_pb2.Call(
                name=f"calls/big-{index}",
                provider="providers/reference",
                state=CONNECTED,
                tenant="acme",
                granted_qos=qos(largest, largest),
            )
            for index in range(3)
        ]
        await store.commit(calls, [])
        assert await store.usage("acme") == Usage(3, 3 * (2**63 - 1), 3 * (2**63 - 1))
        await store.commit(call_pb2.Call(name="calls/small", state=CONNECTED, tenant="acme", granted_qos=qos(7)), [])
        assert (await store.usage("acme")).sending == 3 * (2**63 - 1) + 7
    finally:
        await store.close()
