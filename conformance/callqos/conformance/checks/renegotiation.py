"""RENEG: renegotiation up and down, refusal leaving the call byte-identical, NO_CHANGE, invalid
call state, etags, request_id, provider-specific bytes, and the negative probe for providers that
do not advertise it."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.common import call_events, expect_types, is_qos_refusal, one_direction_too_much
from callqos.conformance.checks.core_api import MAX_PROVIDER_SPECIFIC, blob, carries_blob, drop_with_etag, with_blob
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, EventType, Level, RpcFailure, brief, needs_capacity, same
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow, qos_rates, qos_shortfalls, shortfalls
from callqos.v1 import callqos_service_pb2 as svc

NEEDED = Level.SERVICE_LEVEL_NEEDED


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


@check(
    "RENEG-001",
    "Renegotiate down succeeds and releases the difference",
    MUST,
    "renegotiation",
    spec=("SETQOS-1", "GRANT-3", "LINK-2"),
    source="TSPI_lineSetCallQualityOfService",
    needs=("renegotiation", "qos_supported"),
)
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


@check(
    "RENEG-002",
    "Renegotiate up within free capacity succeeds",
    MUST,
    "renegotiation",
    spec=("SETQOS-1", "GRANT-3"),
    source="TSPI_lineSetCallQualityOfService",
    needs=("renegotiation", "qos_supported"),
)
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


@check(
    "RENEG-003",
    "A refused renegotiation leaves the call connected with byte-identical QoS",
    MUST,
    "renegotiation",
    spec=("SETQOS-2",),
    source="TSPI_lineSetCallQualityOfService: the call continues with the previous QoS",
    needs=("renegotiation", "qos_supported"),
)
async def refused_unchanged(ctx: CheckContext) -> None:
    """RenegotiateCall(beyond capacity) → RESOURCE_EXHAUSTED QOS_UNAVAILABLE; GetCall: CONNECTED, same
    granted bytes, same etag."""
    call, _ = await refused_renegotiation(ctx)
    after = await ctx.get(call.name)
    if after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("a refused renegotiation disconnected the call")
    if not same(after.granted_qos, call.granted_qos) or after.etag != call.etag:
        raise CheckFailed("a refused renegotiation changed the call's granted QoS or etag")


@check(
    "RENEG-004",
    "A refused renegotiation leaves the provider's reservation unchanged",
    MUST,
    "renegotiation",
    spec=("SETQOS-2", "PROV-3", "LINK-2"),
    source="TSPI_lineSetCallQualityOfService: the call continues with the previous QoS",
    needs=("renegotiation", "qos_supported", "link_admin"),
)
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


@check(
    "RENEG-005",
    "Renegotiating a disconnected call is FAILED_PRECONDITION (CALL_NOT_CONNECTED)",
    MUST,
    "renegotiation",
    spec=("SETQOS-3", "CALL-1"),
    source="LINEERR_INVALCALLSTATE; errors.proto CALL_NOT_CONNECTED",
    needs=("renegotiation",),
)
async def dropped(ctx: CheckContext) -> None:
    """DropCall then RenegotiateCall → FAILED_PRECONDITION CALL_NOT_CONNECTED; the call stays as dropped."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    gone = await ctx.drop(call.name)

    await ctx.expect_error(
        "RenegotiateCall",
        svc.RenegotiateCallRequest(name=call.name, qos=qos),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CALL_NOT_CONNECTED",
    )
    if (await ctx.get(call.name)).etag != gone.etag:
        raise CheckFailed("renegotiating a dropped call changed it")


