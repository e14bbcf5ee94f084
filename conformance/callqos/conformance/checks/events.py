"""EVT: the event stream — exactly the expected events per call, in order, with the right
before/after QoS; strictly increasing sequences; resume from a cursor; cursor errors; the start
sequence header; filtering by call; monitors (other principals) see every call's events."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc

from callqos.conformance.checks.common import call_events, expect_types, is_qos_refusal, refused_to_intruder
from callqos.conformance.checks.registry import MUST, SHOULD, check
from callqos.conformance.checks.side import side_server
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import (
    Call,
    CheckContext,
    EventType,
    Level,
    RpcFailure,
    describe,
    needs_capacity,
    same,
)
from callqos.conformance.model import OWNS_SERVER
from callqos.conformance.rules import QosSpec, best_effort, cl
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import event_pb2
from callqos.wire import START_SEQUENCE_HEADER

E = EventType
IF_AVAILABLE, NEEDED = Level.SERVICE_LEVEL_IF_AVAILABLE, Level.SERVICE_LEVEL_NEEDED
GRANTED_THEN_GONE = [E.QOS_EVENT_TYPE_QOS_GRANTED, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]


def simple(ctx: CheckContext) -> QosSpec:
    return ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())


def increasing(events: Sequence[event_pb2.QosEvent], what: str) -> None:
    for a, b in itertools.pairwise(events):
        if b.sequence <= a.sequence:
            raise CheckFailed(f"{what}: sequence {b.sequence} follows {a.sequence}: {describe(events)}")


@check(
    "EVT-001",
    "A granted call's events: exactly QOS_GRANTED then, on drop, CALL_DISCONNECTED(NORMAL)",
    MUST,
    "events",
    spec=("EVENT-1",),
    source="TAPI LINE_CALLINFO: no messages after the call is idle",
)
async def granted_then_dropped(ctx: CheckContext) -> None:
    """CreateCall, DropCall → [QOS_GRANTED(current=granted), CALL_DISCONNECTED(NORMAL, previous=granted)],
    nothing after."""
    call = await ctx.create(simple(ctx), IF_AVAILABLE)
    await ctx.drop(call.name)
    events = await call_events(ctx, call.name)
    expect_types(events, GRANTED_THEN_GONE, "granted call then drop")
    increasing(events, call.name)
    granted, gone = events
    if not same(granted.current_qos, call.granted_qos):
        raise CheckFailed("QOS_GRANTED.current_qos is not the granted QoS")
    if gone.disconnect_reason != 1 or not same(gone.previous_qos, call.granted_qos):
        raise CheckFailed("CALL_DISCONNECTED lacks reason NORMAL or previous_qos = the granted QoS")


@check(
    "EVT-002",
    "A refused call's events: ADMISSION_FAILURE (with the counter-offer) then CALL_DISCONNECTED(QOS_UNAVAILABLE)",
    MUST,
    "events",
    spec=("EVENT-2", "LEVEL-1"),
    source="TAPI 3 QE_ADMISSIONFAILURE; LINEDISCONNECTMODE_QOSUNAVAIL",
)
async def refused(ctx: CheckContext) -> None:
    """CreateCall(infeasible, NEEDED) → [ADMISSION_FAILURE(reason QOS_UNAVAILABLE, counter_offer as in QosRefusal),
    CALL_DISCONNECTED(QOS_UNAVAILABLE)], nothing after."""
    if ctx.params.infeasible is None:
        raise CheckSkipped("no infeasible flowspec is known")
    request = ctx.request(ctx.params.infeasible, NEEDED)
    result = await ctx.try_create(ctx.params.infeasible, request=request)
    if not isinstance(result, RpcFailure) or not is_qos_refusal(result):
        raise CheckFailed(
            "expected a QOS_UNAVAILABLE refusal, got "
            f"{result if isinstance(result, RpcFailure) else 'a connected call'}"
        )
    name = f"calls/{request.call_id}"
    events = await call_events(ctx, name)
    expect_types(events, [E.QOS_EVENT_TYPE_ADMISSION_FAILURE, E.QOS_EVENT_TYPE_CALL_DISCONNECTED], "refused call")
    increasing(events, name)
    failure, gone = events
    if failure.reason != "QOS_UNAVAILABLE":
        raise CheckFailed(f"ADMISSION_FAILURE.reason is {failure.reason!r}, not QOS_UNAVAILABLE")
    offer = result.refusal.counter_offer if result.refusal and result.refusal.HasField("counter_offer") else None
    if offer is not None and not same(failure.counter_offer, offer):
        raise CheckFailed("ADMISSION_FAILURE.counter_offer differs from the QosRefusal counter-offer")
    if gone.disconnect_reason != 2:
        raise CheckFailed("CALL_DISCONNECTED.disconnect_reason is not QOS_UNAVAILABLE")


@check(
    "EVT-003",
    "Renegotiation events: QOS_CHANGED(RENEGOTIATED, before, after); a refusal RENEGOTIATION_FAILED(unchanged)",
    MUST,
    "events",
    spec=("EVENT-3",),
    source="TSPI_lineSetCallQualityOfService: LINECALLINFOSTATE_QOS on success, no change on failure",
    needs=("renegotiation", "qos_supported"),
)
async def renegotiation_events(ctx: CheckContext) -> None:
    """Create, renegotiate up (ok), renegotiate beyond capacity (refused), drop → [GRANTED, CHANGED,
    RENEGOTIATION_FAILED, DISCONNECTED]."""
    capacity = needs_capacity(ctx)
    call = await ctx.create(QosSpec(sending=cl(capacity // 10), receiving=cl(capacity // 10)), NEEDED)
    changed = await ctx.renegotiate(call.name, QosSpec(sending=cl(capacity // 8), receiving=cl(capacity // 8)))
    if isinstance(changed, RpcFailure):
        raise CheckFailed(f"feasible renegotiation refused: {changed}")
    refusal = await ctx.renegotiate(call.name, QosSpec(sending=cl(capacity + 1), receiving=cl(capacity // 8)))
    if isinstance(refusal, Call):
        raise CheckFailed("renegotiation beyond capacity succeeded")
    await ctx.drop(call.name)
    events = await call_events(ctx, call.name)
    expect_types(
        events,
        [
            E.QOS_EVENT_TYPE_QOS_GRANTED,
            E.QOS_EVENT_TYPE_QOS_CHANGED,
            E.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
            E.QOS_EVENT_TYPE_CALL_DISCONNECTED,
        ],
        "renegotiated call",
    )
    increasing(events, call.name)
    _, change, failed, _ = events
    if (
        change.cause != 1
        or not same(change.previous_qos, call.granted_qos)
        or not same(change.current_qos, changed.granted_qos)
    ):
        raise CheckFailed("QOS_CHANGED lacks cause RENEGOTIATED or the right previous/current QoS")
    if not (same(failed.previous_qos, changed.granted_qos) and same(failed.current_qos, changed.granted_qos)):
        raise CheckFailed("RENEGOTIATION_FAILED must carry previous_qos == current_qos == the unchanged grant")


async def made_and_dropped(ctx: CheckContext) -> Call:
    call = await ctx.create(simple(ctx), IF_AVAILABLE)
    await ctx.drop(call.name)
    return call


async def _three_calls(ctx: CheckContext) -> list[Call]:
    calls = [await ctx.create(simple(ctx), IF_AVAILABLE) for _ in range(3)]
    for call in calls:
        await ctx.drop(call.name)
    return calls


@check(
    "EVT-004",
    "Sequences strictly increase across the stream; each call's events arrive in order",
    MUST,
    "events",
    spec=("WATCH-1",),
    source="event.proto QosEvent.sequence",
)
async def ordering(ctx: CheckContext) -> None:
    """Three calls made and dropped; the unfiltered stream from the run's cursor is strictly increasing and has
    each call's QOS_GRANTED before its CALL_DISCONNECTED."""
    calls = await _three_calls(ctx)
    names = {c.name for c in calls}
    done = lambda got: names <= {e.call for e in got if e.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED}  # noqa: E731
    events = await ctx.events(None, until=done, settle=0.1, what="unfiltered stream")
    increasing(events, "unfiltered stream")
    for name in names:
        mine = [e.type for e in events if e.call == name]
        if mine != GRANTED_THEN_GONE:
            raise CheckFailed(f"{name}: events {[E.Name(t) for t in mine]} in the unfiltered stream")


