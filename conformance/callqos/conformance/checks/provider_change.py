"""PCHG: a provider-initiated change (driven by lowering a link's capacity through UpdateLink)
keeps the links within capacity and announces every affected call correctly."""

from __future__ import annotations

import asyncio

from callqos.conformance.checks.common import LOSS_EVENTS, call_events, check_links_within
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import (
    Call,
    CheckContext,
    EventType,
    Level,
    RpcFailed,
    RpcFailure,
    describe,
    needs_capacity,
    same,
)
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow, qos_rates, qos_shortfalls
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import provider_pb2

E = EventType


@check(
    "PCHG-001",
    "Lost link capacity: links stay within capacity; each affected call is degraded or dropped with its events",
    MUST,
    "provider-change",
    spec=("EVENT-4", "LINK-3", "PROV-7", "GRANT-3", "LINK-2"),
    source="TAPI LINE_QOSINFO QE_NOQOS; LINEDISCONNECTMODE_QOSUNAVAIL",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=15,
)
async def capacity_loss(ctx: CheckContext) -> None:
    """A NEEDED and an IF_AVAILABLE call of capacity/4 each; UpdateLink lowers the link below what they hold.
    Then: reserved ≤ capacity; a dropped call has [loss event, CALL_DISCONNECTED(QOS_UNAVAILABLE)]; a degraded one
    [QOS_CHANGED(PROVIDER_INITIATED, previous, current = its new grant)]; a NEEDED call never stays below its request;
    an untouched call has no event. The capacity is restored afterwards."""
    capacity = needs_capacity(ctx)
    before = await ctx.reserved()
    rate = capacity // 4
    qos = QosSpec(sending=cl(rate), receiving=best_effort())
    calls = [await ctx.create(qos, Level.SERVICE_LEVEL_NEEDED), await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)]
    now = await ctx.reserved()
    used = [name for name in now if now[name] != before.get(name)]
    if len(used) != 1:
        raise CheckSkipped(f"the calls did not land on exactly one link ({used})")
    link_name = used[0]
    if any(before[link_name]):
        raise CheckSkipped(f"{link_name} carries reservations the suite did not make; lowering it would touch them")
    link = next(each for each in await ctx.links() if each.name == link_name)
    original = link.capacity_bytes_per_second

    async def restore() -> None:
        await ctx.rpc(
            "UpdateLink",
            svc.UpdateLinkRequest(link=provider_pb2.Link(name=link_name, capacity_bytes_per_second=original)),
        )

    ctx.defer(f"restore {link_name} capacity to {original}", restore)
    lowered = now[link_name][0] - rate // 2
    await ctx.rpc(
        "UpdateLink", svc.UpdateLinkRequest(link=provider_pb2.Link(name=link_name, capacity_bytes_per_second=lowered))
    )
    await check_links_within(ctx)
    affected = 0
    for call in calls:
        after = await ctx.get(call.name)
        if after.state == Call.State.STATE_DISCONNECTED:
            affected += 1
            events = await call_events(ctx, call.name)
            tail = [e.type for e in events[1:]]
            if len(tail) != 2 or tail[0] not in LOSS_EVENTS or tail[1] != E.QOS_EVENT_TYPE_CALL_DISCONNECTED:
                raise CheckFailed(
                    f"{call.name} dropped by the provider: expected [QOS_GRANTED, NOQOS|…, "
                    f"CALL_DISCONNECTED], got {describe(events)}"
                )
            if events[-1].disconnect_reason != 2:
                raise CheckFailed(f"{call.name}: provider drop reason is not QOS_UNAVAILABLE")
        elif not same(after.granted_qos, call.granted_qos):
            affected += 1
            if call.service_level == Level.SERVICE_LEVEL_NEEDED and qos_shortfalls(
                after.granted_qos, call.requested_qos
            ):
                raise CheckFailed(
                    f"{call.name} at NEEDED stays connected below its request; it must be dropped instead"
                )
            events = await call_events(ctx, call.name, count=2)
            if [e.type for e in events] != [E.QOS_EVENT_TYPE_QOS_GRANTED, E.QOS_EVENT_TYPE_QOS_CHANGED]:
                raise CheckFailed(f"{call.name} degraded: expected [QOS_GRANTED, QOS_CHANGED], got {describe(events)}")
            change = events[1]
            if (
                change.cause != 2
                or not same(change.previous_qos, call.granted_qos)
                or not same(change.current_qos, after.granted_qos)
            ):
                raise CheckFailed(
                    f"{call.name}: QOS_CHANGED lacks cause PROVIDER_INITIATED or the right previous/current QoS"
                )
        else:
            events = await call_events(ctx, call.name, count=1)
            if len(events) != 1:
                raise CheckFailed(f"{call.name} unchanged but got events {describe(events)}")
    if affected == 0:
        raise CheckFailed(
            f"{link_name} lowered to {lowered} B/s below the {now[link_name][0]} B/s held, yet no call changed"
        )