@check(
    "RENEG-006",
    "NO_CHANGE in one direction renegotiates only the other, in both directions",
    MUST,
    "renegotiation",
    spec=("SETQOS-4", "GRANT-3", "LINK-2"),
    source="Winsock2 FLOWSPEC SERVICETYPE_NOCHANGE",
    needs=("renegotiation", "qos_supported"),
)
async def no_change(ctx: CheckContext) -> None:
    """RenegotiateCall(send NO_CHANGE, recv new) → sending byte-identical, receiving satisfies the new request; then
    (send new, recv NO_CHANGE) → the mirror. With link administration, each direction's reservation follows: the
    NO_CHANGE one stays, the other becomes the new rate."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(QosSpec(sending=cl(capacity // 10), receiving=cl(capacity // 9)), NEEDED)
    current = call
    for kept, changed, rate in (("sending", "receiving", capacity // 8), ("receiving", "sending", capacity // 7)):
        request = QosSpec()
        getattr(request, kept).CopyFrom(flow(ST.SERVICE_TYPE_NO_CHANGE))
        getattr(request, changed).CopyFrom(cl(rate))
        before = await ctx.reserved() if ctx.caps.link_admin else None
        result = await ctx.renegotiate(call.name, request)
        if isinstance(result, RpcFailure):
            raise CheckFailed(f"RenegotiateCall with NO_CHANGE {kept} was refused: {result}")
        if not same(getattr(result.granted_qos, kept), getattr(current.granted_qos, kept)):
            raise CheckFailed(
                f"the NO_CHANGE direction ({kept}) changed: {brief(current.granted_qos)} → {brief(result.granted_qos)}"
            )
        problems = shortfalls(getattr(result.granted_qos, changed), getattr(request, changed), changed)
        if problems:
            raise CheckFailed("; ".join(problems))
        if before is not None:
            after = await ctx.reserved()
            old_rates, new_rates = qos_rates(current.granted_qos), qos_rates(result.granted_qos)
            total = [sum(v[i] for v in after.values()) - sum(v[i] for v in before.values()) for i in (0, 1)]
            want = [new_rates[i] - old_rates[i] for i in (0, 1)]
            if total != want:
                raise CheckFailed(
                    f"renegotiating {changed} with {kept} NO_CHANGE moved the links' reservations by {total} "
                    f"(sending, receiving); the grants moved by {want}"
                )
        current = result


@check(
    "RENEG-007",
    "Without renegotiation advertised, RenegotiateCall is UNIMPLEMENTED and changes nothing",
    MUST,
    "renegotiation",
    spec=("SETQOS-5", "PROV-9"),
    source="LINEERR_OPERATIONUNAVAIL; errors.proto RENEGOTIATION_UNSUPPORTED",
    needs=("!renegotiation",),
)
async def unsupported(ctx: CheckContext) -> None:
    """Negative probe: RenegotiateCall on a connected call → UNIMPLEMENTED RENEGOTIATION_UNSUPPORTED; same etag."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)

    await ctx.expect_error(
        "RenegotiateCall",
        svc.RenegotiateCallRequest(name=call.name, qos=qos),
        grpc.StatusCode.UNIMPLEMENTED,
        "RENEGOTIATION_UNSUPPORTED",
    )
    after = await ctx.get(call.name)
    if after.etag != call.etag or after.state != Call.State.STATE_CONNECTED:
        raise CheckFailed("an unsupported renegotiation changed the call")