@check(
    "EVT-005",
    "Resuming from a cursor delivers every later event, without loss or repeat",
    MUST,
    "events",
    spec=("WATCH-2",),
    source="callqos_service.proto WatchEvents",
)
async def resume(ctx: CheckContext) -> None:
    """Read a call's events; resume after the first → exactly the rest, byte-identical; resume after the last
    → nothing."""
    call = await ctx.create(simple(ctx), IF_AVAILABLE)
    await ctx.drop(call.name)
    events = await call_events(ctx, call.name)
    rest = await ctx.events(
        call.name, after=events[0].sequence, until=lambda got: len(got) >= len(events) - 1, what="resumed stream"
    )
    if len(rest) != len(events) - 1 or not all(same(a, b) for a, b in zip(rest, events[1:], strict=True)):
        raise CheckFailed(f"resumed after #{events[0].sequence}: expected {describe(events[1:])}, got {describe(rest)}")
    tail = await ctx.events(
        call.name, after=events[-1].sequence, until=lambda got: True, what="stream after the last event"
    )
    if tail:
        raise CheckFailed(f"resuming after the last event replayed {describe(tail)}")


@check(
    "EVT-006",
    "Watching one call delivers that call's events only",
    MUST,
    "events",
    spec=("WATCH-4",),
    source="callqos_service.proto WatchEventsRequest.call",
)
async def filtered(ctx: CheckContext) -> None:
    """Three calls; WatchEvents(call=second) yields only the second call's events."""
    calls = await _three_calls(ctx)
    events = await call_events(ctx, calls[1].name)
    strays = [e for e in events if e.call != calls[1].name]
    if strays:
        raise CheckFailed(f"filtered stream carried other calls' events: {describe(strays)}")


