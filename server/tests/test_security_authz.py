"""Authorisation against a live server: what each role may do (every method against every combination of
the built-in roles), ownership, admin's drop, roles defined in configuration, and that a denial is
decided before any provider is asked."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import grpc
import pytest
from security_testkit import COUNTING, PROVIDER_CALLS, AuditLines, bearer, jwt_settings
from server_testkit import make_request, qos, reason, rpc_error

from callqos.server.security import guard as guard_module
from callqos.server.security.authz import BUILTIN_ROLES, METHOD_PERMISSIONS
from callqos.server.testing import InProcessServer
from callqos.server.testpki import TestIssuer
from callqos.v1 import call_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

DENIED = grpc.StatusCode.PERMISSION_DENIED
ROLES = sorted(BUILTIN_ROLES)


def requests(call: str, line: str = "lines/x", offered: str = "calls/y", n: int = 0) -> dict[str, tuple[str, Any]]:
    """One request per method, aimed at `call` (an existing call of the tenant), `line` (a line of
    the tenant) and `offered` (a call ringing on it); the `n`th such set."""
    return {
        "CreateLine": ("CreateLine", svc.CreateLineRequest(line=line_pb2.Line(address=f"sip:new-{n}@example.test"))),
        "GetLine": ("GetLine", svc.GetLineRequest(name=line)),
        "ListLines": ("ListLines", svc.ListLinesRequest()),
        "AnswerCall": ("AnswerCall", svc.AnswerCallRequest(name=offered)),
        "RejectCall": ("RejectCall", svc.RejectCallRequest(name=offered)),
        "CloseLine": ("CloseLine", svc.CloseLineRequest(name=line)),
        "CreateCall": ("CreateCall", make_request()),
        "GetCall": ("GetCall", svc.GetCallRequest(name=call)),
        "ListCalls": ("ListCalls", svc.ListCallsRequest()),
        "RenegotiateCall": ("RenegotiateCall", svc.RenegotiateCallRequest(name=call, qos=qos(50_000))),
        "DropCall": ("DropCall", svc.DropCallRequest(name=call)),
        "ExtendCall": ("ExtendCall", svc.ExtendCallRequest(name=call)),
        "GetProvider": ("GetProvider", svc.GetProviderRequest(name="providers/reference")),
        "ListProviders": ("ListProviders", svc.ListProvidersRequest()),
        "ListLinks": ("ListLinks", svc.ListLinksRequest(parent="providers/reference")),
        "UpdateLink": (
            "UpdateLink",
            svc.UpdateLinkRequest(
                link={"name": "providers/reference/links/default", "capacity_bytes_per_second": 1_250_000},
                update_mask={"paths": ["capacity_bytes_per_second"]},
            ),
        ),
    }


async def test_every_method_against_every_combination_of_roles(tmp_path: Path, issuer: TestIssuer) -> None:
    """PERMISSION_DENIED exactly when none of the caller's roles grants what the method needs —
    for all 16 combinations of the four built-in roles and every method — and a denied request
    never reaches the provider. (The principal owns the call it acts on, so only roles decide.)"""
    assert set(requests("calls/x")) | {"WatchEvents"} == set(METHOD_PERMISSIONS)
    async with (
        InProcessServer(tmp_path, providers=COUNTING, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        quinn = bearer(issuer.token("quinn", tenant="acme", roles=["caller"]))
        for size in range(len(ROLES) + 1):
            for n, roles in enumerate(itertools.combinations(ROLES, size)):
                granted = set().union(*(BUILTIN_ROLES[r] for r in roles))
                owner = bearer(issuer.token("pat", tenant="acme", roles=["caller"]))
                call = await stub.CreateCall(make_request(), metadata=owner)
                address = f"sip:pat-{size}-{n}@example.test"
                line = await stub.CreateLine(svc.CreateLineRequest(line=line_pb2.Line(address=address)), metadata=owner)
                ringing = await stub.CreateCall(make_request(qos(1_000), destination=address), metadata=quinn)
                me = bearer(issuer.token("pat", tenant="acme", roles=list(roles)))
                for method, (rpc, request) in requests(call.name, line.name, ringing.peer, size * 100 + n).items():
                    PROVIDER_CALLS.clear()
                    try:
                        await getattr(stub, rpc)(request, metadata=me)
                        outcome = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as error:
                        outcome = error.code()
                        if outcome == DENIED:
                            assert reason(error) == "PERMISSION_DENIED", (roles, method)
                            assert PROVIDER_CALLS == [], (roles, method)
                    allowed = METHOD_PERMISSIONS[method] in granted
                    assert (outcome != DENIED) == allowed, (roles, method, outcome)
                    assert outcome != grpc.StatusCode.UNAUTHENTICATED
                watch = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0), metadata=me)
                try:
                    await watch.read()
                    watched = True
                except grpc.aio.AioRpcError as error:
                    assert error.code() == DENIED, roles
                    watched = False
                finally:
                    watch.cancel()
                assert watched == (METHOD_PERMISSIONS["WatchEvents"] in granted), roles


async def test_monitors_read_callers_own_operators_change_links_admins_drop(
    tmp_path: Path, issuer: TestIssuer, audit_lines: AuditLines
) -> None:
    async with (
        InProcessServer(tmp_path, providers=COUNTING, **jwt_settings(issuer)) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)

        def who(principal: str, *roles: str) -> Any:
            return bearer(issuer.token(principal, tenant="acme", roles=list(roles)))

        alice, bob = who("alice", "caller"), who("bob", "caller")
        monitor, operator, admin = who("mo", "monitor"), who("op", "operator"), who("ann", "admin")
        call = await stub.CreateCall(make_request(), metadata=alice)
        # A monitor reads and watches, and cannot mutate.
        assert (await stub.GetCall(svc.GetCallRequest(name=call.name), metadata=monitor)).name == call.name
        for attempt in (
            stub.CreateCall(make_request(), metadata=monitor),
            stub.DropCall(svc.DropCallRequest(name=call.name), metadata=monitor),
            stub.ExtendCall(svc.ExtendCallRequest(name=call.name), metadata=monitor),
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(1)), metadata=monitor),
        ):
            assert (await rpc_error(attempt)).code() == DENIED
        # A caller changes its own calls only, and cannot touch link capacity.
        error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name), metadata=bob))
        assert (error.code(), reason(error)) == (DENIED, "NOT_OWNER")
        update = requests(call.name)["UpdateLink"][1]
        PROVIDER_CALLS.clear()
        error = await rpc_error(stub.UpdateLink(update, metadata=alice))
        assert (error.code(), reason(error)) == (DENIED, "PERMISSION_DENIED")
        assert PROVIDER_CALLS == []
        # The operator changes capacity; everyone sees links.
        assert (await stub.UpdateLink(update, metadata=operator)).link.capacity_bytes_per_second == 1_250_000
        for reader in (alice, monitor, operator, admin):
            links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"), metadata=reader)
            assert links.links
        # An admin drops any call of its tenant.
        dropped = await stub.DropCall(svc.DropCallRequest(name=call.name), metadata=admin)
        assert dropped.state == dropped.State.STATE_DISCONNECTED
    assert audit_lines.where(method="UpdateLink", outcome="denied", principal="alice", reason="PERMISSION_DENIED")
    assert audit_lines.where(method="UpdateLink", outcome="ok", principal="op", resource=update.link.name)
    assert audit_lines.where(method="DropCall", outcome="ok", principal="ann", resource=call.name)
    assert audit_lines.where(method="CreateCall", outcome="denied", principal="mo")


async def test_roles_defined_in_configuration(tmp_path: Path, issuer: TestIssuer) -> None:
    settings = jwt_settings(
        issuer,
        roles={"auditor": ["calls.get", "calls.list"], "caller": ["calls.create", "calls.get"]},
        default_roles=["auditor"],
    )
    async with InProcessServer(tmp_path, **settings) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        caller = bearer(issuer.token("c", tenant="t", roles=["caller"]))
        call = await stub.CreateCall(make_request(), metadata=caller)
        # The redefined caller may no longer drop; a token without roles gets the default role.
        assert (await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name), metadata=caller))).code() == DENIED
        plain = bearer(issuer.token("d", tenant="t"))
        assert (await stub.ListCalls(svc.ListCallsRequest(), metadata=plain)).calls
        assert (await rpc_error(stub.CreateCall(make_request(), metadata=plain))).code() == DENIED


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"roles": {"x": ["calls.explode"]}}, "unknown permission"),
        ({"default_roles": ["wizard"]}, "unknown role"),
        ({"principals": {"p": {"roles": ["wizard"]}}}, "unknown role"),
        ({"tenant_quotas": {"t": {"calls": 3}}}, "unknown quota"),
    ],
)
async def test_bad_security_tables_stop_the_server(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    from callqos.server.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        async with InProcessServer(tmp_path, **settings):
            pass


async def test_development_mode_keeps_the_header_behaviour(tmp_path: Path) -> None:
    """No authenticator, on loopback: the principal header from anyone, one tenant, and every
    caller may make calls, read, watch and change links — as before authentication existed."""
    async with InProcessServer(tmp_path) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        call = await stub.CreateCall(make_request(), metadata=(("x-callqos-principal", "alice"),))
        assert (call.owner, call.tenant) == ("alice", "default")
        anonymous = await stub.CreateCall(make_request())
        assert anonymous.owner == "anonymous"
        error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name)))
        assert reason(error) == "NOT_OWNER"
        await stub.UpdateLink(requests(call.name)["UpdateLink"][1])


async def test_development_mode_reads_the_principal_of_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Guard keeps the callers of development mode for reuse (`guard._development_key`):
    still, each request on one connection acts as the principal it names, a repeated header counts
    once (the first), a malformed one is refused every time, and a full cache forgets, not mixes up."""
    monkeypatch.setattr(guard_module, "DEVELOPMENT_CALLERS", 2)
    as_ = {name: (("x-callqos-principal", name),) for name in ("alice", "bob", "carol")}
    async with InProcessServer(tmp_path) as server, grpc.aio.insecure_channel(server.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        calls = {name: await stub.CreateCall(make_request(), metadata=metadata) for name, metadata in as_.items()}
        assert {name: call.owner for name, call in calls.items()} == {name: name for name in as_}
        twice = (("x-callqos-principal", "bob"), ("x-callqos-principal", "alice"))
        assert (await stub.CreateCall(make_request(), metadata=twice)).owner == "bob"
        for _ in range(2):
            malformed = await rpc_error(
                stub.GetCall(
                    svc.GetCallRequest(name=calls["alice"].name), metadata=(("x-callqos-principal", "x" * 129),)
                )
            )
            assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
        for name, other in (("alice", "bob"), ("bob", "carol"), ("carol", "alice")):
            error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=calls[name].name), metadata=as_[other]))
            assert reason(error) == "NOT_OWNER"
            dropped = await stub.DropCall(svc.DropCallRequest(name=calls[name].name), metadata=as_[name])
            assert dropped.state == call_pb2.Call.State.STATE_DISCONNECTED
