"""CORE-ADM / CORE-LEAK / CORE-DROP: admission at each service level, refusal semantics,
counter-offers, both directions, and release of capacity."""

from __future__ import annotations

from typing import Any

import grpc

from callqos.conformance.checks.common import (
    REFUSED,
    check_links_within,
    check_within,
    fill,
    is_qos_refusal,
)
from callqos.conformance.checks.registry import MUST, SHOULD, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import Call, CheckContext, Level, RpcFailure, brief, needs_capacity, same
from callqos.conformance.rules import (
    ST,
    QosSpec,
    best_effort,
    cl,
    flow,
    qos_rates,
    qos_shortfalls,
)

NEEDED, IF_AVAILABLE, BEST_EFFORT = (
    Level.SERVICE_LEVEL_NEEDED,
    Level.SERVICE_LEVEL_IF_AVAILABLE,
    Level.SERVICE_LEVEL_BEST_EFFORT,
)


def feasible(ctx: CheckContext) -> QosSpec:
    if ctx.params.feasible is None:
        raise CheckSkipped("no feasible flowspec is known (give [parameters.feasible])")
    return ctx.params.feasible


def infeasible(ctx: CheckContext) -> QosSpec:
    if ctx.params.infeasible is None:
        raise CheckSkipped("no infeasible flowspec is known (give [parameters.infeasible])")
    return ctx.params.infeasible


@check(
    "CORE-ADM-001",
    "A feasible request at NEEDED connects and the grant satisfies it in both directions",
    MUST,
    "core",
    spec=("LEVEL-1", "GRANT-3", "GRANT-5"),
    source="TAPI 3 QOS_SERVICE_LEVEL QSL_NEEDED",
)
async def feasible_needed(ctx: CheckContext) -> None:
    """CreateCall(feasible, NEEDED) → CONNECTED; granted_qos meets requested_qos in sending and receiving."""
    qos = feasible(ctx)
    call = await ctx.create(qos, NEEDED)
    problems = qos_shortfalls(call.granted_qos, qos)
    if problems:
        raise CheckFailed(f"granted QoS does not satisfy the request at NEEDED: {'; '.join(problems)}")
    if not same(call.requested_qos, qos):
        raise CheckFailed("requested_qos is not the QoS asked for")


@check(
    "CORE-ADM-002",
    "An infeasible request at NEEDED fails with QOS_UNAVAILABLE and reserves nothing",
    MUST,
    "core",
    spec=("LEVEL-1", "PROV-1", "ADMIT-3", "CALL-1", "LINK-2"),
    source="TAPI QoS overview; LINEDISCONNECTMODE_QOSUNAVAIL; errors.proto QOS_UNAVAILABLE",
)
async def infeasible_needed(ctx: CheckContext) -> None:
    """CreateCall(infeasible, NEEDED) → RESOURCE_EXHAUSTED QOS_UNAVAILABLE with a QosRefusal naming the call;
    the call is DISCONNECTED (QOS_UNAVAILABLE) with no granted QoS; link reservations unchanged."""
    before = await ctx.reserved() if ctx.caps.link_admin else None
    request = ctx.request(infeasible(ctx), NEEDED)
    failure = await ctx.expect_error(
        "CreateCall",
        request,
        REFUSED,
        "QOS_UNAVAILABLE",
        what=f"CreateCall({brief(request.call.requested_qos)}) at NEEDED",
    )
    name = f"calls/{request.call_id}"
    if failure.refusal is None or failure.refusal.call != name:
        raise CheckFailed(f"refusal carries no QosRefusal naming {name}")
    call = await ctx.get(name)
    if call.state != Call.State.STATE_DISCONNECTED or call.disconnect_reason != 2:
        raise CheckFailed(
            f"refused call is {Call.State.Name(call.state)} reason {call.disconnect_reason}, expected "
            "DISCONNECTED QOS_UNAVAILABLE"
        )
    if any(qos_rates(call.granted_qos)):
        raise CheckFailed("refused call reports granted reserving QoS")
    if before is not None and await ctx.reserved() != before:
        raise CheckFailed(f"a refused call left capacity reserved: {before} → {await ctx.reserved()}")