@check(
    "EVT-007",
    "A policy refusal emits POLICY_FAILURE, not ADMISSION_FAILURE",
    MUST,
    "events",
    spec=("EVENT-2", "ADMIT-4"),
    source="TAPI 3 QE_POLICYFAILURE",
    needs=("policy",),
)
async def policy_event(ctx: CheckContext) -> None:
    """CreateCall(policy_refused, NEEDED) → [POLICY_FAILURE(reason QOS_POLICY_FAILURE),
    CALL_DISCONNECTED(QOS_UNAVAILABLE)]."""
    if ctx.params.policy_refused is None:
        raise CheckSkipped("no policy-refused flowspec is known")
    request = ctx.request(ctx.params.policy_refused, NEEDED)
    result = await ctx.try_create(ctx.params.policy_refused, request=request)
    if isinstance(result, Call):
        raise CheckFailed("the policy-refused request connected")
    events = await call_events(ctx, f"calls/{request.call_id}")
    expect_types(events, [E.QOS_EVENT_TYPE_POLICY_FAILURE, E.QOS_EVENT_TYPE_CALL_DISCONNECTED], "policy-refused call")
    if events[0].reason != "QOS_POLICY_FAILURE":
        raise CheckFailed(f"POLICY_FAILURE.reason is {events[0].reason!r}")


@check(
    "EVT-008",
    "Events caused by a request carry its request_id",
    SHOULD,
    "events",
    spec=("EVENT-6",),
    source="TSPI request ids; event.proto QosEvent.request_id",
)
async def correlation(ctx: CheckContext) -> None:
    """CreateCall with a request_id → its QOS_GRANTED event carries that request_id."""
    rid = f"req-{ctx.unique()}"
    call = await ctx.create(simple(ctx), IF_AVAILABLE, request_id=rid)
    events = await call_events(ctx, call.name, count=1)
    if events[0].request_id != rid:
        raise CheckFailed(f"QOS_GRANTED.request_id is {events[0].request_id!r}, expected {rid!r}")


