"""INC: incoming calls — a line opened by the suite, calls made to its address (two legs, the offer
mirrored), answered as offered or with less at each service level, rejected, rung out; both legs'
events, and the pair counted once in the link's reservation.

These need no provider capability: any provider carries a call between two applications on the
target (PROV-13). A target that does not serve lines (CreateLine UNIMPLEMENTED, e.g. a server from
before lines) gets these checks skipped as a capability it does not have."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2

from callqos.conformance.checks.common import LOSS_EVENTS, call_events, expect_types
from callqos.conformance.checks.provider_change import lowerable_link, set_capacity
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import (
    Call,
    CheckContext,
    EventType,
    Level,
    RpcFailed,
    brief,
    describe,
    needs_capacity,
    same,
)
from callqos.conformance.rules import FlowSpec, QosSpec, best_effort, cl, flow, qos_rates, qos_shortfalls
from callqos.conformance.verdict import CAPABILITY_SKIP
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import flowspec_pb2, line_pb2

E = EventType
State = Call.State
Line = line_pb2.Line
ST = flowspec_pb2.ServiceType
NEEDED, IF_AVAILABLE = Level.SERVICE_LEVEL_NEEDED, Level.SERVICE_LEVEL_IF_AVAILABLE
SOURCE = "TAPI lineOpen / lineAnswer; LINECALLSTATE_OFFERING, RINGBACK; LINEDISCONNECTMODE_*"
NO_CHANGE = flow(ST.SERVICE_TYPE_NO_CHANGE)
# Disconnect reasons (callqos.v1.DisconnectReason).
NORMAL, QOS_UNAVAILABLE, REJECTED, NO_ANSWER, PEER_DROPPED = 1, 2, 4, 5, 6
PROVIDER_INITIATED = 2  # callqos.v1.QosChangeCause


def mirror(qos: QosSpec) -> QosSpec:
    """What one end sends, the other receives (stated here, independently of the server)."""
    return QosSpec(sending=qos.receiving, receiving=qos.sending, provider_specific=qos.provider_specific)


async def open_line(ctx: CheckContext, *, no_answer_seconds: float = 60.0, principal: str | None = None) -> Line:
    """A line for a fresh address, closed at the end of the check. A target without lines skips
    the check (a capability it does not have)."""
    timeout = duration_pb2.Duration()
    timeout.FromNanoseconds(round(no_answer_seconds * 1e9))
    request = svc.CreateLineRequest(line=Line(address=ctx.destination(), no_answer_timeout=timeout))
    try:
        line: Line = await ctx.rpc("CreateLine", request, principal)
    except RpcFailed as out:
        if out.failure.code == grpc.StatusCode.UNIMPLEMENTED:
            raise CheckSkipped(f"{CAPABILITY_SKIP}: the target serves no lines (CreateLine is UNIMPLEMENTED)") from None
        raise CheckFailed(f"CreateLine failed: {out.failure}") from None
    if line.state != Line.State.STATE_OPEN or line.address != request.line.address:
        raise CheckFailed(f"CreateLine returned {line.name} {Line.State.Name(line.state)} for {line.address!r}")

    async def close() -> None:
        await ctx.rpc("CloseLine", svc.CloseLineRequest(name=line.name), principal)

    ctx.defer(f"close {line.name}", close)
    return line


async def call_line(ctx: CheckContext, line: Line, qos: QosSpec, level: Level = NEEDED) -> tuple[Call, Call]:
    """Call the line's address: (the caller's leg, the offered leg). Both are dropped at the end
    (dropping the caller's leg ends both)."""
    try:
        caller: Call = await ctx.rpc("CreateCall", ctx.request(qos, level, destination=line.address))
    except RpcFailed as out:
        raise CheckFailed(f"CreateCall to the open line {line.name}: {out.failure}") from None
    ctx.register(caller)
    if caller.state != State.STATE_RINGBACK or not caller.peer:
        raise CheckFailed(
            f"a call to an open line's address must ring: got {caller.name} {State.Name(caller.state)} "
            f"with peer {caller.peer!r}"
        )
    callee = await ctx.get(caller.peer)
    return caller, callee


async def answer(ctx: CheckContext, callee: Call, qos: QosSpec | None = None) -> Call:
    request = svc.AnswerCallRequest(name=callee.name)
    if qos is not None:
        request.qos.CopyFrom(qos)
    try:
        answered: Call = await ctx.rpc("AnswerCall", request)
    except RpcFailed as out:
        raise CheckFailed(f"AnswerCall({callee.name}) failed: {out.failure}") from None
    return answered


def simple(ctx: CheckContext) -> QosSpec:
    return ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())


