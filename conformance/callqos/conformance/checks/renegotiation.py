"""RENEG: renegotiation up and down, refusal leaving the call byte-identical, NO_CHANGE, invalid
call state, and the negative probe for providers that do not advertise it."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.common import is_qos_refusal
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.harness import Call, CheckContext, Level, RpcFailure, brief, needs_capacity, same
from callqos.conformance.model import CheckFailed
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow, qos_shortfalls
from callqos.v1 import callqos_service_pb2 as svc

NEEDED = Level.SERVICE_LEVEL_NEEDED
TSPI = "TSPI_lineSetCallQualityOfService"


def both(rate: int) -> QosSpec:
    return QosSpec(sending=cl(rate), receiving=cl(rate))


async def renegotiated(ctx: CheckContext, call: Call, qos: QosSpec) -> Call:
    result = await ctx.renegotiate(call.name, qos)
    if isinstance(result, RpcFailure):
        raise CheckFailed(f"RenegotiateCall({call.name} → {brief(qos)}) was refused: {result}")
    if result.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("renegotiated call is not CONNECTED")
    problems = qos_shortfalls(result.granted_qos, qos)
    if problems:
        raise CheckFailed(f"renegotiated grant does not satisfy the request at NEEDED: {'; '.join(problems)}")
    stored = await ctx.get(call.name)
    if not same(stored.granted_qos, result.granted_qos):
        raise CheckFailed("GetCall disagrees with the RenegotiateCall answer")
    return result


@check("RENEG-001", "Renegotiate down succeeds and releases the difference", MUST, "renegotiation",
       f"{TSPI}; lineSetCallQualityOfService; §8.5 #13", needs=("renegotiation", "qos_supported"))
async def down(ctx: CheckContext) -> None:
    """CreateCall(capacity/5 both ways) then RenegotiateCall(capacity/10) → granted satisfies it; links hold less."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 5), NEEDED)
    before = await ctx.reserved() if ctx.caps.link_admin else None
    await renegotiated(ctx, call, both(capacity // 10))
    if before is not None:
        after = await ctx.reserved()
        if sum(sum(v) for v in after.values()) >= sum(sum(v) for v in before.values()):
            raise CheckFailed(f"renegotiating down did not release capacity: {before} → {after}")


@check("RENEG-002", "Renegotiate up within free capacity succeeds", MUST, "renegotiation",
       f"{TSPI}; §8.5 #13", needs=("renegotiation", "qos_supported"))
async def up(ctx: CheckContext) -> None:
    """CreateCall(capacity/10) then RenegotiateCall(capacity/4) → granted satisfies it."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    await renegotiated(ctx, call, both(capacity // 4))


async def refused_renegotiation(ctx: CheckContext) -> tuple[Call, RpcFailure]:
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    result = await ctx.renegotiate(call.name, both(capacity + 1))
    if isinstance(result, Call):
        raise CheckFailed(f"renegotiation beyond capacity ({capacity + 1} B/s) succeeded")
    if not is_qos_refusal(result):
        raise CheckFailed(f"renegotiation beyond capacity: expected RESOURCE_EXHAUSTED QOS_UNAVAILABLE, got {result}")
    return call, result


@check("RENEG-003", "A refused renegotiation leaves the call connected with byte-identical QoS", MUST, "renegotiation",
       f"{TSPI}: on failure the call continues with the previous QOS; §8.2, §8.5 #14", needs=("renegotiation", "qos_supported"))
async def refused_unchanged(ctx: CheckContext) -> None:
    """RenegotiateCall(beyond capacity) → RESOURCE_EXHAUSTED QOS_UNAVAILABLE; GetCall: CONNECTED, same granted bytes, same etag."""
    call, _ = await refused_renegotiation(ctx)
    after = await ctx.get(call.name)
    if after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("a refused renegotiation disconnected the call")
    if not same(after.granted_qos, call.granted_qos) or after.etag != call.etag:
        raise CheckFailed("a refused renegotiation changed the call's granted QoS or etag")


@check("RENEG-004", "A refused renegotiation leaves the provider's reservation unchanged", MUST, "renegotiation",
       f"{TSPI}: the call continues with the previous QOS; provider contract: on Refusal the reservation stays", needs=("renegotiation", "qos_supported", "link_admin"))
async def refused_reservation(ctx: CheckContext) -> None:
    """ListLinks before and after a refused renegotiation: identical reserved bytes/s."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    before = await ctx.reserved()
    result = await ctx.renegotiate(call.name, both(capacity + 1))
    if isinstance(result, Call):
        raise CheckFailed("renegotiation beyond capacity succeeded")
    after = await ctx.reserved()
    if after != before:
        raise CheckFailed(f"the refused renegotiation changed link reservations: {before} → {after}")


@check("RENEG-005", "Renegotiating a disconnected call is FAILED_PRECONDITION (CALL_NOT_CONNECTED)", MUST, "renegotiation",
       "LINEERR_INVALCALLSTATE; errors.proto CALL_NOT_CONNECTED; §8.5 #16", needs=("renegotiation",))
async def dropped(ctx: CheckContext) -> None:
    """DropCall then RenegotiateCall → FAILED_PRECONDITION CALL_NOT_CONNECTED; the call stays as dropped."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    gone = await ctx.drop(call.name)

    await ctx.expect_error("RenegotiateCall", svc.RenegotiateCallRequest(name=call.name, qos=qos),
                           grpc.StatusCode.FAILED_PRECONDITION, "CALL_NOT_CONNECTED")
    if (await ctx.get(call.name)).etag != gone.etag:
        raise CheckFailed("renegotiating a dropped call changed it")


@check("RENEG-006", "NO_CHANGE in one direction renegotiates only the other", MUST, "renegotiation",
       "qos.h SERVICETYPE_NOCHANGE: no change from the previous flowspec; §8.5 #15", needs=("renegotiation", "qos_supported"))
async def no_change(ctx: CheckContext) -> None:
    """RenegotiateCall(send NO_CHANGE, recv new) → sending byte-identical, receiving satisfies the new request."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    request = QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=cl(capacity // 8))
    result = await ctx.renegotiate(call.name, request)
    if isinstance(result, RpcFailure):
        raise CheckFailed(f"RenegotiateCall with NO_CHANGE sending was refused: {result}")
    if not same(result.granted_qos.sending, call.granted_qos.sending):
        raise CheckFailed("the NO_CHANGE direction changed")
    problems = qos_shortfalls(QosSpec(sending=best_effort(), receiving=result.granted_qos.receiving),
                              QosSpec(sending=best_effort(), receiving=request.receiving))
    if problems:
        raise CheckFailed("; ".join(problems))


@check("RENEG-007", "Without renegotiation advertised, RenegotiateCall is UNIMPLEMENTED and changes nothing", MUST, "renegotiation",
       "LINEERR_OPERATIONUNAVAIL; errors.proto RENEGOTIATION_UNSUPPORTED; §8.5 #18", needs=("!renegotiation",))
async def unsupported(ctx: CheckContext) -> None:
    """Negative probe: RenegotiateCall on a connected call → UNIMPLEMENTED RENEGOTIATION_UNSUPPORTED; same etag."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)

    await ctx.expect_error("RenegotiateCall", svc.RenegotiateCallRequest(name=call.name, qos=qos),
                           grpc.StatusCode.UNIMPLEMENTED, "RENEGOTIATION_UNSUPPORTED")
    after = await ctx.get(call.name)
    if after.etag != call.etag or after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("an unsupported renegotiation changed the call")


@check("RENEG-008", "A connected call's set_qos feature matches the renegotiation capability", MUST, "renegotiation",
       "LINECALLFEATURE_SETQOS: advertised exactly when SetQOS works; §8.5 #18")
async def set_qos_feature(ctx: CheckContext) -> None:
    """CreateCall → features.set_qos == capabilities.renegotiation; after drop set_qos is false."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    if call.features.set_qos != ctx.caps.renegotiation:
        raise CheckFailed(f"features.set_qos = {call.features.set_qos}, capabilities.renegotiation = {ctx.caps.renegotiation}")
    if (await ctx.drop(call.name)).features.set_qos:
        raise CheckFailed("a disconnected call still offers set_qos")