@check(
    "EVT-009",
    "A cursor beyond the newest event is OUT_OF_RANGE (CURSOR_UNKNOWN)",
    MUST,
    "events",
    spec=("WATCH-6",),
    source="errors.proto CURSOR_UNKNOWN",
)
async def unknown_cursor(ctx: CheckContext) -> None:
    """WatchEvents(after_sequence = 2**62) → OUT_OF_RANGE CURSOR_UNKNOWN, not a stream that waits or starts from now.
    (CURSOR_EXPIRED needs control over retention: EVT-013, on a side server.)"""
    failure = await ctx.watch_failure(2**62)
    if failure.code != grpc.StatusCode.OUT_OF_RANGE or failure.reason != "CURSOR_UNKNOWN":
        raise CheckFailed(f"WatchEvents(after_sequence=2**62): expected OUT_OF_RANGE CURSOR_UNKNOWN, got {failure}")


@check(
    "EVT-010",
    "A monitor (another principal) receives the call's events; its refused changes emit none",
    MUST,
    "events",
    spec=("OWNER-2", "OWNER-3", "EVENT-1"),
    source="TAPI QoS overview: events to owner or monitor; lineSetCallQualityOfService: OWNER privilege",
)
async def monitor(ctx: CheckContext) -> None:
    """CreateCall; RenegotiateCall and DropCall by another principal → NOT_OWNER; DropCall by the owner; that other
    principal's WatchEvents(call) → exactly [QOS_GRANTED, CALL_DISCONNECTED]."""
    call = await ctx.create(simple(ctx), IF_AVAILABLE)
    await refused_to_intruder(ctx, call, simple(ctx))
    await ctx.drop(call.name)
    events = await ctx.events(
        call.name,
        until=lambda got: any(e.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED for e in got),
        principal=ctx.session.intruder,
        what="a monitor's watch",
    )
    expect_types(events, GRANTED_THEN_GONE, "a monitor's watch of a call whose non-owner changes were refused")


@check(
    "EVT-011",
    f"WatchEvents initial metadata {START_SEQUENCE_HEADER} is the cursor the stream starts after",
    MUST,
    "events",
    spec=("WATCH-8", "WATCH-2", "EVENT-1"),
    source="callqos_service.proto WatchEvents: x-callqos-start-sequence",
)
async def start_sequence(ctx: CheckContext) -> None:
    """WatchEvents(after_sequence=N) → header N. WatchEvents from now → header H ≥ every sequence this run has seen;
    a call made afterwards arrives on it with sequences > H, and resuming after H gives the same events."""
    first = await made_and_dropped(ctx)
    last = (await call_events(ctx, first.name))[-1].sequence
    stream = ctx.watch(last, first.name)
    try:
        header = await ctx.start_sequence(stream)
    finally:
        stream.cancel()
    if header != last:
        raise CheckFailed(f"WatchEvents(after_sequence={last}): {START_SEQUENCE_HEADER} is {header}, expected {last}")
    seen = ctx.session.newest
    stream = ctx.watch(None)
    try:
        header = await ctx.start_sequence(stream)
        if header is None or header < seen:
            raise CheckFailed(
                f"WatchEvents from now: {START_SEQUENCE_HEADER} is {header}, expected ≥ {seen} (already delivered)"
            )
        second = await made_and_dropped(ctx)
        gone = lambda got: any(e.call == second.name and e.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED for e in got)  # noqa: E731
        live = [
            e for e in await ctx.read(stream, until=gone, settle=0, what="a watch from now") if e.call == second.name
        ]
    finally:
        stream.cancel()
    expect_types(live, GRANTED_THEN_GONE, "a call made after a watch from now started")
    if any(e.sequence <= header for e in live):
        raise CheckFailed(f"a watch from now started after {header} but delivered {describe(live)}")
    resumed = await ctx.events(second.name, after=header, until=gone, settle=0, what=f"resumed after {header}")
    if [e.sequence for e in resumed] != [e.sequence for e in live]:
        raise CheckFailed(
            f"resuming after the start sequence {header} gave {describe(resumed)}, the live watch {describe(live)}"
        )


