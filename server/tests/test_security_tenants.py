"""Tenant isolation against a live server: a tenant's calls and events are invisible to every
other tenant — Get/Renegotiate/Drop answer NOT_FOUND exactly as for a call that does not exist,
List shows only the tenant's calls, a watch delivers only the tenant's events — and links stay
platform-wide.

Invariant (README "Security"): nothing a caller of tenant T receives names, describes or announces
a call of another tenant, and what it receives about another tenant's call is indistinguishable
from what it receives about no call at all. Checked for a fixed scenario and, with hypothesis,
over random interleavings of operations by principals of three tenants."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_testkit import AuditLines, bearer, jwt_settings
from server_testkit import details, make_request, qos, rpc_error

from callqos.server.testing import InProcessServer
from callqos.server.testpki import TestIssuer
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import event_pb2

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def not_found_shape(error: grpc.aio.AioRpcError, name: str) -> tuple[Any, ...]:
    """What a NOT_FOUND tells, with the name it was asked about taken out."""
    info = details(error)["ErrorInfo"]
    metadata = {k: v.replace(name, "<name>") for k, v in info.metadata.items()}
    return error.code(), error.details().replace(name, "<name>"), info.reason, info.domain, sorted(metadata.items())


async def read_events(stub: svc_grpc.CallQosServiceStub, metadata: Any, until: int) -> list[Any]:
    """Every event a watcher from 0 receives, reading until it has seen sequence `until` or goes
    quiet (it is not told about other tenants' sequences)."""
    events = []
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0), metadata=metadata)
    try:
        while True:
            try:
                response = await asyncio.wait_for(stream.read(), timeout=0.3)
            except TimeoutError:
                break
            if response is grpc.aio.EOF:
                break
            events.append(response.event)
            if response.event.sequence >= until:
                break
    finally:
        stream.cancel()
    return events


async def test_another_tenants_calls_are_not_found_and_not_listed_or_watched(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    async with (
        InProcessServer(tmp_path, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        alice = bearer(issuer.token("alice", tenant="acme", roles=["caller"]))
        gus = bearer(issuer.token("gus", tenant="globex", roles=["caller", "admin", "monitor"]))
        secret = await stub.CreateCall(make_request(call_id="secret"), metadata=alice)
        mine = await stub.CreateCall(make_request(call_id="mine"), metadata=gus)
        attempts = {
            "GetCall": lambda name: stub.GetCall(svc.GetCallRequest(name=name), metadata=gus),
            "RenegotiateCall": lambda name: stub.RenegotiateCall(
                svc.RenegotiateCallRequest(name=name, qos=qos(1_000)), metadata=gus
            ),
            "DropCall": lambda name: stub.DropCall(svc.DropCallRequest(name=name), metadata=gus),
        }
        for method, attempt in attempts.items():
            theirs = await rpc_error(attempt(secret.name))
            nobodys = await rpc_error(attempt("calls/never-made"))
            assert theirs.code() == NOT_FOUND, method
            assert not_found_shape(theirs, secret.name) == not_found_shape(nobodys, "calls/never-made"), method
        # Call names are platform-wide (SPEC.md SEC-4): the name is taken, nothing more is told.
        taken = await rpc_error(stub.CreateCall(make_request(call_id="secret"), metadata=gus))
        assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
        assert details(taken)["ErrorInfo"].metadata == {"call": secret.name}
        listed = await stub.ListCalls(svc.ListCallsRequest(), metadata=gus)
        assert [c.name for c in listed.calls] == [mine.name]
        events = await read_events(stub, gus, until=10**9)
        assert events and {e.call for e in events} == {mine.name} and {e.tenant for e in events} == {"globex"}
        # Alice's call is untouched, and she sees only her own.
        assert (await stub.GetCall(svc.GetCallRequest(name=secret.name), metadata=alice)).etag == secret.etag
        assert [c.name for c in (await stub.ListCalls(svc.ListCallsRequest(), metadata=alice)).calls] == [secret.name]
        # Links are platform-wide: both tenants see the same link and what is reserved on it.
        links = [
            (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"), metadata=who)).links
            for who in (alice, gus)
        ]
        assert links[0] == links[1]
    probes = audit_lines.where(tenant="globex", outcome="denied", reason="CALL_NOT_FOUND")
    assert {p["method"] for p in probes} == set(attempts), "cross-tenant probes are audited as denials"
    assert all("acme" in p["detail"] for p in probes)
    assert audit_lines.where(method="CreateCall", tenant="globex", outcome="denied", reason="CALL_ALREADY_EXISTS")


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["create", "get", "renegotiate", "drop", "list"]),
        st.integers(0, 2),  # tenant
        st.integers(0, 1),  # principal within the tenant
        st.integers(0, 7),  # which call (by creation index), for get/renegotiate/drop
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
async def test_no_interleaving_of_operations_leaks_across_tenants(
    tmp_path_factory: Any, issuer: TestIssuer, operations: list[tuple[str, int, int, int]]
) -> None:
    tenants = ["t0", "t1", "t2"]
    async with (
        InProcessServer(tmp_path_factory.mktemp("tenants"), **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)

        def who(tenant: int, principal: int) -> Any:
            return bearer(issuer.token(f"p{principal}", tenant=tenants[tenant], roles=["caller"]))

        created: list[tuple[str, int]] = []  # (call name, tenant)
        for step, (operation, tenant, principal, index) in enumerate(operations):
            me = who(tenant, principal)
            if operation == "create":
                call = await stub.CreateCall(make_request(qos(1_000), call_id=f"c{step}"), metadata=me)
                assert call.tenant == tenants[tenant]
                created.append((call.name, tenant))
                continue
            if operation == "list":
                listed = await stub.ListCalls(svc.ListCallsRequest(page_size=500), metadata=me)
                assert {c.name for c in listed.calls} == {n for n, t in created if t == tenant}
                continue
            if not created:
                continue
            name, owner_tenant = created[index % len(created)]
            request: Any
            if operation == "get":
                call_rpc, request = stub.GetCall, svc.GetCallRequest(name=name)
            elif operation == "renegotiate":
                call_rpc, request = stub.RenegotiateCall, svc.RenegotiateCallRequest(name=name, qos=qos(2_000))
            else:
                call_rpc, request = stub.DropCall, svc.DropCallRequest(name=name)
            try:
                answer = await call_rpc(request, metadata=me)
            except grpc.aio.AioRpcError as error:
                if owner_tenant != tenant:
                    elsewhere = type(request)()
                    elsewhere.CopyFrom(request)
                    elsewhere.name = "calls/absent"  # the same request about a call that does not exist
                    absent = await rpc_error(call_rpc(elsewhere, metadata=me))
                    assert not_found_shape(error, name) == not_found_shape(absent, "calls/absent")
                else:
                    assert error.code() != NOT_FOUND
            else:
                assert owner_tenant == tenant and answer.tenant == tenants[tenant]
        for tenant in range(3):
            events = await read_events(stub, who(tenant, 0), until=10**9)
            mine = {n for n, t in created if t == tenant}
            assert {e.call for e in events} <= mine
            assert all(e.tenant == tenants[tenant] for e in events)
            assert {e.call for e in events if e.type == event_pb2.QOS_EVENT_TYPE_QOS_GRANTED} == mine