@check(
    "CORE-ADM-003",
    "A counter-offer is itself admitted on an immediate retry, on an idle and on a partly loaded link",
    MUST,
    "core",
    spec=("PROV-2", "GRANT-3"),
    source="call.proto QosRefusal.counter_offer",
)
async def counter_offer(ctx: CheckContext) -> None:
    """Refused CreateCall at NEEDED; CreateCall(counter_offer, NEEDED) → CONNECTED, satisfying the offer. Then the
    same with c/2 already held each way (the offer must fit what is free, not the capacity), for CONTROLLED_LOAD
    and, when advertised, GUARANTEED with a bounded peak."""
    cases: list[tuple[str, QosSpec | None, QosSpec]] = [("idle", None, infeasible(ctx))]
    if ctx.params.reserving and ctx.caps.qos_supported:
        capacity = ctx.params.capacity
        half = QosSpec(sending=cl(capacity // 2), receiving=cl(capacity // 2))
        cases.append(("c/2 held each way", half, QosSpec(sending=cl(3 * capacity // 4), receiving=cl(capacity // 4))))
        if ST.SERVICE_TYPE_GUARANTEED in ctx.caps.service_types:
            spec = flow(
                ST.SERVICE_TYPE_GUARANTEED,
                token_rate_bytes_per_second=3 * capacity // 5,
                peak_bandwidth_bytes_per_second=3 * capacity // 4,
            )
            cases.append(("c/2 held each way, GUARANTEED", half, QosSpec(sending=spec, receiving=best_effort())))
    for label, held, asked in cases:
        holder = await ctx.create(held, NEEDED) if held is not None else None
        request = ctx.request(asked, NEEDED)
        failure = await ctx.expect_error(
            "CreateCall", request, REFUSED, "QOS_UNAVAILABLE", what=f"CreateCall({brief(asked)}) with {label}"
        )
        if failure.refusal is None or not failure.refusal.HasField("counter_offer"):
            continue  # "unset when the provider can offer nothing": nothing to retry
        offer = failure.refusal.counter_offer
        result = await ctx.try_create(offer, NEEDED)
        if isinstance(result, RpcFailure):
            raise CheckFailed(
                f"{label}: the counter-offer ({brief(offer)}) was refused on an immediate retry: {result}"
            )
        problems = qos_shortfalls(result.granted_qos, offer)
        if problems:
            raise CheckFailed(f"{label}: the counter-offer was granted short: {'; '.join(problems)}")
        await ctx.drop(result.name)
        if holder is not None:
            await ctx.drop(holder.name)


@check(
    "CORE-ADM-004",
    "IF_AVAILABLE connects with what is free, within capacity",
    MUST,
    "core",
    spec=("LEVEL-2", "GRANT-1", "GRANT-5", "ADMIT-1", "LINK-2"),
    source="TAPI 3 QOS_SERVICE_LEVEL QSL_IF_AVAILABLE",
    needs=("qos_supported",),
)
async def if_available(ctx: CheckContext) -> None:
    """CreateCall(infeasible, IF_AVAILABLE) → CONNECTED; requested_qos kept as asked; granted ≤ capacity."""
    capacity = needs_capacity(ctx)
    qos = infeasible(ctx)
    call = await ctx.create(qos, IF_AVAILABLE)
    if not same(call.requested_qos, qos):
        raise CheckFailed("requested_qos was rewritten; the shortfall must stay visible (granted < requested)")
    check_within(ctx, [call], capacity, "IF_AVAILABLE grant")
    await check_links_within(ctx)


@check(
    "CORE-ADM-005",
    "BEST_EFFORT service level connects and reserves nothing",
    MUST,
    "core",
    spec=("LEVEL-3", "LINK-2"),
    source="TAPI 3 QOS_SERVICE_LEVEL QSL_BEST_EFFORT",
)
async def best_effort_level(ctx: CheckContext) -> None:
    """CreateCall(any QoS, BEST_EFFORT) → CONNECTED; granted reserves 0 B/s; link reservations unchanged."""
    before = await ctx.reserved() if ctx.caps.link_admin else None
    qos = ctx.params.infeasible or QosSpec(sending=cl(1000), receiving=best_effort())
    call = await ctx.create(qos, BEST_EFFORT)
    if any(qos_rates(call.granted_qos)):
        raise CheckFailed(f"BEST_EFFORT level was granted a reservation: {brief(call.granted_qos)}")
    if before is not None and await ctx.reserved() != before:
        raise CheckFailed("a BEST_EFFORT-level call changed link reservations")


@check(
    "CORE-ADM-006",
    "BEST_EFFORT and NO_TRAFFIC service types always admit and reserve nothing",
    MUST,
    "core",
    spec=("GRANT-2", "LINK-2"),
    source="Winsock2 FLOWSPEC SERVICETYPE_BESTEFFORT / SERVICETYPE_NOTRAFFIC",
)
async def non_reserving_types(ctx: CheckContext) -> None:
    """CreateCall(send BEST_EFFORT / recv NO_TRAFFIC, and the mirror, NEEDED) → CONNECTED with those types; also
    BEST_EFFORT stating a token rate both ways (it still reserves nothing); links unchanged."""
    before = await ctx.reserved() if ctx.caps.link_admin else None
    stated = flow(ST.SERVICE_TYPE_BEST_EFFORT, token_rate_bytes_per_second=max(ctx.params.capacity // 4, 1000))
    for sending, receiving in (
        (flow(ST.SERVICE_TYPE_BEST_EFFORT), flow(ST.SERVICE_TYPE_NO_TRAFFIC)),
        (flow(ST.SERVICE_TYPE_NO_TRAFFIC), flow(ST.SERVICE_TYPE_BEST_EFFORT)),
        (stated, stated),
    ):
        qos = QosSpec(sending=sending, receiving=receiving)
        call = await ctx.create(qos, NEEDED)
        if (call.granted_qos.sending.service_type, call.granted_qos.receiving.service_type) != (
            sending.service_type,
            receiving.service_type,
        ):
            raise CheckFailed(f"granted {brief(call.granted_qos)} for {brief(qos)}")
        if before is not None and await ctx.reserved() != before:
            raise CheckFailed(
                f"{brief(qos)} (token rate {sending.token_rate_bytes_per_second} stated) changed link "
                f"reservations: {before} → {await ctx.reserved()}"
            )


async def _fill_direction(ctx: CheckContext, direction: str) -> None:
    capacity = needs_capacity(ctx)
    rate = capacity // 4
    qos = (
        QosSpec(sending=cl(rate), receiving=best_effort())
        if direction == "sending"
        else QosSpec(sending=best_effort(), receiving=cl(rate))
    )
    calls, refusal = await fill(ctx, qos, NEEDED)
    check_within(ctx, calls, capacity, f"{direction} filled with {brief(qos)} calls")
    if refusal is None:
        raise CheckFailed(f"{len(calls)} calls of {rate} B/s {direction} were all admitted on {capacity} B/s")
    for call in calls:  # existing reservations are untouched by the refusal (ADMIT-1)
        now = await ctx.get(call.name)
        if now.state != Call.State.STATE_CONNECTED or not same(now.granted_qos, call.granted_qos):
            raise CheckFailed(f"{call.name} changed when a later request was refused")
    await check_links_within(ctx)


@check(
    "CORE-ADM-007",
    "Sending direction: admits while the sum fits, then refuses",
    MUST,
    "core",
    spec=("ADMIT-1", "GRANT-1", "LINK-2"),
    source="TAPI 3 QE_ADMISSIONFAILURE; LINEERR_RESOURCEUNAVAIL",
    needs=("qos_supported",),
    timeout=15,
)
async def fill_sending(ctx: CheckContext) -> None:
    """Calls of capacity/4 B/s sending until refusal: the admitted sum ≤ capacity; earlier calls untouched."""
    await _fill_direction(ctx, "sending")


@check(
    "CORE-ADM-008",
    "Receiving direction: admission-controlled on its own",
    MUST,
    "core",
    spec=("ADMIT-1", "ADMIT-2", "GRANT-1", "LINK-2"),
    source="Winsock2 QOS: one flowspec per direction",
    needs=("qos_supported",),
    timeout=15,
)
async def fill_receiving(ctx: CheckContext) -> None:
    """Calls of capacity/4 B/s receiving (sending best effort) until refusal: the admitted sum ≤ capacity."""
    await _fill_direction(ctx, "receiving")


@check(
    "CORE-ADM-009",
    "A reserving service type not advertised is never granted at NEEDED",
    MUST,
    "core",
    spec=("PROV-9",),
    source="provider.proto ProviderCapabilities.service_types",
)
async def unadvertised_type(ctx: CheckContext) -> None:
    """CreateCall(type ∉ service_types, NEEDED) → RESOURCE_EXHAUSTED QOS_UNAVAILABLE or PERMISSION_DENIED
    QOS_POLICY_FAILURE."""
    candidates = [
        t
        for t in (ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED, ST.SERVICE_TYPE_NETWORK_CONTROL)
        if t not in ctx.caps.service_types
    ]
    if not candidates:
        raise CheckSkipped("capability: every reserving service type is advertised")
    for stype in candidates:
        qos = QosSpec(
            sending=flow(stype, token_rate_bytes_per_second=1000, latency_microseconds=10_000_000),
            receiving=best_effort(),
        )
        result = await ctx.try_create(qos, NEEDED)
        if isinstance(result, Call):
            raise CheckFailed(
                f"{ST.Name(stype)} is not advertised but was granted at NEEDED: {brief(result.granted_qos)}"
            )
        if not (
            is_qos_refusal(result)
            or (result.code == grpc.StatusCode.PERMISSION_DENIED and result.reason == "QOS_POLICY_FAILURE")
        ):
            raise CheckFailed(f"{ST.Name(stype)}: expected a QoS refusal, got {result}")


@check(
    "CORE-ADM-010",
    "A policy refusal is PERMISSION_DENIED QOS_POLICY_FAILURE, not an admission failure",
    MUST,
    "core",
    spec=("ADMIT-3", "ADMIT-4"),
    source="TAPI 3 QE_POLICYFAILURE; WSA_QOS_POLICY_FAILURE",
    needs=("policy",),
)
async def policy_refusal(ctx: CheckContext) -> None:
    """CreateCall(policy_refused, NEEDED) → PERMISSION_DENIED QOS_POLICY_FAILURE with QosRefusal."""
    if ctx.params.policy_refused is None:
        raise CheckSkipped("no policy-refused flowspec is known (give [parameters.policy_refused])")
    request = ctx.request(ctx.params.policy_refused, NEEDED)
    failure = await ctx.expect_error("CreateCall", request, grpc.StatusCode.PERMISSION_DENIED, "QOS_POLICY_FAILURE")
    if failure.refusal is None:
        raise CheckFailed("policy refusal carries no QosRefusal")


@check(
    "CORE-ADM-011",
    "GUARANTEED at NEEDED: granted latency within the requested bound",
    MUST,
    "core",
    spec=("GRANT-3",),
    source="TAPI 3 QSL_NEEDED; Winsock2 FLOWSPEC Latency",
    needs=("qos_supported",),
)
async def guaranteed_needed(ctx: CheckContext) -> None:
    """CreateCall(GUARANTEED with a generous latency, NEEDED) → CONNECTED, latency ≤ requested."""
    if ST.SERVICE_TYPE_GUARANTEED not in ctx.caps.service_types:
        raise CheckSkipped("capability: GUARANTEED is not among service_types")
    capacity = needs_capacity(ctx)
    spec = flow(
        ST.SERVICE_TYPE_GUARANTEED,
        token_rate_bytes_per_second=capacity // 10,
        peak_bandwidth_bytes_per_second=capacity // 10,
        latency_microseconds=1_000_000,
    )
    qos = QosSpec(sending=spec, receiving=best_effort())
    call = await ctx.create(qos, NEEDED)
    problems = qos_shortfalls(call.granted_qos, qos)
    if problems:
        raise CheckFailed("; ".join(problems))


@check(
    "CORE-ADM-012",
    "GUARANTEED: admitted only when the RFC 2212 delay bound fits the latency (both branches)",
    SHOULD,
    "core",
    spec=("DELAY-1", "DELAY-2"),
    source="RFC 2212 delay bound, as the project states it",
    needs=("qos_supported", "link_admin"),
)
async def guaranteed_bound(ctx: CheckContext) -> None:
    """With the link's exported C, D and path latency: latency = bound + 1 ms is admitted, bound - 1 ms refused."""
    if ST.SERVICE_TYPE_GUARANTEED not in ctx.caps.service_types:
        raise CheckSkipped("capability: GUARANTEED is not among service_types")
    links = await ctx.links()
    if len(links) != 1:
        raise CheckSkipped("the bound is checked on single-link providers only (routing is provider-specific)")
    link = links[0]
    rate, m_big, bucket = (
        max(link.capacity_bytes_per_second // 10, 1),
        min(link.mtu_bytes, 1000),
        4 * min(link.mtu_bytes, 1000),
    )
    fixed = link.error_term_d_microseconds + link.min_path_latency_microseconds
    branches: dict[str, tuple[dict[str, Any], float]] = {
        "R≥p (bounded peak)": (dict(peak_bandwidth_bytes_per_second=rate), (m_big + link.error_term_c_bytes) / rate),
        "p>R (unbounded peak)": (
            dict(peak_bandwidth_unbounded=True),
            (bucket - m_big + m_big + link.error_term_c_bytes) / rate,
        ),
    }
    for label, (extra, queue_s) in branches.items():
        bound = queue_s * 1_000_000 + fixed
        for latency, admit in ((int(bound) + 1000, True), (max(int(bound) - 1000, 1), False)):
            spec = flow(
                ST.SERVICE_TYPE_GUARANTEED,
                token_rate_bytes_per_second=rate,
                token_bucket_size_bytes=bucket,
                max_sdu_size_bytes=m_big,
                minimum_policed_size_bytes=64,
                latency_microseconds=latency,
                **extra,
            )
            result = await ctx.try_create(QosSpec(sending=spec, receiving=best_effort()), NEEDED)
            if admit and not isinstance(result, Call):
                raise CheckFailed(f"{label}: latency {latency} us ≥ bound {bound:.0f} us was refused: {result}")
            if not admit and isinstance(result, Call):
                raise CheckFailed(f"{label}: latency {latency} us < bound {bound:.0f} us was admitted")


@check(
    "CORE-LEAK-001",
    "Drop releases capacity: fill to refusal, drop all, the same fill succeeds again",
    MUST,
    "core",
    spec=("PROV-1", "PROV-4", "LINK-2"),
    source="TAPI lineDrop; callqos_service.proto DropCall",
    needs=("qos_supported",),
    timeout=20,
)
async def leak(ctx: CheckContext) -> None:
    """Fill with capacity/4 calls until refused (N admitted); drop them all; fill again: N admitted again."""
    capacity = needs_capacity(ctx)
    qos = QosSpec(sending=cl(capacity // 4), receiving=cl(capacity // 4))
    baseline = await ctx.reserved() if ctx.caps.link_admin else None
    first, refusal = await fill(ctx, qos, NEEDED)
    if refusal is None:
        raise CheckSkipped(f"could not fill within {ctx.params.max_fill_calls} calls")
    if not first:
        # Every check cleans up after itself, so the suite's own calls hold nothing now.
        raise CheckFailed(
            f"a first request of {capacity // 4} B/s each way was refused on {capacity} B/s: "
            f"capacity is held by calls that were dropped (leaked), or the target is not idle ({refusal})"
        )
    for call in reversed(first):
        await ctx.drop(call.name)
    if baseline is not None and await ctx.reserved() != baseline:
        raise CheckFailed(f"after dropping every call, links hold {await ctx.reserved()} instead of {baseline}")
    second, _ = await fill(ctx, qos, NEEDED)
    if len(second) < len(first):
        raise CheckFailed(f"capacity leaked: {len(first)} calls fitted, after dropping them only {len(second)} fit")


@check(
    "CORE-DROP-001",
    "Drop disconnects (NORMAL), keeps the last granted QoS, and is harmless twice",
    MUST,
    "core",
    spec=("CALL-2", "PROV-4", "LINK-2"),
    source="TAPI lineDrop, LINEDISCONNECTMODE_NORMAL; callqos_service.proto DropCall",
)
async def drop(ctx: CheckContext) -> None:
    """DropCall → DISCONNECTED NORMAL with granted_qos = the last grant; DropCall again → unchanged (same etag)."""
    qos = ctx.params.feasible or QosSpec(sending=best_effort(), receiving=best_effort())
    before = await ctx.reserved() if ctx.caps.link_admin else None
    call = await ctx.create(qos, IF_AVAILABLE)
    dropped = await ctx.drop(call.name)
    if dropped.state != Call.State.STATE_DISCONNECTED or dropped.disconnect_reason != 1:
        raise CheckFailed(f"dropped call is {Call.State.Name(dropped.state)} reason {dropped.disconnect_reason}")
    if not same(dropped.granted_qos, call.granted_qos):
        raise CheckFailed("granted_qos after drop is not the last granted QoS")
    again = await ctx.drop(call.name)
    if again.etag != dropped.etag:
        raise CheckFailed("dropping a disconnected call changed it")
    if before is not None and await ctx.reserved() != before:
        raise CheckFailed("drop did not release the call's reservation")