@check(
    "EVT-012",
    "Watching some event types delivers those types only",
    MUST,
    "events",
    spec=("WATCH-5",),
    source="callqos_service.proto WatchEventsRequest.types",
)
async def type_filter(ctx: CheckContext) -> None:
    """A call made and dropped; WatchEvents(call, types = [CALL_DISCONNECTED]) → exactly its CALL_DISCONNECTED."""
    call = await made_and_dropped(ctx)
    request = svc.WatchEventsRequest(call=call.name, types=[E.QOS_EVENT_TYPE_CALL_DISCONNECTED])
    request.after_sequence = ctx.session.cursor
    stream = ctx.stub.WatchEvents(request, metadata=ctx.metadata())
    try:
        got = await ctx.read(
            stream, until=lambda got: any(e.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED for e in got), what="type filter"
        )
    finally:
        stream.cancel()
    expect_types(got, [E.QOS_EVENT_TYPE_CALL_DISCONNECTED], "a watch of CALL_DISCONNECTED events only")


@check(
    "EVT-013",
    "A cursor older than retention is OUT_OF_RANGE (CURSOR_EXPIRED); past the watcher limits, TOO_MANY_WATCHERS",
    MUST,
    "events",
    spec=("WATCH-7", "WATCH-10", "WATCH-11"),
    source="callqos_service.proto WatchEvents; errors.proto CURSOR_EXPIRED, TOO_MANY_WATCHERS",
    needs=(OWNS_SERVER,),
    timeout=40,
)
async def retention_and_limits(ctx: CheckContext) -> None:
    """On a side server keeping 2 events, 3 watchers, 2 per principal: two calls made and dropped (4 events), the
    server restarted (it prunes at start) → WatchEvents(after_sequence = 1) fails OUT_OF_RANGE CURSOR_EXPIRED; two
    watches open → the same principal's third fails RESOURCE_EXHAUSTED TOO_MANY_WATCHERS (scope principal); another
    principal's opens; a fourth fails TOO_MANY_WATCHERS (scope server)."""
    async with side_server(ctx, event_retention_count=2, max_watchers=3, max_watchers_per_principal=2) as side:
        for _ in range(2):
            call = await side.create(simple(ctx), IF_AVAILABLE)
            await side.drop(call.name)
        await side.session.restart()
        expired = await side.watch_failure(1)
        if (expired.code, expired.reason) != (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED"):
            raise CheckFailed(
                f"WatchEvents(after_sequence=1) behind retention: expected OUT_OF_RANGE CURSOR_EXPIRED, got {expired}"
            )
        intruder = ctx.session.intruder
        streams = [side.watch(None), side.watch(None)]
        try:
            for stream in streams:
                await side.start_sequence(stream)
            third = await side.watch_failure(0)
            streams.append(side.watch(None, principal=intruder))
            await side.start_sequence(streams[-1])
            fourth = await side.watch_failure(0, principal=intruder)
        finally:
            for stream in streams:
                stream.cancel()
        for failure, scope, what in (
            (third, "principal", "a principal's third watch with max_watchers_per_principal = 2"),
            (fourth, "server", "a fourth watch with max_watchers = 3"),
        ):
            if (failure.code, failure.reason, failure.metadata.get("scope")) != (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_WATCHERS",
                scope,
            ):
                raise CheckFailed(
                    f"{what}: expected RESOURCE_EXHAUSTED TOO_MANY_WATCHERS (scope {scope}), got {failure} "
                    f"(scope {failure.metadata.get('scope')!r})"
                )