async def lowerable_link(ctx: CheckContext, probe: Call) -> tuple[str, int]:
    """The link the suite's calls are on and its capacity — only when they are all it carries (a lowered link must
    not shed anyone else's calls); its capacity is restored when the check ends."""
    used = [link for link in await ctx.links() if link.sending_reserved_bytes_per_second]
    if len(used) != 1:
        raise CheckSkipped(f"the suite's calls are not on exactly one link ({[link.name for link in used]})")
    link = used[0]
    connected = await ctx.connected_calls()
    if not all(ctx.session.ours(call.owner) for call in connected):
        raise CheckSkipped(f"{link.name} may carry calls the suite did not make; lowering it would touch them")
    original = link.capacity_bytes_per_second

    async def restore() -> None:
        await set_capacity(ctx, link.name, original)

    ctx.defer(f"restore {link.name} capacity to {original}", restore)
    return link.name, original


async def set_capacity(ctx: CheckContext, link: str, capacity: int) -> None:
    try:
        await ctx.rpc(
            "UpdateLink", svc.UpdateLinkRequest(link=provider_pb2.Link(name=link, capacity_bytes_per_second=capacity))
        )
    except RpcFailed as out:
        raise CheckFailed(f"UpdateLink({link}, {capacity} B/s) failed: {out.failure}") from None


async def settled(
    ctx: CheckContext, calls: list[Call], capacity: int, what: str, dropped: frozenset[str] = frozenset()
) -> list[Call]:
    """After a capacity change: the links report what the connected calls hold and fit the capacity; each call is
    unchanged, degraded (never below a NEEDED request) or dropped with QOS_UNAVAILABLE (or NORMAL for the calls in
    `dropped`, which the check dropped itself meanwhile). Returns the calls as they are now."""
    problem = await ctx.accounting()
    if problem:
        raise CheckFailed(f"after {what}: {problem}")
    await check_links_within(ctx)
    now = []
    for call in calls:
        after = await ctx.get(call.name)
        if after.state == Call.State.STATE_CONNECTED:
            if call.service_level == Level.SERVICE_LEVEL_NEEDED and qos_shortfalls(
                after.granted_qos, call.requested_qos
            ):
                raise CheckFailed(f"after {what}: {call.name} at NEEDED stays connected below its request")
        elif call.state == Call.State.STATE_CONNECTED:
            allowed = {2, 1} if call.name in dropped else {2}
            if after.disconnect_reason not in allowed:
                raise CheckFailed(
                    f"after {what}: {call.name} was disconnected with reason {after.disconnect_reason}, not "
                    "QOS_UNAVAILABLE"
                )
        now.append(after)
    held = sum(qos_rates(c.granted_qos)[0] for c in now if c.state == Call.State.STATE_CONNECTED)
    if held > capacity:
        raise CheckFailed(f"after {what}: the connected calls hold {held} B/s sending on {capacity} B/s")
    return now


def sending(rate: int) -> QosSpec:
    return QosSpec(sending=cl(rate), receiving=best_effort())