def reserving(ctx: CheckContext) -> int:
    """A rate that fits the target's capacity ten times over, where CONTROLLED_LOAD is admitted."""
    if ST.SERVICE_TYPE_CONTROLLED_LOAD not in ctx.caps.service_types:
        raise CheckSkipped(f"{CAPABILITY_SKIP}: CONTROLLED_LOAD is not among the advertised service types")
    return max(needs_capacity(ctx) // 10, 2)


def legs_agree(caller: Call, callee: Call, state: int) -> None:
    if (caller.state, callee.state) != (state, state):
        raise CheckFailed(
            f"legs {caller.name} / {callee.name}: expected both {State.Name(state)}, got "
            f"{State.Name(caller.state)} / {State.Name(callee.state)}"
        )
    if not same(callee.requested_qos, mirror(caller.requested_qos)):
        raise CheckFailed(f"{callee.name}: requested_qos is not the mirror of {caller.name}'s")
    if state == State.STATE_CONNECTED and not same(callee.granted_qos, mirror(caller.granted_qos)):
        raise CheckFailed(f"{callee.name}: granted_qos is not the mirror of {caller.name}'s")


def reasons(calls: Sequence[Call], expected: Sequence[int], what: str) -> None:
    got = [call.disconnect_reason for call in calls]
    if [call.state for call in calls] != [State.STATE_DISCONNECTED] * len(calls) or got != list(expected):
        raise CheckFailed(f"{what}: expected both DISCONNECTED with reasons {list(expected)}, got {got}")


@check(
    "INC-001",
    "A call to an open line rings: two legs, the offer mirrored, nothing reserved, OFFERED then RINGBACK",
    MUST,
    "incoming",
    spec=("OFFER-1", "OFFER-2", "OFFER-3", "LINE-1"),
    source=SOURCE,
)
async def offered(ctx: CheckContext) -> None:
    """CreateLine, then CreateCall(address, asymmetric QoS, request_id) → caller RINGBACK/OUTGOING, callee
    OFFERING/INCOMING owned by the line's owner, requested_qos mirrored, offer_expire_time on both; the links
    unchanged; events [CALL_OFFERED(line)] on the callee and [CALL_RINGBACK] on the caller."""
    line = await open_line(ctx)
    asked = QosSpec(sending=cl(3000), receiving=cl(1000))
    before = await ctx.reserved() if ctx.caps.link_admin else {}
    request = ctx.request(asked, NEEDED, destination=line.address, request_id=ctx.unique())
    caller: Call = await ctx.rpc("CreateCall", request)
    ctx.register(caller)
    if caller.state != State.STATE_RINGBACK or caller.direction != Call.Direction.DIRECTION_OUTGOING:
        raise CheckFailed(f"the caller's leg is {State.Name(caller.state)}, direction {caller.direction}")
    callee = await ctx.get(caller.peer)
    problems = []
    if callee.state != State.STATE_OFFERING or callee.direction != Call.Direction.DIRECTION_INCOMING:
        problems.append(f"callee leg {State.Name(callee.state)} direction {callee.direction}")
    if callee.peer != caller.name or callee.line != line.name or callee.owner != line.owner:
        problems.append(f"callee leg peer {callee.peer!r}, line {callee.line!r}, owner {callee.owner!r}")
    if not same(callee.requested_qos, mirror(asked)):
        problems.append("the offer is not the caller's request mirrored")
    if callee.service_level != NEEDED or not callee.features.answer:
        problems.append("the offer lost its service level, or lacks features.answer")
    if not callee.HasField("offer_expire_time") or callee.offer_expire_time != caller.offer_expire_time:
        problems.append("offer_expire_time missing or different on the two legs")
    if ctx.caps.link_admin and await ctx.reserved() != before:
        problems.append("an offer reserved capacity before it was answered")
    if problems:
        raise CheckFailed("; ".join(problems))
    for leg, kind in ((callee, E.QOS_EVENT_TYPE_CALL_OFFERED), (caller, E.QOS_EVENT_TYPE_CALL_RINGBACK)):
        events = await call_events(ctx, leg.name, terminal=kind)
        expect_types(events, [kind], f"events of {leg.name} while it rings")
        if events[0].request_id != request.request_id:
            raise CheckFailed(f"{E.Name(kind)} lacks the CreateCall's request_id")
        if kind == E.QOS_EVENT_TYPE_CALL_OFFERED and events[0].line != line.name:
            raise CheckFailed(f"CALL_OFFERED names line {events[0].line!r}, not {line.name}")


@check(
    "INC-002",
    "Answering as offered connects both legs with mirrored grants, each with QOS_GRANTED",
    MUST,
    "incoming",
    spec=("ANSWER-4", "PAIR-1"),
    source="TAPI lineAnswer; LINECALLINFO",
)
async def answered_as_offered(ctx: CheckContext) -> None:
    """Offer a feasible QoS (best effort without capacity), AnswerCall without QoS → both CONNECTED, the
    callee's granted_qos the mirror of the caller's; each leg [offer event, QOS_GRANTED(current = its grant)]."""
    line = await open_line(ctx)
    caller, callee = await call_line(ctx, line, simple(ctx), IF_AVAILABLE)
    answered = await answer(ctx, callee)
    caller = await ctx.get(caller.name)
    legs_agree(caller, answered, State.STATE_CONNECTED)
    for leg, first in ((answered, E.QOS_EVENT_TYPE_CALL_OFFERED), (caller, E.QOS_EVENT_TYPE_CALL_RINGBACK)):
        events = await call_events(ctx, leg.name, terminal=E.QOS_EVENT_TYPE_QOS_GRANTED)
        expect_types(events, [first, E.QOS_EVENT_TYPE_QOS_GRANTED], f"events of {leg.name}")
        if not same(events[1].current_qos, leg.granted_qos):
            raise CheckFailed(f"{leg.name}: QOS_GRANTED.current_qos is not its granted QoS")


@check(
    "INC-003",
    "An answered pair holds one reservation on the link, in the caller's terms, freed when it ends",
    MUST,
    "incoming",
    spec=("PAIR-2", "PROV-13"),
    source="provider.proto Link; one call, one reservation",
    needs=("link_admin", "qos_supported"),
)
async def counted_once(ctx: CheckContext) -> None:
    """Offer CONTROLLED_LOAD r sending and r/2 receiving at NEEDED; before the answer the links hold nothing
    more; after it, exactly (r, r/2) more on one link (not (1.5 r, 1.5 r): not one reservation per leg);
    after the callee drops, exactly what they held before."""
    rate = reserving(ctx)
    line = await open_line(ctx)
    before = await ctx.reserved()
    caller, callee = await call_line(ctx, line, QosSpec(sending=cl(rate), receiving=cl(rate // 2)))
    if await ctx.reserved() != before:
        raise CheckFailed("an offer reserved capacity before it was answered")
    await answer(ctx, callee)
    caller = await ctx.get(caller.name)
    held = qos_rates(caller.granted_qos)
    after = await ctx.reserved()
    grown = {
        name: (s - before[name][0], r - before[name][1])
        for name, (s, r) in after.items()
        if after[name] != before.get(name)
    }
    if list(grown.values()) != [held]:
        raise CheckFailed(
            f"the answered pair holds {held} B/s (sending, receiving) in the caller's terms, but the links grew by "
            f"{grown}: expected that once, on one link"
        )
    await ctx.drop(callee.name)
    if await ctx.reserved() != before:
        raise CheckFailed("dropping the callee's leg did not free the pair's reservation")


@check(
    "INC-004",
    "At NEEDED an answer below the request fails both legs QOS_UNAVAILABLE, with counter-offers",
    MUST,
    "incoming",
    spec=("ANSWER-3",),
    source="TAPI 3 QSL_NEEDED; LINEDISCONNECTMODE_QOSUNAVAIL",
)
async def needed_answer_short(ctx: CheckContext) -> None:
    """Offer CONTROLLED_LOAD 4000/2000 at NEEDED; answer receiving 1000 (sending kept) → RESOURCE_EXHAUSTED
    QOS_UNAVAILABLE with QosRefusal(call = the callee, counter_offer = the offer); both legs DISCONNECTED
    QOS_UNAVAILABLE with [ADMISSION_FAILURE(counter-offer: the offer for the callee, the answer mirrored for the
    caller), CALL_DISCONNECTED(QOS_UNAVAILABLE)] after their offer event."""
    line = await open_line(ctx)
    caller, callee = await call_line(ctx, line, QosSpec(sending=cl(4000), receiving=cl(2000)), NEEDED)
    less = QosSpec(sending=NO_CHANGE, receiving=cl(1000))
    failure = await ctx.expect_error(
        "AnswerCall",
        svc.AnswerCallRequest(name=callee.name, qos=less),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QOS_UNAVAILABLE",
        what="an answer below a NEEDED request",
    )
    if failure.refusal is None or failure.refusal.call != callee.name:
        raise CheckFailed("the refused answer carries no QosRefusal naming the answered call")
    if not same(failure.refusal.counter_offer, callee.requested_qos):
        raise CheckFailed("the refused answer's counter-offer is not the offer")
    answered_as = QosSpec(sending=callee.requested_qos.sending, receiving=cl(1000))
    legs = [await ctx.get(caller.name), await ctx.get(callee.name)]
    reasons(legs, [QOS_UNAVAILABLE, QOS_UNAVAILABLE], "after an answer below a NEEDED request")
    for leg, counter in ((legs[1], callee.requested_qos), (legs[0], mirror(answered_as))):
        events = await call_events(ctx, leg.name)
        tail = events[1:]
        expect_types(tail, [E.QOS_EVENT_TYPE_ADMISSION_FAILURE, E.QOS_EVENT_TYPE_CALL_DISCONNECTED], leg.name)
        if tail[0].reason != "QOS_UNAVAILABLE" or tail[1].disconnect_reason != QOS_UNAVAILABLE:
            raise CheckFailed(f"{leg.name}: the failure events lack reason QOS_UNAVAILABLE")
        if not same(tail[0].counter_offer, counter):
            raise CheckFailed(
                f"{leg.name}: ADMISSION_FAILURE's counter-offer is not "
                + ("the offer" if leg is legs[1] else "the answer, mirrored")
            )


@check(
    "INC-005",
    "At IF_AVAILABLE a lower answer connects both legs, and the caller sees what it got",
    MUST,
    "incoming",
    spec=("ANSWER-4", "PAIR-1"),
    source="TAPI 3 QSL_IF_AVAILABLE",
    needs=("qos_supported",),
)
async def if_available_answer_short(ctx: CheckContext) -> None:
    """Offer CONTROLLED_LOAD r both ways at IF_AVAILABLE; the callee answers receiving r/2 (sending kept) →
    both CONNECTED; the caller's requested_qos unchanged, its granted sending ≤ r/2; the legs mirrored."""
    rate = reserving(ctx)
    line = await open_line(ctx)
    asked = QosSpec(sending=cl(rate), receiving=cl(rate))
    caller, callee = await call_line(ctx, line, asked, IF_AVAILABLE)
    answered = await answer(ctx, callee, QosSpec(sending=NO_CHANGE, receiving=cl(rate // 2)))
    caller = await ctx.get(caller.name)
    legs_agree(caller, answered, State.STATE_CONNECTED)
    if not same(caller.requested_qos, asked):
        raise CheckFailed("the caller's requested_qos was rewritten by the answer")
    sending: FlowSpec = caller.granted_qos.sending
    if sending.service_type == ST.SERVICE_TYPE_CONTROLLED_LOAD and sending.token_rate_bytes_per_second > rate // 2:
        raise CheckFailed(
            f"the caller was granted {sending.token_rate_bytes_per_second} B/s sending, "
            f"more than the answer's {rate // 2}"
        )
    if not qos_shortfalls(caller.granted_qos, asked):
        raise CheckFailed("the caller's grant satisfies its request although the answer gave less")


@check(
    "INC-006",
    "An answer asking more than the offer is INVALID_ARGUMENT and changes nothing",
    MUST,
    "incoming",
    spec=("ANSWER-2",),
    source="TAPI lineAnswer; FLOW clauses",
)
async def answer_more_than_offer(ctx: CheckContext) -> None:
    """Offer CONTROLLED_LOAD 2000 both ways; answer with receiving 4000, or GUARANTEED sending → INVALID_ARGUMENT
    (INVALID_REQUEST) naming qos.receiving / qos.sending; the offer stays OFFERING with its etag."""
    line = await open_line(ctx)
    _, callee = await call_line(ctx, line, QosSpec(sending=cl(2000), receiving=cl(2000)), IF_AVAILABLE)
    for more, field in (
        (QosSpec(sending=NO_CHANGE, receiving=cl(4000)), "qos.receiving"),
        (
            QosSpec(
                sending=flow(
                    ST.SERVICE_TYPE_GUARANTEED, token_rate_bytes_per_second=1000, latency_microseconds=100_000
                ),
                receiving=NO_CHANGE,
            ),
            "qos.sending",
        ),
    ):
        failure = await ctx.expect_error(
            "AnswerCall",
            svc.AnswerCallRequest(name=callee.name, qos=more),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            what=f"an answer asking more than the offer ({field})",
        )
        if failure.fields and field not in failure.fields:
            raise CheckFailed(f"the refused answer names {failure.fields}, not {field}")
    still = await ctx.get(callee.name)
    if still.state != State.STATE_OFFERING or still.etag != callee.etag:
        raise CheckFailed("a refused answer changed the offered call")


@check(
    "INC-007",
    "Rejecting ends both legs REJECTED; again is harmless; a late answer is CALL_NOT_OFFERING",
    MUST,
    "incoming",
    spec=("ANSWER-5", "ANSWER-1"),
    source="TAPI LINEDISCONNECTMODE_REJECT; LINEERR_INVALCALLSTATE",
)
async def rejected(ctx: CheckContext) -> None:
    """RejectCall → both DISCONNECTED REJECTED, each [offer event, CALL_DISCONNECTED(REJECTED)]; RejectCall again
    returns the call unchanged; AnswerCall then fails FAILED_PRECONDITION CALL_NOT_OFFERING."""
    line = await open_line(ctx)
    caller, callee = await call_line(ctx, line, simple(ctx))
    try:
        first: Call = await ctx.rpc("RejectCall", svc.RejectCallRequest(name=callee.name))
    except RpcFailed as out:
        raise CheckFailed(f"RejectCall failed: {out.failure}") from None
    reasons([await ctx.get(caller.name), first], [REJECTED, REJECTED], "after RejectCall")
    for leg in (caller, callee):
        events = await call_events(ctx, leg.name)
        if [e.type for e in events[1:]] != [E.QOS_EVENT_TYPE_CALL_DISCONNECTED] or events[
            -1
        ].disconnect_reason != REJECTED:
            raise CheckFailed(
                f"{leg.name}: expected one CALL_DISCONNECTED(REJECTED) after the offer, got {describe(events)}"
            )
    again: Call = await ctx.rpc("RejectCall", svc.RejectCallRequest(name=callee.name))
    if not same(again, first):
        raise CheckFailed("rejecting a rejected call changed it")
    await ctx.expect_error(
        "AnswerCall",
        svc.AnswerCallRequest(name=callee.name),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CALL_NOT_OFFERING",
        what="answering a rejected call",
    )


@check(
    "INC-008",
    "An unanswered call rings out: both legs NO_ANSWER after the line's no_answer_timeout",
    MUST,
    "incoming",
    spec=("ANSWER-6",),
    source="TAPI LINEDISCONNECTMODE_NOANSWER",
    timeout=15.0,
)
async def rang_out(ctx: CheckContext) -> None:
    """A line with no_answer_timeout 1 s; a call to it, unanswered → within a few seconds both legs DISCONNECTED
    NO_ANSWER, each ending with CALL_DISCONNECTED(NO_ANSWER); answering it then is CALL_NOT_OFFERING."""
    line = await open_line(ctx, no_answer_seconds=1.0)
    caller, callee = await call_line(ctx, line, simple(ctx))
    events = await call_events(ctx, callee.name, what=f"the ring-out of {callee.name}")
    if events[-1].disconnect_reason != NO_ANSWER:
        raise CheckFailed(f"{callee.name} ended with reason {events[-1].disconnect_reason}, not NO_ANSWER")
    reasons([await ctx.get(caller.name), await ctx.get(callee.name)], [NO_ANSWER, NO_ANSWER], "after ringing out")
    await ctx.expect_error(
        "AnswerCall",
        svc.AnswerCallRequest(name=callee.name),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CALL_NOT_OFFERING",
        what="answering a call that rang out",
    )


@check(
    "INC-009",
    "Only a line's owner answers, rejects and closes; one open line per address",
    MUST,
    "incoming",
    spec=("ANSWER-1", "LINE-1", "LINE-2", "LINE-4"),
    source="TAPI LINECALLPRIVILEGE_OWNER; LINEERR_NOTOWNER",
)
async def owner_only(ctx: CheckContext) -> None:
    """Another principal's AnswerCall, RejectCall and CloseLine → PERMISSION_DENIED NOT_OWNER, nothing changed;
    its CreateLine for the same address → ALREADY_EXISTS ADDRESS_IN_USE; the owner's AnswerCall with a stale etag
    → ABORTED ETAG_MISMATCH."""
    intruder = ctx.session.intruder
    line = await open_line(ctx)
    _, callee = await call_line(ctx, line, simple(ctx))
    for method, request in (
        ("AnswerCall", svc.AnswerCallRequest(name=callee.name)),
        ("RejectCall", svc.RejectCallRequest(name=callee.name)),
        ("CloseLine", svc.CloseLineRequest(name=line.name)),
    ):
        await ctx.expect_error(
            method, request, grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER", intruder, f"{method} by another principal"
        )
    await ctx.expect_error(
        "CreateLine",
        svc.CreateLineRequest(line=Line(address=line.address)),
        grpc.StatusCode.ALREADY_EXISTS,
        "ADDRESS_IN_USE",
        intruder,
        "opening an address another line holds",
    )
    await ctx.expect_error(
        "AnswerCall",
        svc.AnswerCallRequest(name=callee.name, etag="stale"),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        what="AnswerCall with a stale etag",
    )
    still = await ctx.get(callee.name)
    if still.state != State.STATE_OFFERING or still.etag != callee.etag:
        raise CheckFailed("a refused AnswerCall/RejectCall changed the offered call")


@check(
    "INC-010",
    "Dropping either leg disconnects both, each with its own reason; so does a caller who gives up",
    MUST,
    "incoming",
    spec=("PAIR-3",),
    source="TAPI lineDrop; LINEDISCONNECTMODE_NORMAL",
)
async def drop_either_leg(ctx: CheckContext) -> None:
    """Answered pair, DropCall(callee) → callee NORMAL, caller PEER_DROPPED, each ending CALL_DISCONNECTED with
    previous_qos = its grant; a second pair, DropCall(caller) → caller NORMAL, callee PEER_DROPPED; a ringing call,
    DropCall(caller) → caller NORMAL, callee PEER_DROPPED."""
    line = await open_line(ctx)
    for dropper in ("callee", "caller"):
        caller, callee = await call_line(ctx, line, simple(ctx), IF_AVAILABLE)
        await answer(ctx, callee)
        caller, callee = await ctx.get(caller.name), await ctx.get(callee.name)
        leg, other = (callee, caller) if dropper == "callee" else (caller, callee)
        await ctx.drop(leg.name)
        reasons(
            [await ctx.get(leg.name), await ctx.get(other.name)],
            [NORMAL, PEER_DROPPED],
            f"after dropping the {dropper}",
        )
        for each in (leg, other):
            last = (await call_events(ctx, each.name))[-1]
            if not same(last.previous_qos, each.granted_qos):
                raise CheckFailed(f"{each.name}: CALL_DISCONNECTED.previous_qos is not its last grant")
    caller, callee = await call_line(ctx, line, simple(ctx))
    await ctx.drop(caller.name)
    reasons(
        [await ctx.get(caller.name), await ctx.get(callee.name)], [NORMAL, PEER_DROPPED], "after the caller gave up"
    )


@check(
    "INC-011",
    "Renegotiating the callee's leg changes both legs; a refusal changes neither",
    MUST,
    "incoming",
    spec=("PAIR-4", "PAIR-1"),
    source="TSPI_lineSetCallQualityOfService",
    needs=("renegotiation", "qos_supported"),
)
async def renegotiate_pair(ctx: CheckContext) -> None:
    """Answered pair (CONTROLLED_LOAD r both ways, NEEDED); the callee renegotiates its sending to r/2 → both legs
    QOS_CHANGED(RENEGOTIATED), mirrored, the caller receiving r/2; with an infeasible sending (when one is known):
    refused, both legs byte-identical, RENEGOTIATION_FAILED on the callee's leg only."""
    rate = reserving(ctx)
    line = await open_line(ctx)
    caller, callee = await call_line(ctx, line, QosSpec(sending=cl(rate), receiving=cl(rate)))
    await answer(ctx, callee)
    lower = QosSpec(sending=cl(rate // 2), receiving=NO_CHANGE)
    changed = await ctx.renegotiate(callee.name, lower)
    if not isinstance(changed, Call):
        raise CheckFailed(f"renegotiating the callee's leg down failed: {changed}")
    caller = await ctx.get(caller.name)
    legs_agree(caller, changed, State.STATE_CONNECTED)
    if caller.granted_qos.receiving.token_rate_bytes_per_second != rate // 2:
        raise CheckFailed("the callee sends less now, but the caller's receiving grant did not follow")
    for leg in (caller, changed):
        tail = (await call_events(ctx, leg.name, terminal=E.QOS_EVENT_TYPE_QOS_CHANGED))[-1]
        if tail.type != E.QOS_EVENT_TYPE_QOS_CHANGED or tail.cause != 1:
            raise CheckFailed(f"{leg.name}: no QOS_CHANGED(RENEGOTIATED) after the other leg renegotiated")
    if ctx.params.infeasible is None:
        return
    refused = await ctx.renegotiate(
        callee.name, QosSpec(sending=ctx.params.infeasible.sending, receiving=NO_CHANGE), service_level=NEEDED
    )
    if isinstance(refused, Call):
        raise CheckFailed("an infeasible renegotiation of the callee's leg was granted")
    if not (same(await ctx.get(caller.name), caller) and same(await ctx.get(changed.name), changed)):
        raise CheckFailed("a refused renegotiation changed a leg")
    caller_events = await call_events(ctx, caller.name, terminal=E.QOS_EVENT_TYPE_QOS_CHANGED)
    if caller_events[-1].type != E.QOS_EVENT_TYPE_QOS_CHANGED:
        raise CheckFailed(
            f"the caller's leg got an event for the other leg's refused renegotiation: {describe(caller_events)}"
        )
    callee_events = await call_events(ctx, changed.name, terminal=E.QOS_EVENT_TYPE_RENEGOTIATION_FAILED)
    if callee_events[-1].type != E.QOS_EVENT_TYPE_RENEGOTIATION_FAILED:
        raise CheckFailed(f"the callee's refused renegotiation was not announced: {describe(callee_events)}")


@check(
    "INC-012",
    "Watching a line delivers the events of its calls only, to any principal of its tenant",
    MUST,
    "incoming",
    spec=("LINE-3",),
    source="TAPI LINECALLPRIVILEGE_MONITOR; LINE_QOSINFO to owner and monitor applications",
)
async def watch_line(ctx: CheckContext) -> None:
    """Two lines; a call to each, and one to no line; another principal watching the first line from the session
    cursor sees exactly [CALL_OFFERED, QOS_GRANTED] of the call offered on it (no caller's leg, no other call);
    GetLine and ListLines(filter address) answer it."""
    intruder = ctx.session.intruder
    line = await open_line(ctx)
    other = await open_line(ctx)
    _, to_other = await call_line(ctx, other, simple(ctx))
    plain = await ctx.create(simple(ctx), IF_AVAILABLE)
    _, callee = await call_line(ctx, line, simple(ctx), IF_AVAILABLE)
    await answer(ctx, callee)
    request = svc.WatchEventsRequest(after_sequence=ctx.session.cursor, line=line.name)
    watch = ctx.stub.WatchEvents(request, metadata=ctx.metadata(intruder))
    try:
        events = await ctx.read(
            watch,
            until=lambda got: any(e.type == E.QOS_EVENT_TYPE_QOS_GRANTED for e in got),
            what=f"events of {line.name}",
        )
    finally:
        watch.cancel()
    if {e.call for e in events} != {callee.name} or [e.type for e in events] != [
        E.QOS_EVENT_TYPE_CALL_OFFERED,
        E.QOS_EVENT_TYPE_QOS_GRANTED,
    ]:
        raise CheckFailed(
            f"watching {line.name}: expected [CALL_OFFERED, QOS_GRANTED] of {callee.name} only, got {describe(events)} "
            f"(of {sorted({e.call for e in events})}; {to_other.name} and {plain.name} are not on it)"
        )
    got: Line = await ctx.rpc("GetLine", svc.GetLineRequest(name=line.name), intruder)
    listed = await ctx.rpc("ListLines", svc.ListLinesRequest(filter=f'address = "{line.address}"'), intruder)
    if got.name != line.name or [each.name for each in listed.lines] != [line.name]:
        raise CheckFailed(f"GetLine / ListLines(address) by another principal do not return {line.name}")


@check(
    "INC-013",
    "Closing a line ends its ringing calls NO_ANSWER, keeps answered ones, stays readable, frees its address",
    MUST,
    "incoming",
    spec=("LINE-4", "LINE-2"),
    source="TAPI lineClose; LINEDISCONNECTMODE_NOANSWER",
)
async def close_line(ctx: CheckContext) -> None:
    """An answered and a ringing call on a line; CloseLine → CLOSED (close_time set), the ringing call's legs
    NO_ANSWER, the answered pair CONNECTED; CloseLine again returns it unchanged; the address opens again."""
    line = await open_line(ctx)
    answered_caller, answered_callee = await call_line(ctx, line, simple(ctx), IF_AVAILABLE)
    await answer(ctx, answered_callee)
    ringing_caller, ringing_callee = await call_line(ctx, line, simple(ctx))
    closed: Line = await ctx.rpc("CloseLine", svc.CloseLineRequest(name=line.name))
    if closed.state != Line.State.STATE_CLOSED or not closed.HasField("close_time"):
        raise CheckFailed(f"CloseLine left {line.name} {Line.State.Name(closed.state)}")
    reasons(
        [await ctx.get(ringing_caller.name), await ctx.get(ringing_callee.name)],
        [NO_ANSWER, NO_ANSWER],
        "a call ringing on a line that closed",
    )
    for leg in (answered_caller, answered_callee):
        if (await ctx.get(leg.name)).state != State.STATE_CONNECTED:
            raise CheckFailed(f"closing the line ended the answered call {leg.name}")
    again: Line = await ctx.rpc("CloseLine", svc.CloseLineRequest(name=line.name))
    if not same(again, closed) or not same(await ctx.rpc("GetLine", svc.GetLineRequest(name=line.name)), closed):
        raise CheckFailed("a closed line changed when closed again, or does not read back as closed")
    reopened: Line = await ctx.rpc("CreateLine", svc.CreateLineRequest(line=Line(address=line.address)))

    async def close_again() -> None:
        await ctx.rpc("CloseLine", svc.CloseLineRequest(name=reopened.name))

    ctx.defer(f"close {reopened.name}", close_again)
    if reopened.state != Line.State.STATE_OPEN:
        raise CheckFailed("the address of a closed line could not be opened again")


@check(
    "INC-014",
    "A provider-initiated change to an answered pair reaches both legs, each in its own terms",
    MUST,
    "incoming",
    spec=("PAIR-5", "PAIR-1"),
    source="TAPI LINE_QOSINFO to both ends; LINEDISCONNECTMODE_QOSUNAVAIL",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=20.0,
)
async def pair_change(ctx: CheckContext) -> None:
    """An answered IF_AVAILABLE pair holding r sending (CONTROLLED_LOAD, the caller's terms); its link lowered to
    r/2 → either both legs CONNECTED with mirrored grants, each with QOS_CHANGED(PROVIDER_INITIATED, previous = its
    grant, current = its new grant), or both DISCONNECTED QOS_UNAVAILABLE, each with a loss event then
    CALL_DISCONNECTED. The capacity is restored afterwards."""
    rate = reserving(ctx)
    line = await open_line(ctx)
    caller, callee = await call_line(ctx, line, QosSpec(sending=cl(rate), receiving=best_effort()), IF_AVAILABLE)
    callee = await answer(ctx, callee)
    caller = await ctx.get(caller.name)
    link, _ = await lowerable_link(ctx, caller)
    await set_capacity(ctx, link, rate // 2)
    legs = [await ctx.get(caller.name), await ctx.get(callee.name)]
    first = (E.QOS_EVENT_TYPE_CALL_RINGBACK, E.QOS_EVENT_TYPE_CALL_OFFERED)
    if legs[0].state == State.STATE_DISCONNECTED or legs[1].state == State.STATE_DISCONNECTED:
        reasons(legs, [QOS_UNAVAILABLE, QOS_UNAVAILABLE], f"a pair whose link was lowered to {rate // 2} B/s")
        for leg, opened in zip(legs, first, strict=True):
            events = await call_events(ctx, leg.name, what=f"events of {leg.name}, shed by the provider")
            tail = [e.type for e in events[2:]]
            if [e.type for e in events[:2]] != [opened, E.QOS_EVENT_TYPE_QOS_GRANTED] or (
                len(tail) != 2 or tail[0] not in LOSS_EVENTS or tail[1] != E.QOS_EVENT_TYPE_CALL_DISCONNECTED
            ):
                raise CheckFailed(
                    f"{leg.name}, shed with its pair: expected [offer event, QOS_GRANTED, NOQOS|…, "
                    f"CALL_DISCONNECTED], got {describe(events)}"
                )
        return
    legs_agree(legs[0], legs[1], State.STATE_CONNECTED)
    for before, leg, opened in zip((caller, callee), legs, first, strict=True):
        if same(leg.granted_qos, before.granted_qos):
            raise CheckFailed(f"{leg.name} keeps {brief(leg.granted_qos)} on a link lowered to {rate // 2} B/s")
        events = await call_events(ctx, leg.name, count=3, what=f"events of {leg.name}, degraded by the provider")
        expect_types(events, [opened, E.QOS_EVENT_TYPE_QOS_GRANTED, E.QOS_EVENT_TYPE_QOS_CHANGED], leg.name)
        change = events[2]
        if (
            change.cause != PROVIDER_INITIATED
            or not same(change.previous_qos, before.granted_qos)
            or not same(change.current_qos, leg.granted_qos)
        ):
            raise CheckFailed(
                f"{leg.name}: QOS_CHANGED lacks cause PROVIDER_INITIATED, or its previous/current QoS are not this "
                "leg's own grants before and after"
            )
