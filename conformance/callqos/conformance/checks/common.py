"""Steps several checks share: fill to refusal, sum what our calls hold, wait for a call's events."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, EventType, Level, QosEvent, RpcFailed, RpcFailure, describe
from callqos.conformance.rules import QosSpec, best_effort, cl, qos_rates
from callqos.v1 import callqos_service_pb2 as svc

REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED
LOSS_EVENTS = (
    EventType.QOS_EVENT_TYPE_NOQOS,
    EventType.QOS_EVENT_TYPE_ADMISSION_FAILURE,
    EventType.QOS_EVENT_TYPE_POLICY_FAILURE,
    EventType.QOS_EVENT_TYPE_GENERIC_ERROR,
)


def is_qos_refusal(failure: RpcFailure) -> bool:
    return failure.code == REFUSED and failure.reason == "QOS_UNAVAILABLE"


def one_direction_too_much(capacity: int) -> tuple[tuple[QosSpec, QosSpec], ...]:
    """(what another call holds, a request where one direction fits and the other does not),
    each way round: a provider that reserves the direction that fits and refuses the other is
    half-refusing (PROV-1)."""
    return (
        (
            QosSpec(sending=best_effort(), receiving=cl(capacity // 2)),
            QosSpec(sending=cl(capacity // 4), receiving=cl(3 * capacity // 4)),
        ),
        (
            QosSpec(sending=cl(capacity // 2), receiving=best_effort()),
            QosSpec(sending=cl(3 * capacity // 4), receiving=cl(capacity // 4)),
        ),
    )


async def fill(ctx: CheckContext, qos: QosSpec, level: Level) -> tuple[list[Call], RpcFailure | None]:
    """Create calls with `qos` until the target refuses one (QOS_UNAVAILABLE) or the bound is hit."""
    calls: list[Call] = []
    for _ in range(ctx.params.max_fill_calls):
        result = await ctx.try_create(qos, level)
        if isinstance(result, Call):
            if result.state != Call.State.STATE_CONNECTED:
                raise CheckFailed(f"CreateCall returned {result.name} not CONNECTED")
            calls.append(result)
            continue
        if not is_qos_refusal(result):
            raise CheckFailed(
                f"while filling with {len(calls)} calls: expected success or RESOURCE_EXHAUSTED "
                f"QOS_UNAVAILABLE, got {result}"
            )
        return calls, result
    return calls, None


def held(calls: list[Call]) -> tuple[int, int]:
    """(sending, receiving) bytes/s our connected calls hold according to their granted QoS."""
    send = recv = 0
    for call in calls:
        if call.state == Call.State.STATE_CONNECTED:
            s, r = qos_rates(call.granted_qos)
            send, recv = send + s, recv + r
    return send, recv


def check_within(ctx: CheckContext, calls: list[Call], capacity: int, what: str) -> None:
    send, recv = held(calls)
    if send > capacity or recv > capacity:
        raise CheckFailed(
            f"over-admission: {what}: {len(calls)} connected calls hold {send} B/s sending and {recv} B/s receiving, "
            f"capacity {capacity} B/s per direction"
        )


async def check_links_within(ctx: CheckContext) -> None:
    if not ctx.caps.link_admin:
        return
    for link in await ctx.links():
        for direction, used in (
            ("sending", link.sending_reserved_bytes_per_second),
            ("receiving", link.receiving_reserved_bytes_per_second),
        ):
            if used > link.capacity_bytes_per_second:
                raise CheckFailed(
                    f"{link.name}: {direction} reserved {used} B/s exceeds capacity "
                    f"{link.capacity_bytes_per_second} B/s"
                )


async def call_events(
    ctx: CheckContext,
    name: str,
    terminal: int = EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    count: int = 0,
    what: str = "",
) -> list[QosEvent]:
    """The call's events, read until `terminal` arrives (or `count` events), plus a settle period."""

    def done(events: list[QosEvent]) -> bool:
        if count:
            return len(events) >= count
        return any(e.type == terminal for e in events)

    return await ctx.events(name, until=done, what=what or f"events of {name}")


def expect_types(events: Sequence[QosEvent], expected: Sequence[int], what: str) -> None:
    got = [e.type for e in events]
    if got != list(expected):
        want = "[" + ", ".join(EventType.Name(t).removeprefix("QOS_EVENT_TYPE_") for t in expected) + "]"
        raise CheckFailed(f"{what}: expected exactly {want}, got {describe(events)}")


async def refused_to_intruder(ctx: CheckContext, call: Call, qos: QosSpec) -> None:
    """RenegotiateCall and DropCall of `call` by another principal → PERMISSION_DENIED NOT_OWNER
    (a renegotiation may be UNIMPLEMENTED where renegotiation is not advertised)."""
    intruder = ctx.session.intruder
    failure = None
    try:
        await ctx.rpc("RenegotiateCall", svc.RenegotiateCallRequest(name=call.name, qos=qos), intruder)
    except RpcFailed as out:
        failure = out.failure
    ok = failure is not None and (
        (failure.code == grpc.StatusCode.PERMISSION_DENIED and failure.reason == "NOT_OWNER")
        or (not ctx.caps.renegotiation and failure.code == grpc.StatusCode.UNIMPLEMENTED)
    )
    if not ok:
        raise CheckFailed(
            f"RenegotiateCall by another principal: expected PERMISSION_DENIED NOT_OWNER, got {failure or 'success'}"
        )
    await ctx.expect_error(
        "DropCall",
        svc.DropCallRequest(name=call.name),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_OWNER",
        principal=intruder,
        what="DropCall by another principal",
    )
