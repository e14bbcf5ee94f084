"""CORE-RESP / CORE-CAP / CORE-IDEM / CORE-OWN / CORE-ERR: responsiveness, advertised
capabilities and their negative probes, idempotency, ownership and not-found errors."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.harness import Call, CheckContext, Level, Outcome, RpcFailure, same
from callqos.conformance.model import CheckFailed
from callqos.conformance.rules import RESERVING, QosSpec, best_effort
from callqos.v1 import callqos_service_pb2 as svc

BE_QOS = QosSpec(sending=best_effort(), receiving=best_effort())


@check("CORE-RESP-001", "The provider answers a simple request within its deadline", MUST, "core",
       "TSPI ASYNC_COMPLETION: every request completes; errors.proto PROVIDER_UNAVAILABLE; §8.5 #23", preflight=True)
async def responsive(ctx: CheckContext) -> None:
    """CreateCall(best effort, BEST_EFFORT level) answers in time; its first event fixes the run's event cursor."""
    call = await ctx.create(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    try:
        events = await ctx.events(call.name, until=lambda got: bool(got), settle=0, after=0)
        ctx.session.cursor = max(events[0].sequence - 1, 0)
    except CheckFailed:
        pass  # missing events are the events profile's to report


@check("CORE-CAP-001", "Advertised capabilities are coherent and the same from GetProvider and ListProviders", MUST, "core",
       "provider.proto ProviderCapabilities: must not change while serving; qos_supported=false reserves nothing")
async def capabilities(ctx: CheckContext) -> None:
    """GetProvider == ListProviders entry; without qos_supported no reserving service type is advertised."""
    got = await ctx.rpc("GetProvider", svc.GetProviderRequest(name=ctx.provider))
    listed = await ctx.rpc("ListProviders", svc.ListProvidersRequest())
    entry = [p for p in listed.providers if p.name == ctx.provider]
    if not entry:
        raise CheckFailed(f"{ctx.provider} is missing from ListProviders")
    if not same(entry[0].capabilities, got.capabilities) or not same(got.capabilities, ctx.caps):
        raise CheckFailed("capabilities differ between GetProvider, ListProviders and the start of the run")
    if not got.capabilities.qos_supported and any(t in RESERVING for t in got.capabilities.service_types):
        raise CheckFailed("qos_supported is false but a reserving service type is advertised")


@check("CORE-CAP-002", "Without link_admin, ListLinks is refused cleanly (UNIMPLEMENTED)", MUST, "core",
       "errors.proto LINK_ADMIN_UNSUPPORTED (UNIMPLEMENTED); LINEERR_OPERATIONUNAVAIL", needs=("!link_admin",))
async def no_link_admin(ctx: CheckContext) -> None:
    """ListLinks(provider) → UNIMPLEMENTED LINK_ADMIN_UNSUPPORTED."""
    await ctx.expect_error("ListLinks", svc.ListLinksRequest(parent=ctx.provider), grpc.StatusCode.UNIMPLEMENTED, "LINK_ADMIN_UNSUPPORTED")


@check("CORE-IDEM-001", "A repeated request_id returns the first call and reserves nothing more", MUST, "core",
       "callqos_service.proto CreateCallRequest.request_id (AIP-155): same outcome, nothing more reserved; §8.5 #23")
async def idempotent_create(ctx: CheckContext) -> None:
    """CreateCall twice with one request_id and body → the same call; link reservations grow once; a
    different body under the same request_id → INVALID_ARGUMENT REQUEST_ID_REUSED."""
    qos = ctx.params.feasible or BE_QOS
    request = ctx.request(qos, Level.SERVICE_LEVEL_IF_AVAILABLE, request_id=f"req-{ctx.unique()}")
    first = await ctx.create(qos, request=request)
    after_first = await ctx.reserved() if ctx.caps.link_admin else None
    for _ in range(3):
        again = await ctx.create(qos, request=request)
        if again.name != first.name:
            raise CheckFailed(f"repeating request_id {request.request_id!r} made a second call {again.name} (first {first.name})")
    if after_first is not None and await ctx.reserved() != after_first:
        raise CheckFailed("repeating a request_id reserved capacity again")
    other = svc.CreateCallRequest()
    other.CopyFrom(request)
    other.call.destination = ctx.destination()
    other.call_id = ctx.unique()
    await ctx.expect_error("CreateCall", other, grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED",
                           what="CreateCall with a used request_id and a different body")


@check("CORE-IDEM-002", "A refused request repeated with its request_id gets the same refusal", MUST, "core",
       "AIP-155: repeating a request returns the first outcome")
async def idempotent_refusal(ctx: CheckContext) -> None:
    """CreateCall(infeasible, NEEDED, request_id) twice → the same code, reason and refused call."""
    if ctx.params.infeasible is None:
        return
    request = ctx.request(ctx.params.infeasible, Level.SERVICE_LEVEL_NEEDED, request_id=f"req-{ctx.unique()}")
    outcomes: list[RpcFailure] = []
    for _ in range(2):
        result = await ctx.try_create(ctx.params.infeasible, request=request)
        if isinstance(result, Call):
            raise CheckFailed("an infeasible request at NEEDED connected")
        outcomes.append(result)
    a, b = outcomes
    if (a.code, a.reason) != (b.code, b.reason) or (a.refusal and b.refusal and a.refusal.call != b.refusal.call):
        raise CheckFailed(f"repeat gave a different outcome: {a} / {b}")


@check("CORE-OWN-001", "Only the owner may renegotiate or drop; others get NOT_OWNER and change nothing", MUST, "core",
       "lineSetCallQualityOfService: must have OWNER privilege; LINEERR_NOTOWNER; §8.4, §8.5 #17")
async def owner_only(ctx: CheckContext) -> None:
    """RenegotiateCall and DropCall as another principal → PERMISSION_DENIED NOT_OWNER; the call keeps its etag."""
    qos = ctx.params.feasible or BE_QOS
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    intruder = ctx.session.intruder
    reneg = svc.RenegotiateCallRequest(name=call.name, qos=qos)
    failure = None
    try:
        await ctx.rpc("RenegotiateCall", reneg, intruder)
    except Outcome as out:
        failure = out.failure
    ok = failure is not None and (
        (failure.code == grpc.StatusCode.PERMISSION_DENIED and failure.reason == "NOT_OWNER")
        or (not ctx.caps.renegotiation and failure.code == grpc.StatusCode.UNIMPLEMENTED)
    )
    if not ok:
        raise CheckFailed(f"RenegotiateCall by another principal: expected PERMISSION_DENIED NOT_OWNER, got {failure or 'success'}")
    await ctx.expect_error("DropCall", svc.DropCallRequest(name=call.name), grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER",
                           principal=intruder, what="DropCall by another principal")
    after = await ctx.get(call.name)
    if after.etag != call.etag or after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("a refused non-owner request changed the call")


@check("CORE-ERR-001", "Unknown calls and providers are NOT_FOUND with their reasons", MUST, "core",
       "LINEERR_INVALCALLHANDLE; errors.proto CALL_NOT_FOUND / PROVIDER_NOT_FOUND (NOT_FOUND)")
async def not_found(ctx: CheckContext) -> None:
    """GetCall / DropCall / RenegotiateCall of a never-made call → NOT_FOUND CALL_NOT_FOUND; an unknown provider → PROVIDER_NOT_FOUND."""
    name = f"calls/{ctx.unique()}-never"
    nf = grpc.StatusCode.NOT_FOUND
    await ctx.expect_error("GetCall", svc.GetCallRequest(name=name), nf, "CALL_NOT_FOUND")
    await ctx.expect_error("DropCall", svc.DropCallRequest(name=name), nf, "CALL_NOT_FOUND")
    await ctx.expect_error("RenegotiateCall", svc.RenegotiateCallRequest(name=name, qos=BE_QOS), nf, "CALL_NOT_FOUND")
    request = ctx.request(BE_QOS, Level.SERVICE_LEVEL_BEST_EFFORT)
    request.call.provider = f"providers/{ctx.unique()}-none"
    await ctx.expect_error("CreateCall", request, nf, "PROVIDER_NOT_FOUND")
