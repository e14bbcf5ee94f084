"""RESTART: what must survive a restart of the hosting server — connected calls and their reservations
(PROV-11), a link's capacity (LINK-4), the event stream (WATCH-3) — and how a shutdown ends a watch
(WATCH-9). Only where the suite owns the server (--provider): it stops it with SIGTERM and starts it
again on the same SQLite data directory and port."""

from __future__ import annotations

import asyncio
import datetime

import grpc

from callqos.conformance.checks import incoming
from callqos.conformance.checks.common import call_events, is_qos_refusal
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, Level, brief, decode, describe, needs_capacity, same
from callqos.conformance.model import OWNS_SERVER
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import provider_pb2

IF_AVAILABLE = Level.SERVICE_LEVEL_IF_AVAILABLE


@check(
    "RESTART-001",
    "Connected calls survive a restart with their grants, and the provider holds their reservations again",
    MUST,
    "restart",
    spec=("PROV-11", "LINK-2", "ADMIT-1"),
    source="providers/base.py Provider.start: re-take the restored calls' reservations",
    needs=(OWNS_SERVER, "qos_supported"),
    timeout=30,
)
async def calls_survive(ctx: CheckContext) -> None:
    """A NEEDED CONTROLLED_LOAD call (c/4 each way), an IF_AVAILABLE one (GUARANTEED c/4 where advertised) and a
    BEST_EFFORT-level one; restart → each is CONNECTED with byte-identical granted QoS, the links report what they
    hold, and a request for more than what is free (c/2 + 1 sending) is refused, not over-admitted."""
    capacity = needs_capacity(ctx)
    second = (
        QosSpec(
            sending=flow(
                ST.SERVICE_TYPE_GUARANTEED,
                token_rate_bytes_per_second=capacity // 8,
                peak_bandwidth_bytes_per_second=capacity // 4,
            ),
            receiving=best_effort(),
        )
        if ST.SERVICE_TYPE_GUARANTEED in ctx.caps.service_types
        else QosSpec(sending=cl(capacity // 4), receiving=best_effort())
    )
    calls = [
        await ctx.create(QosSpec(sending=cl(capacity // 4), receiving=cl(capacity // 4)), Level.SERVICE_LEVEL_NEEDED),
        await ctx.create(second, Level.SERVICE_LEVEL_IF_AVAILABLE),
        await ctx.create(QosSpec(sending=cl(capacity // 4), receiving=best_effort()), Level.SERVICE_LEVEL_BEST_EFFORT),
    ]
    before = await ctx.reserved() if ctx.caps.link_admin else None
    await ctx.session.restart()
    for call in calls:
        after = await ctx.get(call.name)
        if after.state != Call.State.STATE_CONNECTED or not same(after.granted_qos, call.granted_qos):
            raise CheckFailed(
                f"after a restart {call.name} is {Call.State.Name(after.state)} with {brief(after.granted_qos)}; "
                "before "
                f"it was CONNECTED with {brief(call.granted_qos)}"
            )
    if before is not None:
        after_links = await ctx.reserved()
        if after_links != before:
            raise CheckFailed(
                f"after a restart the links hold {after_links}, before it {before}: the restored calls' "
                "reservations were not re-taken as they were"
            )
        problem = await ctx.accounting()
        if problem:
            raise CheckFailed(f"after a restart: {problem}")
    extra = await ctx.try_create(
        QosSpec(sending=cl(capacity // 2 + 1), receiving=best_effort()), Level.SERVICE_LEVEL_NEEDED
    )
    if isinstance(extra, Call):
        raise CheckFailed(
            f"after a restart, {capacity // 2 + 1} B/s sending was admitted next to calls holding {capacity // 2} B/s "
            f"sending of {capacity}: the restored calls hold nothing in the provider"
        )
    if not is_qos_refusal(extra):
        raise CheckFailed(f"after a restart, a request beyond the free capacity: expected QOS_UNAVAILABLE, got {extra}")


@check(
    "RESTART-002",
    "A link's capacity set with UpdateLink survives a restart",
    MUST,
    "restart",
    spec=("LINK-4",),
    source="callqos_service.proto UpdateLink; project decision: what the API acknowledged is durable",
    needs=(OWNS_SERVER, "link_admin"),
    timeout=30,
)
async def capacity_survives(ctx: CheckContext) -> None:
    """UpdateLink(link, capacity - 1000) → restart → ListLinks reports capacity - 1000; the capacity is restored."""
    links = await ctx.links()
    if not links:
        raise CheckFailed("link_admin is advertised but ListLinks lists no link")
    link = links[0]
    original = link.capacity_bytes_per_second
    changed = max(original - 1000, 1)

    async def restore() -> None:
        await ctx.rpc(
            "UpdateLink",
            svc.UpdateLinkRequest(link=provider_pb2.Link(name=link.name, capacity_bytes_per_second=original)),
        )

    ctx.defer(f"restore {link.name} capacity to {original}", restore)
    await ctx.rpc(
        "UpdateLink", svc.UpdateLinkRequest(link=provider_pb2.Link(name=link.name, capacity_bytes_per_second=changed))
    )
    await ctx.session.restart()
    now = next((each for each in await ctx.links() if each.name == link.name), None)
    if now is None or now.capacity_bytes_per_second != changed:
        raise CheckFailed(
            f"{link.name} was set to {changed} B/s with UpdateLink; after a restart it reports "
            f"{now.capacity_bytes_per_second if now else 'nothing'} B/s: the change was not durable"
        )


@check(
    "RESTART-003",
    "A shutdown ends a watch with UNAVAILABLE SHUTTING_DOWN; resuming after the restart delivers the same events",
    MUST,
    "restart",
    spec=("WATCH-3", "WATCH-9"),
    source="callqos_service.proto WatchEvents: without loss across reconnects and restarts; errors.proto SHUTTING_DOWN",
    needs=(OWNS_SERVER,),
    timeout=30,
)
async def watch_across_restart(ctx: CheckContext) -> None:
    """A call made and dropped; its events read; a watch left open; restart → the open watch ends UNAVAILABLE
    SHUTTING_DOWN; WatchEvents(call, after the cursor before the call) → the same events, in order."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    call = await ctx.create(qos, Level.SERVICE_LEVEL_IF_AVAILABLE)
    await ctx.drop(call.name)
    before = await call_events(ctx, call.name)
    open_watch = ctx.watch(before[-1].sequence)
    await ctx.start_sequence(open_watch)
    restarting = asyncio.ensure_future(ctx.session.restart())
    try:
        ended = await asyncio.wait_for(open_watch.read(), 15 * ctx.session.scale)
    except grpc.aio.AioRpcError as error:
        failure = decode(error)
        if failure.code != grpc.StatusCode.UNAVAILABLE or failure.reason != "SHUTTING_DOWN":
            raise CheckFailed(f"a shutdown ended an open watch with {failure}, not UNAVAILABLE SHUTTING_DOWN") from None
    except TimeoutError:
        raise CheckFailed("an open watch did not end while the server shut down") from None
    else:
        raise CheckFailed(f"while the server shut down an open watch delivered {ended!r} instead of ending")
    finally:
        open_watch.cancel()
        await restarting
    after = await call_events(ctx, call.name)
    if [(e.sequence, e.type) for e in after] != [(e.sequence, e.type) for e in before]:
        raise CheckFailed(f"after a restart {call.name}'s events are {describe(after)}; before it {describe(before)}")
    if not all(same(a, b) for a, b in zip(after, before, strict=True)):
        raise CheckFailed(f"after a restart {call.name}'s events differ in content from before it")


@check(
    "RESTART-004",
    "Offered calls survive a restart with their timers; an answered pair comes back holding one reservation",
    MUST,
    "restart",
    spec=("OFFER-4",),
    source="TAPI LINECALLSTATE_OFFERING; LINEDISCONNECTMODE_NOANSWER",
    needs=(OWNS_SERVER,),
    timeout=40,
)
async def offers_survive(ctx: CheckContext) -> None:
    """A call ringing on a line with a 60 s no-answer timeout, one on a line with 1 s, and an answered pair; restart →
    the first still OFFERING / RINGBACK with the same offer_expire_time, and answering it connects both legs; the
    second, whose time passed while the server was down, DISCONNECTED NO_ANSWER on both legs at the first read; the
    pair CONNECTED, the links holding what they held before."""
    qos = incoming.simple(ctx)
    ringing = await incoming.call_line(ctx, await incoming.open_line(ctx), qos)
    short = await incoming.call_line(ctx, await incoming.open_line(ctx, no_answer_seconds=1.0), qos)
    pair_caller, pair_callee = await incoming.call_line(ctx, await incoming.open_line(ctx), qos, IF_AVAILABLE)
    await incoming.answer(ctx, pair_callee)
    before = await ctx.reserved() if ctx.caps.link_admin else None
    await ctx.session.restart()
    expired_at = short[1].offer_expire_time.ToDatetime(tzinfo=datetime.UTC)
    if datetime.datetime.now(datetime.UTC) > expired_at:
        legs = [await ctx.get(leg.name) for leg in short]
        incoming.reasons(legs, [incoming.NO_ANSWER] * 2, "an offer whose time passed while the server was down")
    caller, callee = [await ctx.get(leg.name) for leg in ringing]
    if (caller.state, callee.state) != (Call.State.STATE_RINGBACK, Call.State.STATE_OFFERING) or (
        callee.offer_expire_time != ringing[1].offer_expire_time
    ):
        raise CheckFailed(
            f"after a restart the ringing call is {Call.State.Name(caller.state)} / {Call.State.Name(callee.state)}, "
            f"offer_expire_time {callee.offer_expire_time.ToJsonString()} (was "
            f"{ringing[1].offer_expire_time.ToJsonString()})"
        )
    answered = await incoming.answer(ctx, callee)
    incoming.legs_agree(await ctx.get(caller.name), answered, Call.State.STATE_CONNECTED)
    for leg in (pair_caller, pair_callee):
        if (await ctx.get(leg.name)).state != Call.State.STATE_CONNECTED:
            raise CheckFailed(f"after a restart the answered pair's leg {leg.name} is no longer CONNECTED")
    if before is not None:
        await ctx.drop(caller.name)  # the call answered after the restart: back to what was held before it
        after = await ctx.reserved()
        if after != before:
            raise CheckFailed(
                f"after a restart the links hold {after}, before it {before}: the pair was not restored once"
            )
