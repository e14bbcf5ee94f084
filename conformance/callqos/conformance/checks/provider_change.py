"""PCHG: a provider-initiated change (driven by lowering a link's capacity through UpdateLink)
keeps the links within capacity and announces every affected call correctly."""

from __future__ import annotations

from callqos.conformance.checks.common import LOSS_EVENTS, call_events, check_links_within
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import Call, CheckContext, EventType, Level, describe, needs_capacity, same
from callqos.conformance.rules import QosSpec, best_effort, cl, qos_shortfalls
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
