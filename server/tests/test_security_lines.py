"""Lines and incoming calls under tenants, roles and quotas, against a live server
(conformance/SPEC.md SEC-3 … SEC-6, LINE-2, OFFER-1).

Invariants:
- A line belongs to its opener's tenant. Another tenant's line is NOT_FOUND exactly as a line
  that does not exist (GetLine, CloseLine), is never listed, and its address is not taken for
  anyone else: addresses are unique only among one tenant's open lines.
- A call rings only an open line of its caller's tenant; both legs carry that tenant; a call to an
  address only another tenant has a line for is an ordinary call. Nothing a tenant receives —
  answers, lists, events — names, describes or announces another tenant's line or offer.
- A provider's network calls ring the lines of the tenant its `incoming_tenant` names.
- An offered call reserves nothing and counts toward no quota; a connected pair counts once;
  an answer over quota fails QUOTA_EXCEEDED and leaves the call ringing, unchanged.
- Line mutations and answers are audited like other mutations; cross-tenant probes as denials.

Checked for fixed scenarios and, with hypothesis, over random interleavings of line operations
by principals of three tenants sharing one address."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from incoming_kit import NetworkProvider
from security_testkit import AuditLines, bearer, jwt_settings
from server_testkit import details, make_request, qos, reason, rpc_error
from test_security_tenants import not_found_shape, read_events

from callqos.server.testing import InProcessServer
from callqos.server.testpki import TestIssuer
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
E = event_pb2.QosEventType
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ADDRESS = "sip:frontdesk@example.test"


def open_request(address: str = ADDRESS, line_id: str = "") -> svc.CreateLineRequest:
    return svc.CreateLineRequest(line=line_pb2.Line(address=address), line_id=line_id)


async def test_lines_and_their_calls_stay_within_their_tenant(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    async with (
        InProcessServer(tmp_path, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)

        def who(principal: str, tenant: str, *roles: str) -> Any:
            return bearer(issuer.token(principal, tenant=tenant, roles=list(roles)))

        alice, bob, mo = who("alice", "acme", "caller"), who("bob", "acme", "caller"), who("mo", "acme", "monitor")
        gus = who("gus", "globex", "caller", "admin", "monitor")
        ivy = who("ivy", "initech", "caller")

        # Both tenants open a line for the same address: an address is a tenant's own.
        acme_line = await stub.CreateLine(open_request(line_id="frontdesk"), metadata=bob)
        globex_line = await stub.CreateLine(open_request(), metadata=gus)
        assert (acme_line.tenant, globex_line.tenant) == ("acme", "globex")
        # A second one in the same tenant is refused, naming only the tenant's own line.
        taken = await rpc_error(stub.CreateLine(open_request(), metadata=alice))
        assert reason(taken) == "ADDRESS_IN_USE"
        assert details(taken)["ErrorInfo"].metadata["line"] == acme_line.name

        # Another tenant's line is not found, exactly like a line that never was.
        for method, attempt in {
            "GetLine": lambda name: stub.GetLine(svc.GetLineRequest(name=name), metadata=gus),
            "CloseLine": lambda name: stub.CloseLine(svc.CloseLineRequest(name=name), metadata=gus),
        }.items():
            theirs, nobodys = await rpc_error(attempt(acme_line.name)), await rpc_error(attempt("lines/never"))
            assert theirs.code() == NOT_FOUND, method
            assert not_found_shape(theirs, acme_line.name) == not_found_shape(nobodys, "lines/never"), method
        # Line names are platform-wide: the line_id is taken, and nothing more is told.
        clash = await rpc_error(stub.CreateLine(open_request("sip:other@example.test", "frontdesk"), metadata=gus))
        assert (clash.code(), reason(clash)) == (grpc.StatusCode.ALREADY_EXISTS, "LINE_ALREADY_EXISTS")
        assert details(clash)["ErrorInfo"].metadata == {"line": acme_line.name}
        # Lists are per tenant, whatever the filter.
        for me, mine in ((gus, globex_line), (alice, acme_line), (mo, acme_line)):
            for query in ("", f'address = "{ADDRESS}"', "state = OPEN"):
                listed = await stub.ListLines(svc.ListLinesRequest(filter=query), metadata=me)
                assert [line.name for line in listed.lines] == [mine.name], (query, me)

        # A call rings only the line of its caller's tenant; both legs are of that tenant.
        ringing = await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=alice)
        assert ringing.state == State.STATE_RINGBACK and ringing.tenant == "acme"
        offered = await stub.GetCall(svc.GetCallRequest(name=ringing.peer), metadata=bob)
        assert (offered.line, offered.owner, offered.tenant) == (acme_line.name, "bob", "acme")
        theirs = await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=gus)
        assert theirs.state == State.STATE_RINGBACK and theirs.tenant == "globex"
        their_offer = await stub.GetCall(svc.GetCallRequest(name=theirs.peer), metadata=gus)
        assert (their_offer.line, their_offer.tenant) == (globex_line.name, "globex")
        # A tenant without a line for the address makes an ordinary call: it rings no one.
        plain = await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=ivy)
        assert plain.state == State.STATE_CONNECTED and not plain.peer

        # Another tenant can neither answer, reject nor read the offer.
        for attempt in (
            stub.AnswerCall(svc.AnswerCallRequest(name=offered.name), metadata=gus),
            stub.RejectCall(svc.RejectCallRequest(name=offered.name), metadata=gus),
            stub.GetCall(svc.GetCallRequest(name=offered.name), metadata=gus),
        ):
            error = await rpc_error(attempt)
            assert (error.code(), reason(error)) == (NOT_FOUND, "CALL_NOT_FOUND")
        # Calls offered on the line, listed by it, are the tenant's only.
        on_line = await stub.ListCalls(svc.ListCallsRequest(filter=f'line = "{acme_line.name}"'), metadata=gus)
        assert list(on_line.calls) == []

        answered = await stub.AnswerCall(svc.AnswerCallRequest(name=offered.name), metadata=bob)
        assert answered.state == State.STATE_CONNECTED and answered.tenant == "acme"
        caller = await stub.GetCall(svc.GetCallRequest(name=ringing.name), metadata=alice)
        assert caller.state == State.STATE_CONNECTED

        # Watchers see their own tenant's offers only: a monitor of acme the acme line's,
        # globex's watcher (even filtering on acme's line) nothing of acme.
        acme_events = await read_events(stub, mo, until=10**9)
        assert {e.tenant for e in acme_events} == {"acme"}
        assert {e.call for e in acme_events if e.type == E.QOS_EVENT_TYPE_CALL_OFFERED} == {offered.name}
        assert {e.line for e in acme_events if e.line} == {acme_line.name}
        globex_events = await read_events(stub, gus, until=10**9)
        assert {e.tenant for e in globex_events} == {"globex"}
        assert not {e.call for e in globex_events} & {offered.name, ringing.name}
        stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, line=acme_line.name), metadata=gus)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stream.read(), timeout=0.5)
        finally:
            stream.cancel()
        await stub.RejectCall(svc.RejectCallRequest(name=their_offer.name), metadata=gus)

        # The owner closes its line; the other tenant's line for the same address stays open.
        closed = await stub.CloseLine(svc.CloseLineRequest(name=acme_line.name), metadata=bob)
        assert closed.state == line_pb2.Line.State.STATE_CLOSED
        still = await stub.GetLine(svc.GetLineRequest(name=globex_line.name), metadata=gus)
        assert still.state == line_pb2.Line.State.STATE_OPEN

    # Mutations of lines and offers are audited, and the cross-tenant probes as denials.
    for method, principal in (
        ("CreateLine", "bob"),
        ("AnswerCall", "bob"),
        ("CloseLine", "bob"),
        ("RejectCall", "gus"),
    ):
        assert audit_lines.where(method=method, principal=principal, outcome="ok"), method
    probes = audit_lines.where(tenant="globex", outcome="denied")
    assert {(p["method"], p["reason"]) for p in probes} >= {
        ("GetLine", "LINE_NOT_FOUND"),
        ("CloseLine", "LINE_NOT_FOUND"),
        ("CreateLine", "LINE_ALREADY_EXISTS"),
        ("AnswerCall", "CALL_NOT_FOUND"),
        ("RejectCall", "CALL_NOT_FOUND"),
    }
    assert all("acme" in p["detail"] for p in probes)


async def test_a_connected_pair_counts_once_toward_quotas_and_an_offer_not_at_all(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    settings = jwt_settings(issuer, tenant_quotas={"acme": {"active_calls": 1}})
    async with (
        InProcessServer(tmp_path, **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        alice = bearer(issuer.token("alice", tenant="acme", roles=["caller"]))
        bob = bearer(issuer.token("bob", tenant="acme", roles=["caller"]))
        await stub.CreateLine(open_request(), metadata=bob)
        # Offers count nothing: two ring at once under a quota of one.
        first = await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=alice)
        second = await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=alice)
        # Connected, the pair is one active call (not two legs): the quota of one admits it.
        await stub.AnswerCall(svc.AnswerCallRequest(name=first.peer), metadata=bob)
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"), metadata=bob)).links
        assert link.sending_reserved_bytes_per_second == 10_000
        # The second answer would be a second active call: refused, and nothing changed.
        before = await stub.GetCall(svc.GetCallRequest(name=second.peer), metadata=bob)
        over = await rpc_error(stub.AnswerCall(svc.AnswerCallRequest(name=second.peer), metadata=bob))
        assert (over.code(), reason(over)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert details(over)["QuotaFailure"].violations[0].subject == "tenant:acme"
        after = await stub.GetCall(svc.GetCallRequest(name=second.peer), metadata=bob)
        assert after == before and after.state == State.STATE_OFFERING
        assert (await stub.GetCall(svc.GetCallRequest(name=second.name), metadata=alice)).state == State.STATE_RINGBACK
        # Once the first pair ends, the second may be answered.
        await stub.DropCall(svc.DropCallRequest(name=first.name), metadata=alice)
        answered = await stub.AnswerCall(svc.AnswerCallRequest(name=second.peer), metadata=bob)
        assert answered.state == State.STATE_CONNECTED


async def test_concurrent_answers_never_take_a_tenant_over_its_quota(tmp_path: Path, issuer: TestIssuer) -> None:
    """Both answers pass the check made before the provider is asked (the provider decides slowly,
    so both are admitted before either commits); the store's check in the commit refuses the
    second, its grant is released, and its call rings on."""
    slow = {"reference": {"plugin": "security_testkit:CountingProvider", "delay_seconds": 0.3}}
    settings = jwt_settings(issuer, tenant_quotas={"acme": {"active_calls": 1}})
    async with (
        InProcessServer(tmp_path, providers=slow, **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        alice = bearer(issuer.token("alice", tenant="acme", roles=["caller"]))
        bob = bearer(issuer.token("bob", tenant="acme", roles=["caller"]))
        await stub.CreateLine(open_request(), metadata=bob)
        rings = [
            await stub.CreateCall(make_request(qos(10_000), destination=ADDRESS), metadata=alice) for _ in range(2)
        ]
        outcomes = await asyncio.gather(
            *(stub.AnswerCall(svc.AnswerCallRequest(name=ring.peer), metadata=bob) for ring in rings),
            return_exceptions=True,
        )
        connected = [o for o in outcomes if isinstance(o, call_pb2.Call)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(connected) == 1 and len(refused) == 1, outcomes
        assert reason(refused[0]) == "QUOTA_EXCEEDED"
        states = {(await stub.GetCall(svc.GetCallRequest(name=ring.peer), metadata=bob)).state for ring in rings}
        assert states == {State.STATE_CONNECTED, State.STATE_OFFERING}
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"), metadata=bob)).links
        assert link.sending_reserved_bytes_per_second == 10_000, "the refused answer's grant was released"


async def test_network_calls_ring_the_lines_of_the_providers_incoming_tenant(
    tmp_path: Path, issuer: TestIssuer
) -> None:
    providers = {"net": {"plugin": "incoming_kit:NetworkProvider", "incoming_tenant": "globex"}}
    async with (
        InProcessServer(tmp_path, providers=providers, default_provider="net", **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        bob = bearer(issuer.token("bob", tenant="acme", roles=["caller"]))
        gus = bearer(issuer.token("gus", tenant="globex", roles=["caller"]))
        provider = server.running.providers.get("providers/net").provider
        assert isinstance(provider, NetworkProvider)
        await stub.CreateLine(open_request(), metadata=bob)
        # Only acme has a line for the address: the network's call is not offered to it.
        assert await provider.ring(destination=ADDRESS) is None
        line = await stub.CreateLine(open_request(), metadata=gus)
        name = await provider.ring(destination=ADDRESS)
        assert name is not None
        call = await stub.GetCall(svc.GetCallRequest(name=name), metadata=gus)
        assert (call.line, call.tenant, call.owner) == (line.name, "globex", "gus")
        error = await rpc_error(stub.GetCall(svc.GetCallRequest(name=name), metadata=bob))
        assert reason(error) == "CALL_NOT_FOUND"


LINE_OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["open", "close", "ring", "answer", "get", "list"]),
        st.integers(0, 2),  # tenant
        st.integers(0, 1),  # principal within the tenant
        st.integers(0, 7),  # which line or offer (by creation index)
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=LINE_OPERATIONS)
async def test_no_interleaving_of_line_operations_leaks_across_tenants(
    tmp_path_factory: Any, issuer: TestIssuer, operations: list[tuple[str, int, int, int]]
) -> None:
    """Principals of three tenants open and close lines for ONE address, call it, answer, read and
    list, in any order. A model says what each must see: its own tenant's open line rings (or the
    call is an ordinary one), another tenant's line or offer is NOT_FOUND exactly as a missing one,
    lists and watches hold the tenant's own only."""
    tenants = ["t0", "t1", "t2"]
    async with (
        InProcessServer(tmp_path_factory.mktemp("lines"), **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)

        def who(tenant: int, principal: int) -> Any:
            return bearer(issuer.token(f"p{principal}", tenant=tenants[tenant], roles=["caller"]))

        open_now: dict[int, str] = {}  # tenant → its open line for ADDRESS
        lines: list[tuple[str, int, int]] = []  # (name, tenant, owner principal)
        offers: list[tuple[str, int]] = []  # (offered leg, tenant)
        for operation, tenant, principal, index in operations:
            me = who(tenant, principal)
            if operation == "open":
                attempt = stub.CreateLine(open_request(), metadata=me)
                if tenant in open_now:
                    error = await rpc_error(attempt)
                    assert reason(error) == "ADDRESS_IN_USE"
                    assert details(error)["ErrorInfo"].metadata["line"] == open_now[tenant]
                else:
                    line = await attempt
                    assert line.tenant == tenants[tenant]
                    open_now[tenant] = line.name
                    lines.append((line.name, tenant, principal))
            elif operation == "ring":
                call = await stub.CreateCall(make_request(qos(1_000), destination=ADDRESS), metadata=me)
                assert call.tenant == tenants[tenant]
                if tenant in open_now:
                    assert call.state == State.STATE_RINGBACK
                    offered = await stub.GetCall(svc.GetCallRequest(name=call.peer), metadata=me)
                    assert (offered.line, offered.tenant) == (open_now[tenant], tenants[tenant])
                    offers.append((offered.name, tenant))
                else:
                    assert call.state == State.STATE_CONNECTED and not call.peer
                    await stub.DropCall(svc.DropCallRequest(name=call.name), metadata=me)
            elif operation == "list":
                listed = await stub.ListLines(svc.ListLinesRequest(page_size=500), metadata=me)
                assert {line.name for line in listed.lines} == {n for n, t, _ in lines if t == tenant}
            elif operation in ("close", "get") and lines:
                name, owner_tenant, owner = lines[index % len(lines)]
                rpc: Any = (
                    stub.CloseLine(svc.CloseLineRequest(name=name), metadata=me)
                    if operation == "close"
                    else stub.GetLine(svc.GetLineRequest(name=name), metadata=me)
                )
                if owner_tenant != tenant:
                    absent = (
                        stub.CloseLine(svc.CloseLineRequest(name="lines/absent"), metadata=me)
                        if operation == "close"
                        else stub.GetLine(svc.GetLineRequest(name="lines/absent"), metadata=me)
                    )
                    assert not_found_shape(await rpc_error(rpc), name) == not_found_shape(
                        await rpc_error(absent), "lines/absent"
                    )
                elif operation == "close" and owner != principal:
                    assert reason(await rpc_error(rpc)) == "NOT_OWNER"
                else:
                    line = await rpc
                    assert line.tenant == tenants[tenant]
                    if operation == "close" and open_now.get(tenant) == name:
                        del open_now[tenant]
            elif operation == "answer" and offers:
                name, owner_tenant = offers[index % len(offers)]
                try:
                    answered = await stub.AnswerCall(svc.AnswerCallRequest(name=name), metadata=me)
                except grpc.aio.AioRpcError as error:
                    if owner_tenant != tenant:
                        assert (error.code(), reason(error)) == (NOT_FOUND, "CALL_NOT_FOUND")
                    else:
                        assert reason(error) in ("NOT_OWNER", "CALL_NOT_OFFERING")
                else:
                    assert owner_tenant == tenant and answered.tenant == tenants[tenant]
        for tenant in range(3):
            events = await read_events(stub, who(tenant, 0), until=10**9)
            assert all(e.tenant == tenants[tenant] for e in events)
            assert {e.line for e in events if e.line} <= {n for n, t, _ in lines if t == tenant}
            assert {e.call for e in events if e.type == E.QOS_EVENT_TYPE_CALL_OFFERED} == {
                n for n, t in offers if t == tenant
            }