@check(
    "RENEG-008",
    "A connected call's set_qos feature matches the renegotiation capability",
    MUST,
    "renegotiation",
    spec=("CALL-3",),
    source="TAPI LINECALLFEATURE_SETQOS",
)
async def set_qos_feature(ctx: CheckContext) -> None:
    """CreateCall → features.set_qos == capabilities.renegotiation; after drop set_qos is false."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    if call.features.set_qos != ctx.caps.renegotiation:
        raise CheckFailed(
            f"features.set_qos = {call.features.set_qos}, capabilities.renegotiation = {ctx.caps.renegotiation}"
        )
    if (await ctx.drop(call.name)).features.set_qos:
        raise CheckFailed("a disconnected call still offers set_qos")


def stale(result: Call | RpcFailure, what: str) -> None:
    """`result` must be ABORTED ETAG_MISMATCH."""
    if isinstance(result, Call):
        raise CheckFailed(f"{what}: expected ABORTED ETAG_MISMATCH, but it succeeded")
    if result.code != grpc.StatusCode.ABORTED or result.reason != "ETAG_MISMATCH":
        raise CheckFailed(f"{what}: expected ABORTED ETAG_MISMATCH, got {result}")


@check(
    "RENEG-009",
    "Etags: a stale etag is ABORTED (ETAG_MISMATCH) and changes nothing; a success changes the etag, a "
    "refusal does not",
    MUST,
    "renegotiation",
    spec=("API-4", "SETQOS-2"),
    source="AIP-154; google.rpc.Code ABORTED",
    needs=("renegotiation", "qos_supported"),
)
async def etags(ctx: CheckContext) -> None:
    """RenegotiateCall(etag = current) succeeds with a new etag; with the old etag RenegotiateCall and DropCall →
    ABORTED ETAG_MISMATCH and GetCall is unchanged; a refused renegotiation keeps the etag; DropCall(current etag)
    drops."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    changed = await ctx.renegotiate(call.name, both(capacity // 8), etag=call.etag)
    if isinstance(changed, RpcFailure):
        raise CheckFailed(f"RenegotiateCall with the current etag was refused: {changed}")
    if changed.etag == call.etag:
        raise CheckFailed("a successful renegotiation kept the call's etag")
    stale(await ctx.renegotiate(call.name, both(capacity // 5), etag=call.etag), "RenegotiateCall with a stale etag")
    await ctx.expect_error(
        "DropCall",
        svc.DropCallRequest(name=call.name, etag=call.etag),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        what="DropCall with a stale etag",
    )
    after = await ctx.get(call.name)
    if (
        after.state != Call.State.STATE_CONNECTED
        or after.etag != changed.etag
        or not same(after.granted_qos, changed.granted_qos)
    ):
        raise CheckFailed("a request refused for a stale etag changed the call")
    refusal = await ctx.renegotiate(call.name, both(capacity + 1), etag=changed.etag)
    if isinstance(refusal, Call) or not is_qos_refusal(refusal):
        raise CheckFailed(f"renegotiation beyond capacity: expected RESOURCE_EXHAUSTED QOS_UNAVAILABLE, got {refusal}")
    if (await ctx.get(call.name)).etag != changed.etag:
        raise CheckFailed("a refused renegotiation changed the etag")
    await drop_with_etag(ctx, call.name, changed.etag)


@check(
    "RENEG-010",
    "A repeated request_id renegotiates once; reused for another body it is REQUEST_ID_REUSED",
    MUST,
    "renegotiation",
    spec=("API-3", "EVENT-3"),
    source="AIP-155; errors.proto REQUEST_ID_REUSED",
    needs=("renegotiation", "qos_supported"),
)
async def idempotent(ctx: CheckContext) -> None:
    """RenegotiateCall three times with one request_id and body → the same call (etag, grant); a different body under
    it → INVALID_ARGUMENT REQUEST_ID_REUSED, call unchanged; events [GRANTED, one QOS_CHANGED, DISCONNECTED]."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    rid = f"req-{ctx.unique()}"
    first = await ctx.renegotiate(call.name, both(capacity // 8), request_id=rid)
    if isinstance(first, RpcFailure):
        raise CheckFailed(f"RenegotiateCall with a request_id was refused: {first}")
    for _ in range(2):
        again = await ctx.renegotiate(call.name, both(capacity // 8), request_id=rid)
        if isinstance(again, RpcFailure) or again.etag != first.etag or not same(again.granted_qos, first.granted_qos):
            raise CheckFailed(
                f"repeating request_id {rid!r} gave another outcome: "
                f"{again if isinstance(again, RpcFailure) else 'the call changed again'}"
            )
    reused = await ctx.renegotiate(call.name, both(capacity // 5), request_id=rid)
    if isinstance(reused, Call) or (reused.code, reused.reason) != (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    ):
        raise CheckFailed(
            f"RenegotiateCall with a used request_id and a different body: expected INVALID_ARGUMENT "
            f"REQUEST_ID_REUSED, got {'success' if isinstance(reused, Call) else reused}"
        )
    if (await ctx.get(call.name)).etag != first.etag:
        raise CheckFailed("repeating or reusing a request_id changed the call")
    await ctx.drop(call.name)
    expect_types(
        await call_events(ctx, call.name),
        [
            EventType.QOS_EVENT_TYPE_QOS_GRANTED,
            EventType.QOS_EVENT_TYPE_QOS_CHANGED,
            EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
        ],
        f"a renegotiation repeated with request_id {rid!r}",
    )


@check(
    "RENEG-011",
    "Renegotiation keeps provider-specific bytes when none are given, replaces them when given, refuses above 4096",
    MUST,
    "renegotiation",
    spec=("SETQOS-4", "SETQOS-6", "API-7", "FLOW-19"),
    source="Winsock2 SERVICETYPE_NOCHANGE; flowspec.proto QosSpec.provider_specific",
    needs=("renegotiation",),
)
async def provider_specific(ctx: CheckContext) -> None:
    """CreateCall(blob A); RenegotiateCall(empty provider_specific) → A kept in requested and granted QoS;
    RenegotiateCall(blob B) → B; RenegotiateCall(4097 bytes) → INVALID_ARGUMENT, the call keeps B and its etag.
    With the `provider_specific` parameter, A and B are its first two payloads, and a renegotiation with random
    bytes is also INVALID_ARGUMENT, with a field violation on qos.provider_specific, the call unchanged."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    level = Level.SERVICE_LEVEL_IF_AVAILABLE
    payloads = ctx.params.provider_specific
    first, second = payloads[:2] if payloads else (blob(ctx, 64), blob(ctx, 32))
    call = await ctx.create(with_blob(qos, first), level)
    carries_blob(call, first, "CreateCall")
    for data, what in ((b"", "an empty provider_specific"), (second, "a new provider_specific")):
        result = await ctx.renegotiate(call.name, with_blob(qos, data))
        if isinstance(result, RpcFailure):
            raise CheckFailed(f"RenegotiateCall with {what} was refused: {result}")
        expected = data or first
        carries_blob(result, expected, f"RenegotiateCall with {what}")
        carries_blob(await ctx.get(call.name), expected, f"GetCall after RenegotiateCall with {what}")
    before = await ctx.get(call.name)
    oversize = await ctx.renegotiate(call.name, with_blob(qos, bytes(MAX_PROVIDER_SPECIFIC + 1)))
    if isinstance(oversize, Call) or oversize.code != grpc.StatusCode.INVALID_ARGUMENT:
        raise CheckFailed(
            f"RenegotiateCall with {MAX_PROVIDER_SPECIFIC + 1} provider-specific bytes: expected INVALID_ARGUMENT, "
            f"got {'success' if isinstance(oversize, Call) else oversize}"
        )
    if (await ctx.get(call.name)).etag != before.etag:
        raise CheckFailed("a refused oversize renegotiation changed the call")
    if payloads:
        foreign = await ctx.renegotiate(call.name, with_blob(qos, blob(ctx, 64)))
        if isinstance(foreign, Call) or foreign.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise CheckFailed(
                "RenegotiateCall with random provider_specific bytes (the provider interprets them): expected "
                f"INVALID_ARGUMENT, got {'success' if isinstance(foreign, Call) else foreign}"
            )
        if "qos.provider_specific" not in foreign.fields:
            raise CheckFailed(f"random provider_specific bytes refused, but BadRequest names {foreign.fields}")
        if (await ctx.get(call.name)).etag != before.etag:
            raise CheckFailed("a renegotiation refused for its provider_specific bytes changed the call")


@check(
    "RENEG-012",
    "Renegotiating up counts the call's own reservation as free",
    MUST,
    "renegotiation",
    spec=("SETQOS-1", "ADMIT-5", "PROV-3"),
    source="TSPI_lineSetCallQualityOfService: the new QoS replaces the old one",
    needs=("renegotiation", "qos_supported"),
)
async def up_in_place(ctx: CheckContext) -> None:
    """CreateCall(c/2 both ways) on an idle provider, then RenegotiateCall(3c/4 both ways) → granted: with the call's
    own c/2 released the new rate fits."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 2), NEEDED)
    await renegotiated(ctx, call, both(3 * capacity // 4))


@check(
    "RENEG-013",
    "A refused renegotiation where one direction would fit changes neither direction",
    MUST,
    "renegotiation",
    spec=("PROV-3", "SETQOS-2", "LINK-2"),
    source="TSPI_lineSetCallQualityOfService: the call continues with the previous QoS",
    needs=("renegotiation", "qos_supported", "link_admin"),
)
async def refused_one_direction(ctx: CheckContext) -> None:
    """Another call holds c/2 receiving; RenegotiateCall(send c/4 — fits, receive 3c/4 — does not) → refused; the
    call's granted QoS and etag are unchanged and the links hold exactly what they held in both directions; and the
    mirror."""
    capacity = needs_capacity(ctx)
    for held, asked in one_direction_too_much(capacity):
        holder = await ctx.create(held, NEEDED)
        call = await ctx.create(both(capacity // 10), NEEDED)
        before = await ctx.reserved()
        result = await ctx.renegotiate(call.name, asked)
        if isinstance(result, Call):
            raise CheckFailed(f"renegotiating to {brief(asked)} next to {brief(held)} succeeded on {capacity} B/s")
        after = await ctx.reserved()
        now = await ctx.get(call.name)
        if after != before:
            raise CheckFailed(
                f"the refused renegotiation to {brief(asked)} changed the links: {before} → {after} "
                "(the direction that fitted was applied)"
            )
        if not same(now.granted_qos, call.granted_qos) or now.etag != call.etag:
            raise CheckFailed(
                f"the refused renegotiation changed the call: {brief(call.granted_qos)} → {brief(now.granted_qos)}"
            )
        await ctx.drop(call.name)
        await ctx.drop(holder.name)


@check(
    "RENEG-014",
    "A renegotiation may change the service level: IF_AVAILABLE connects with what is free, BEST_EFFORT holds nothing",
    MUST,
    "renegotiation",
    spec=("SETQOS-7", "LEVEL-2", "LEVEL-3"),
    source="callqos_service.proto RenegotiateCallRequest.service_level; TAPI 3 ITBasicCallControl::SetQOS",
    needs=("renegotiation", "qos_supported"),
)
async def level_change(ctx: CheckContext) -> None:
    """A NEEDED call of c/10; RenegotiateCall(c + 1, service_level IF_AVAILABLE) → CONNECTED at IF_AVAILABLE within
    capacity; RenegotiateCall(c/10, service_level BEST_EFFORT) → BEST_EFFORT, nothing reserved."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(both(capacity // 10), NEEDED)
    result = await ctx.renegotiate(call.name, both(capacity + 1), service_level=Level.SERVICE_LEVEL_IF_AVAILABLE)
    if isinstance(result, RpcFailure):
        raise CheckFailed(f"RenegotiateCall to IF_AVAILABLE beyond capacity was refused: {result}")
    if result.service_level != Level.SERVICE_LEVEL_IF_AVAILABLE:
        raise CheckFailed(
            f"the call's level stayed {Level.Name(result.service_level)} after a renegotiation to IF_AVAILABLE"
        )
    if any(rate > capacity for rate in qos_rates(result.granted_qos)):
        raise CheckFailed(f"IF_AVAILABLE renegotiation granted beyond capacity: {brief(result.granted_qos)}")
    lowest = await ctx.renegotiate(call.name, both(capacity // 10), service_level=Level.SERVICE_LEVEL_BEST_EFFORT)
    if isinstance(lowest, RpcFailure):
        raise CheckFailed(f"RenegotiateCall to BEST_EFFORT level was refused: {lowest}")
    if lowest.service_level != Level.SERVICE_LEVEL_BEST_EFFORT or any(qos_rates(lowest.granted_qos)):
        raise CheckFailed(
            f"after a renegotiation to BEST_EFFORT level the call is {Level.Name(lowest.service_level)} "
            f"holding {qos_rates(lowest.granted_qos)}"
        )


@check(
    "RENEG-015",
    "A refused renegotiation's counter-offer is granted on an immediate retry, on a partly loaded link",
    MUST,
    "renegotiation",
    spec=("PROV-2", "SETQOS-1"),
    source="call.proto QosRefusal.counter_offer; TSPI_lineSetCallQualityOfService",
    needs=("renegotiation", "qos_supported"),
)
async def renegotiation_counter_offer(ctx: CheckContext) -> None:
    """Another call holds c/2 each way; a call of c/10 is renegotiated to 3c/4 → refused with a counter-offer;
    RenegotiateCall(counter-offer) → granted and satisfying it."""
    capacity = needs_capacity(ctx)
    await ctx.create(both(capacity // 2), NEEDED)
    call = await ctx.create(both(capacity // 10), NEEDED)
    refused = await ctx.renegotiate(call.name, both(3 * capacity // 4))
    if isinstance(refused, Call):
        raise CheckFailed(f"renegotiating to 3c/4 next to a call of c/2 succeeded on {capacity} B/s")
    if not is_qos_refusal(refused):
        raise CheckFailed(f"expected RESOURCE_EXHAUSTED QOS_UNAVAILABLE, got {refused}")
    if refused.refusal is None or not refused.refusal.HasField("counter_offer"):
        return
    await renegotiated(ctx, call, refused.refusal.counter_offer)


@check(
    "RENEG-016",
    "A renegotiation that asks for what the call already asked for changes nothing: same etag, no event",
    MUST,
    "renegotiation",
    spec=("SETQOS-8",),
    source="TSPI_lineSetCallQualityOfService; AIP-154 (an etag changes when the resource does)",
    needs=("renegotiation",),
)
async def unchanged(ctx: CheckContext) -> None:
    """A call at NEEDED; RenegotiateCall with its requested_qos and level, then with NO_CHANGE both ways, then with
    no direction at all (FLOW-20) → each returns the call with the same etag and QoS; dropped, its events are exactly
    [QOS_GRANTED, CALL_DISCONNECTED] (no QOS_CHANGED, no RENEGOTIATION_FAILED)."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, NEEDED)
    keep = QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE))
    for asked, what in ((call.requested_qos, "its own requested_qos"), (keep, "NO_CHANGE"), (QosSpec(), "no QoS")):
        result = await ctx.renegotiate(call.name, asked, service_level=NEEDED)
        if isinstance(result, RpcFailure):
            raise CheckFailed(f"RenegotiateCall({call.name}) with {what} failed: {result}")
        if result.etag != call.etag or not same(result.granted_qos, call.granted_qos):
            raise CheckFailed(
                f"RenegotiateCall({call.name}) with {what} changed the call: etag {call.etag!r} → {result.etag!r}, "
                f"{brief(call.granted_qos)} → {brief(result.granted_qos)}"
            )
    await ctx.drop(call.name)
    events = await call_events(ctx, call.name)
    expect_types(
        events,
        [EventType.QOS_EVENT_TYPE_QOS_GRANTED, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED],
        f"events of {call.name}, renegotiated three times to what it already had",
    )