@check(
    "PCHG-002",
    "Successive capacity losses: each shed call is freed once, and the link admits exactly its capacity afterwards",
    MUST,
    "provider-change",
    spec=("PROV-5", "PROV-4", "LINK-3", "LINK-2"),
    source="TAPI LINEDISCONNECTMODE_QOSUNAVAIL; providers/base.py: release is idempotent",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=20,
)
async def repeated_losses(ctx: CheckContext) -> None:
    """Three NEEDED calls of c/4 sending; the link lowered to c/2, then c/4, then c/8: after each, the links report
    what the connected calls hold, within capacity. Capacity restored: calls of c/4 fill it with exactly 4."""
    capacity = needs_capacity(ctx)
    calls = [await ctx.create(sending(capacity // 4), Level.SERVICE_LEVEL_NEEDED) for _ in range(3)]
    link, original = await lowerable_link(ctx, calls[0])
    for lowered in (capacity // 2, capacity // 4, capacity // 8):
        await set_capacity(ctx, link, lowered)
        calls = await settled(ctx, calls, lowered, f"lowering {link} to {lowered} B/s")
    await set_capacity(ctx, link, original)
    for call in calls:
        if call.state == Call.State.STATE_CONNECTED:
            await ctx.drop(call.name)
    admitted = 0
    for _ in range(5):
        result = await ctx.try_create(sending(original // 4), Level.SERVICE_LEVEL_NEEDED)
        if isinstance(result, RpcFailure):
            break
        admitted += 1
    if admitted != 4:
        raise CheckFailed(
            f"after the losses and the capacity restored to {original} B/s, {admitted} calls of {original // 4} B/s "
            "were admitted instead of 4: the provider's ledger no longer matches its calls"
        )


@check(
    "PCHG-003",
    "A call degraded by a capacity loss frees exactly its degraded reservation when dropped",
    MUST,
    "provider-change",
    spec=("PROV-4", "EVENT-4", "LINK-2"),
    source="TAPI LINE_QOSINFO; callqos_service.proto DropCall (releases what it reserved)",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=15,
)
async def degraded_then_dropped(ctx: CheckContext) -> None:
    """A NEEDED call of c/4 then an IF_AVAILABLE call of c/2 sending; the link lowered to c/2 (one is degraded or
    dropped); every connected call dropped in turn: after each drop the links report what the remaining calls hold."""
    capacity = needs_capacity(ctx)
    calls = [
        await ctx.create(sending(capacity // 4), Level.SERVICE_LEVEL_NEEDED),
        await ctx.create(sending(capacity // 2), Level.SERVICE_LEVEL_IF_AVAILABLE),
    ]
    link, _ = await lowerable_link(ctx, calls[0])
    await set_capacity(ctx, link, capacity // 2)
    calls = await settled(ctx, calls, capacity // 2, f"lowering {link} to {capacity // 2} B/s")
    for call in reversed(calls):
        if call.state != Call.State.STATE_CONNECTED:
            continue
        await ctx.drop(call.name)
        problem = await ctx.accounting()
        if problem:
            held = "degraded" if call.service_level == Level.SERVICE_LEVEL_IF_AVAILABLE else "kept"
            raise CheckFailed(f"after dropping {call.name} ({held} at {qos_rates(call.granted_qos)[0]} B/s): {problem}")


@check(
    "PCHG-004",
    "A capacity loss that leaves a call a few bytes per second is carried out: degraded or dropped, never a failure",
    MUST,
    "provider-change",
    spec=("LINK-3", "PROV-16", "LINK-2"),
    source="callqos_service.proto UpdateLink; providers/base.py: changes are reported through the host",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=15,
)
async def loss_to_a_trickle(ctx: CheckContext) -> None:
    """A NEEDED CONTROLLED_LOAD call of c/2, then an IF_AVAILABLE call of c/4 (GUARANTEED with an unbounded peak and a
    bucket of 4 MTUs where advertised: its delay bound at a few B/s is hours); the link lowered to c/2 + 1 B/s →
    UpdateLink succeeds, the links report what the calls hold, within capacity."""
    capacity = needs_capacity(ctx)
    first = await ctx.create(sending(capacity // 2), Level.SERVICE_LEVEL_NEEDED)
    links = await ctx.links()
    mtu = max((link.mtu_bytes for link in links), default=1500) or 1500
    if ST.SERVICE_TYPE_GUARANTEED in ctx.caps.service_types:
        spec = flow(
            ST.SERVICE_TYPE_GUARANTEED,
            token_rate_bytes_per_second=capacity // 4,
            peak_bandwidth_unbounded=True,
            token_bucket_size_bytes=4 * mtu,
        )
        second = await ctx.create(QosSpec(sending=spec, receiving=best_effort()), Level.SERVICE_LEVEL_IF_AVAILABLE)
    else:
        second = await ctx.create(sending(capacity // 4), Level.SERVICE_LEVEL_IF_AVAILABLE)
    link, _ = await lowerable_link(ctx, first)
    lowered = capacity // 2 + 1
    await set_capacity(ctx, link, lowered)
    await settled(ctx, [first, second], lowered, f"lowering {link} to {lowered} B/s")


@check(
    "PCHG-005",
    "A drop racing a capacity loss frees the call once",
    MUST,
    "provider-change",
    spec=("PROV-5", "LINK-2"),
    source="providers/base.py: releasing a call twice, or one the provider shed, is harmless",
    needs=("provider_initiated_changes", "link_admin", "qos_supported"),
    timeout=20,
)
async def drop_during_shed(ctx: CheckContext) -> None:
    """Three times: NEEDED calls of c/2 and c/4 sending; UpdateLink(c/2) and DropCall(the newer call) sent at once →
    the links report what the connected calls hold; capacity restored."""
    capacity = needs_capacity(ctx)
    for attempt in range(3):
        older = await ctx.create(sending(capacity // 2), Level.SERVICE_LEVEL_NEEDED)
        newer = await ctx.create(sending(capacity // 4), Level.SERVICE_LEVEL_NEEDED)
        link, original = await lowerable_link(ctx, older)
        lowered = capacity // 2
        await asyncio.gather(set_capacity(ctx, link, lowered), ctx.drop(newer.name))
        await settled(
            ctx,
            [older, newer],
            lowered,
            f"attempt {attempt + 1}: lowering {link} while dropping {newer.name}",
            frozenset({newer.name}),
        )
        await set_capacity(ctx, link, original)
        await ctx.drop(older.name)
