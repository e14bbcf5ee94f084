"""CORE-IDLE / CORE-ACCT / CORE-DROP-002 / CORE-CAP-003 / CORE-ADM-013…019: the accounting rules
checked directly, each with the fewest calls that show one rule — what each service type holds per
direction, that a release frees exactly one call's reservation, that a refusal holds nothing in
either direction, that what is advertised and what fits is admitted, and that every valid request
gets a decision."""

from __future__ import annotations

import grpc

from callqos.conformance.checks.common import is_qos_refusal, one_direction_too_much
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import Call, CheckContext, Level, RpcFailure, brief, needs_capacity
from callqos.conformance.rules import ST, QosSpec, best_effort, cl, flow, qos_rates, qos_shortfalls
from callqos.v1 import provider_pb2

NEEDED, IF_AVAILABLE, UNSPECIFIED = (
    Level.SERVICE_LEVEL_NEEDED,
    Level.SERVICE_LEVEL_IF_AVAILABLE,
    Level.SERVICE_LEVEL_UNSPECIFIED,
)
UINT64_MAX = 2**64 - 1


def guaranteed(rate: int, peak: int | None = None, **fields: int) -> QosSpec:
    """A GUARANTEED sending flowspec (bounded peak when given, else unbounded), best effort back."""
    spec = flow(ST.SERVICE_TYPE_GUARANTEED, token_rate_bytes_per_second=rate, **fields)
    if peak is None:
        spec.peak_bandwidth_unbounded = True
    else:
        spec.peak_bandwidth_bytes_per_second = peak
    return QosSpec(sending=spec, receiving=best_effort())


def needs_guaranteed(ctx: CheckContext) -> None:
    if ST.SERVICE_TYPE_GUARANTEED not in ctx.caps.service_types:
        raise CheckSkipped("capability: GUARANTEED is not among service_types")


async def totals(ctx: CheckContext) -> tuple[int, int]:
    links = await ctx.links()
    return (
        sum(link.sending_reserved_bytes_per_second for link in links),
        sum(link.receiving_reserved_bytes_per_second for link in links),
    )


class Ledger:
    """What the suite expects the links to report: the baseline plus what its connected calls hold
    by GRANT-1, checked after every step against ListLinks."""

    def __init__(self, ctx: CheckContext, base: tuple[int, int]) -> None:
        self.ctx = ctx
        self.base = base
        self.calls: dict[str, Call] = {}

    def expected(self) -> tuple[int, int]:
        send, recv = self.base
        for call in self.calls.values():
            s, r = qos_rates(call.granted_qos)
            send, recv = send + s, recv + r
        return send, recv

    async def verify(self, after: str) -> None:
        got = await totals(self.ctx)
        want = self.expected()
        if got != want:
            raise CheckFailed(
                f"after {after}: the links report {got[0]} B/s sending and {got[1]} B/s receiving reserved; the "
                f"connected calls hold {want[0]} and {want[1]} B/s by their grants (GRANT-1: CONTROLLED_LOAD its "
                "token rate, GUARANTEED its peak — its token rate when the peak is unbounded — per direction)"
            )
        problem = await self.ctx.accounting()
        if problem:
            raise CheckFailed(f"after {after}: {problem}")


@check(
    "CORE-IDLE-001",
    "Between checks the target is idle: dropping a check's calls frees everything they held",
    MUST,
    "core",
    spec=("PROV-4", "PROV-5", "LINK-2"),
    source="TAPI lineDrop; callqos_service.proto DropCall; provider.proto Link",
    needs=("link_admin",),
    sentinel=True,
)
async def idle(ctx: CheckContext) -> None:
    """Verified by the runner before the first check and after every other one: with the check's calls all
    dropped, each link holds what it held before the check. A leak fails this check once, naming the check after
    which it appeared (the later checks then start from a restarted, idle target). Run alone: the links report
    what the connected calls hold."""
    problem = await ctx.accounting()
    if problem:
        raise CheckFailed(problem)


@check(
    "CORE-ACCT-001",
    "ListLinks reports exactly what the connected calls hold, per direction, after each make, renegotiate and drop",
    MUST,
    "core",
    spec=("LINK-2", "GRANT-1", "ADMIT-2"),
    source="provider.proto Link: reserved rates are the sums over connected calls",
    needs=("link_admin", "qos_supported"),
    timeout=15,
    foundation=True,
)
async def accounting(ctx: CheckContext) -> None:
    """CONTROLLED_LOAD with different rates each way; GUARANTEED with a bounded peak (holds the peak) and with an
    unbounded one (holds the token rate); a renegotiation up and down; drops one by one. After each step the links'
    sums equal the calls' GRANT-1 rates and ListCalls agrees with ListLinks."""
    capacity = needs_capacity(ctx, whole=False)
    ledger = Ledger(ctx, await totals(ctx))
    steps: list[tuple[str, QosSpec]] = [
        ("CONTROLLED_LOAD send c/8, receive c/10", QosSpec(sending=cl(capacity // 8), receiving=cl(capacity // 10)))
    ]
    if ST.SERVICE_TYPE_GUARANTEED in ctx.caps.service_types:
        steps += [
            ("GUARANTEED token c/20, peak c/10", guaranteed(capacity // 20, capacity // 10)),
            ("GUARANTEED token c/16, unbounded peak", guaranteed(capacity // 16)),
        ]
    steps.append(("receiving only, CONTROLLED_LOAD c/7", QosSpec(sending=best_effort(), receiving=cl(capacity // 7))))
    for what, qos in steps:
        call = await ctx.create(qos, NEEDED)
        ledger.calls[call.name] = call
        await ledger.verify(f"making {call.name} ({what})")
    first = next(iter(ledger.calls))
    if ctx.caps.renegotiation:
        for what, qos in (
            ("up to c/5 send, c/6 receive", QosSpec(sending=cl(capacity // 5), receiving=cl(capacity // 6))),
            (
                "down to c/20 send, receive NO_CHANGE",
                QosSpec(sending=cl(capacity // 20), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE)),
            ),
        ):
            result = await ctx.renegotiate(first, qos)
            if isinstance(result, RpcFailure):
                raise CheckFailed(f"renegotiating {first} {what} was refused: {result}")
            ledger.calls[first] = result
            await ledger.verify(f"renegotiating {first} {what}")
    for name in list(ledger.calls)[::-1]:
        await ctx.drop(name)
        del ledger.calls[name]
        await ledger.verify(f"dropping {name}")


@check(
    "CORE-DROP-002",
    "Dropping one call frees exactly its reservation, and nothing of the others'",
    MUST,
    "core",
    spec=("PROV-4", "LINK-2"),
    source="TAPI lineDrop; callqos_service.proto DropCall (releases what it reserved)",
    needs=("link_admin", "qos_supported"),
)
async def drop_exactly(ctx: CheckContext) -> None:
    """Three calls with different rates each way; drop the middle one, then the first: after each drop the links
    hold exactly what the remaining calls hold."""
    capacity = needs_capacity(ctx, whole=False)
    ledger = Ledger(ctx, await totals(ctx))
    for send, recv in (
        (capacity // 8, capacity // 16),
        (capacity // 4, capacity // 9),
        (capacity // 10, capacity // 5),
    ):
        call = await ctx.create(QosSpec(sending=cl(send), receiving=cl(recv)), NEEDED)
        ledger.calls[call.name] = call
    names = list(ledger.calls)
    for name in (names[1], names[0]):
        await ctx.drop(name)
        del ledger.calls[name]
        await ledger.verify(f"dropping {name}")


@check(
    "CORE-CAP-003",
    "What is advertised is honoured: on an idle provider a request at max_reservable_bytes_per_second is admitted",
    MUST,
    "core",
    spec=("PROV-8", "ADMIT-5"),
    source="provider.proto ProviderCapabilities.max_reservable_bytes_per_second",
    needs=("qos_supported",),
    foundation=True,
)
async def advertised_maximum(ctx: CheckContext) -> None:
    """CreateCall(CONTROLLED_LOAD at the advertised maximum, sending; then receiving) at NEEDED → CONNECTED."""
    maximum = ctx.caps.max_reservable_bytes_per_second
    if not maximum or ST.SERVICE_TYPE_CONTROLLED_LOAD not in ctx.caps.service_types:
        raise CheckSkipped("capability: no max_reservable_bytes_per_second for CONTROLLED_LOAD is advertised")
    for qos in (
        QosSpec(sending=cl(maximum), receiving=best_effort()),
        QosSpec(sending=best_effort(), receiving=cl(maximum)),
    ):
        result = await ctx.try_create(qos, NEEDED)
        if isinstance(result, RpcFailure):
            raise CheckFailed(
                f"{brief(qos)} at NEEDED on an idle provider advertising max_reservable_bytes_per_second = {maximum}: "
                f"{result}"
            )
        await ctx.drop(result.name)


@check(
    "CORE-ADM-013",
    "An unspecified service level is NEEDED",
    MUST,
    "core",
    spec=("LEVEL-4",),
    source="call.proto ServiceLevel: unset must not weaken a request",
)
async def unspecified_level(ctx: CheckContext) -> None:
    """CreateCall(feasible, no level) → CONNECTED with service_level NEEDED; CreateCall(infeasible, no level) →
    RESOURCE_EXHAUSTED QOS_UNAVAILABLE, as at NEEDED."""
    if ctx.params.feasible is None or ctx.params.infeasible is None:
        raise CheckSkipped("no feasible and infeasible flowspecs are known")
    call = await ctx.create(ctx.params.feasible, UNSPECIFIED)
    if call.service_level != NEEDED:
        raise CheckFailed(f"a call made without a level is {Level.Name(call.service_level)}, not NEEDED")
    result = await ctx.try_create(ctx.params.infeasible, UNSPECIFIED)
    if isinstance(result, Call):
        raise CheckFailed(f"an infeasible request without a level connected with {brief(result.granted_qos)}")
    if not is_qos_refusal(result):
        raise CheckFailed(
            f"an infeasible request without a level: expected RESOURCE_EXHAUSTED QOS_UNAVAILABLE, got {result}"
        )


def fixed_latency(ctx: CheckContext, links: list[provider_pb2.Link]) -> int:
    """The delay no GUARANTEED reservation can go below on this provider: the advertised minimum latency,
    or the smallest D + L a link exports."""
    if ctx.caps.min_latency_microseconds:
        return ctx.caps.min_latency_microseconds
    return min((link.error_term_d_microseconds + link.min_path_latency_microseconds for link in links), default=0)


@check(
    "CORE-ADM-014",
    "GUARANTEED is never granted at NEEDED with a latency below what the path can deliver",
    MUST,
    "core",
    spec=("DELAY-4", "GRANT-3"),
    source="RFC 2212: guaranteed service bounds the delay; Winsock2 FLOWSPEC Latency; TAPI QSL_NEEDED",
    needs=("qos_supported",),
)
async def latency_not_ignored(ctx: CheckContext) -> None:
    """CreateCall(GUARANTEED, latency = half the path's fixed delay — the advertised min_latency_microseconds, or
    the link's D + L — at a small rate, NEEDED) → RESOURCE_EXHAUSTED QOS_UNAVAILABLE: no rate reaches below the
    fixed delay, whatever the provider's formula. Its counter-offer states a latency at least that fixed delay."""
    needs_guaranteed(ctx)
    capacity = needs_capacity(ctx)
    links = await ctx.links() if ctx.caps.link_admin else []
    fixed = fixed_latency(ctx, links)
    if fixed < 2:
        raise CheckSkipped("capability: neither min_latency_microseconds nor a link's delay terms are advertised")
    for peak in (capacity // 10, None):
        qos = guaranteed(capacity // 10, peak, latency_microseconds=fixed // 2)
        result = await ctx.try_create(qos, NEEDED)
        if isinstance(result, Call):
            raise CheckFailed(
                f"GUARANTEED with latency {fixed // 2} us was granted at NEEDED ({brief(result.granted_qos)}, latency "
                f"{result.granted_qos.sending.latency_microseconds} us), though the path alone takes {fixed} us: the "
                "requested latency was ignored"
            )
        if not is_qos_refusal(result):
            raise CheckFailed(f"GUARANTEED below the path latency: expected QOS_UNAVAILABLE, got {result}")
        offer = result.refusal.counter_offer if result.refusal and result.refusal.HasField("counter_offer") else None
        if offer is not None and offer.sending.service_type == ST.SERVICE_TYPE_GUARANTEED:
            if offer.sending.HasField("latency_microseconds") and offer.sending.latency_microseconds < fixed:
                raise CheckFailed(
                    f"the counter-offer promises {offer.sending.latency_microseconds} us, below the path's {fixed} us"
                )


@check(
    "CORE-ADM-015",
    "GUARANTEED holds its peak rate, or its token rate when the peak is unbounded: admitted while the sum fits",
    MUST,
    "core",
    spec=("GRANT-1", "ADMIT-1", "ADMIT-5"),
    source="flowspec.proto ServiceType: GUARANTEED (RFC 2212) reserves its peak",
    needs=("qos_supported",),
    timeout=15,
    foundation=True,
)
async def guaranteed_holds_peak(ctx: CheckContext) -> None:
    """Calls of GUARANTEED token c/8, peak c/4 until refused: exactly 4 fit (the peak is held, not the token rate);
    dropped; calls of GUARANTEED token c/4, unbounded peak: exactly 4 fit (not 0 B/s each, not unbounded)."""
    needs_guaranteed(ctx)
    capacity = needs_capacity(ctx)
    for label, qos in (
        ("token c/8, peak c/4", guaranteed(capacity // 8, capacity // 4)),
        ("token c/4, unbounded peak", guaranteed(capacity // 4)),
    ):
        admitted: list[Call] = []
        refused: RpcFailure | None = None
        for _ in range(9):
            result = await ctx.try_create(qos, NEEDED)
            if isinstance(result, RpcFailure):
                if not is_qos_refusal(result):
                    raise CheckFailed(f"GUARANTEED {label}: expected a grant or QOS_UNAVAILABLE, got {result}")
                refused = result
                break
            admitted.append(result)
        if refused is None or len(admitted) != 4:
            raise CheckFailed(
                f"GUARANTEED {label} on {capacity} B/s: {len(admitted)} calls admitted"
                f"{'' if refused else ' and none refused'}; each holds c/4, so exactly 4 fit"
            )
        for call in admitted:
            await ctx.drop(call.name)


@check(
    "CORE-ADM-016",
    "Admits exactly up to capacity: a request for all that is free fits, one byte more does not",
    MUST,
    "core",
    spec=("ADMIT-1", "ADMIT-5"),
    source="TAPI QoS overview: the provider fails the call only if it cannot provide the QoS",
    needs=("qos_supported",),
    foundation=True,
)
async def exactly_full(ctx: CheckContext) -> None:
    """Three calls of c/4 sending; a fourth of c - 3·(c/4) (all that is free) → CONNECTED; then 1 B/s more →
    QOS_UNAVAILABLE."""
    capacity = needs_capacity(ctx)
    for _ in range(3):
        await ctx.create(QosSpec(sending=cl(capacity // 4), receiving=best_effort()), NEEDED)
    rest = capacity - 3 * (capacity // 4)
    result = await ctx.try_create(QosSpec(sending=cl(rest), receiving=best_effort()), NEEDED)
    if isinstance(result, RpcFailure):
        raise CheckFailed(
            f"a request for the {rest} B/s still free (3 calls of {capacity // 4} on {capacity}) was refused: {result}"
        )
    extra = await ctx.try_create(QosSpec(sending=cl(1), receiving=best_effort()), NEEDED)
    if isinstance(extra, Call):
        raise CheckFailed(f"with the link full ({capacity} B/s held), 1 B/s more was admitted")


@check(
    "CORE-ADM-017",
    "IF_AVAILABLE grants the request in full when it fits",
    MUST,
    "core",
    spec=("LEVEL-2", "ADMIT-5"),
    source="TAPI 3 QOS_SERVICE_LEVEL QSL_IF_AVAILABLE: the desired QoS if available",
    needs=("qos_supported",),
)
async def if_available_full(ctx: CheckContext) -> None:
    """CreateCall(CONTROLLED_LOAD c/4 sending and c/5 receiving, IF_AVAILABLE) on an idle provider → granted QoS
    satisfies the request in both directions."""
    capacity = needs_capacity(ctx)
    qos = QosSpec(sending=cl(capacity // 4), receiving=cl(capacity // 5))
    call = await ctx.create(qos, IF_AVAILABLE)
    problems = qos_shortfalls(call.granted_qos, qos)
    if problems:
        raise CheckFailed(f"IF_AVAILABLE on an idle provider was granted less than asked: {'; '.join(problems)}")


@check(
    "CORE-ADM-018",
    "A refusal where one direction would fit reserves nothing in either direction",
    MUST,
    "core",
    spec=("PROV-1", "ADMIT-2", "LINK-2"),
    source="TAPI QoS overview: the call fails; PROV-1: never half of each",
    needs=("qos_supported", "link_admin"),
)
async def half_refusal(ctx: CheckContext) -> None:
    """A call holds c/2 receiving; CreateCall(send c/4, receive 3c/4, NEEDED) → refused, links unchanged in both
    directions; and the mirror (send 3c/4 with c/2 held sending, receive c/4)."""
    capacity = needs_capacity(ctx)
    for held, asked in one_direction_too_much(capacity):
        holder = await ctx.create(held, NEEDED)
        before = await ctx.reserved()
        result = await ctx.try_create(asked, NEEDED)
        if isinstance(result, Call):
            raise CheckFailed(f"{brief(asked)} was admitted next to {brief(held)} on {capacity} B/s per direction")
        after = await ctx.reserved()
        if after != before:
            raise CheckFailed(
                f"the refused {brief(asked)} left a reservation behind: {before} → {after} (the direction that fitted "
                "was reserved and not undone)"
            )
        await ctx.drop(holder.name)


@check(
    "CORE-ADM-019",
    "Every valid request gets a decision: extreme rates and bursts are granted or refused, never a provider failure",
    MUST,
    "core",
    spec=("PROV-16", "ADMIT-1"),
    source="providers/base.py: admit returns a Grant or a Refusal; flowspec.proto: uint64 rates",
    needs=("qos_supported",),
)
async def extremes(ctx: CheckContext) -> None:
    """At NEEDED and IF_AVAILABLE: CONTROLLED_LOAD at 2^64 - 1 B/s; GUARANTEED at 1 B/s with an unbounded peak, a
    2^40-byte bucket and no latency (its delay bound is days); GUARANTEED token 2^63, peak 2^64 - 1. Each answer is
    a grant within capacity or a QoS refusal — never UNAVAILABLE PROVIDER_UNAVAILABLE or INTERNAL."""
    cases = [("CONTROLLED_LOAD at 2^64-1 B/s", QosSpec(sending=cl(UINT64_MAX), receiving=best_effort()))]
    if ST.SERVICE_TYPE_GUARANTEED in ctx.caps.service_types:
        cases += [
            ("GUARANTEED 1 B/s, 2^40-byte bucket, no latency", guaranteed(1, None, token_bucket_size_bytes=2**40)),
            ("GUARANTEED token 2^63, peak 2^64-1", guaranteed(2**63, UINT64_MAX)),
        ]
    for label, qos in cases:
        for level in (NEEDED, IF_AVAILABLE):
            result = await ctx.try_create(qos, level)
            if isinstance(result, RpcFailure) and not (
                is_qos_refusal(result)
                or (result.code == grpc.StatusCode.PERMISSION_DENIED and result.reason == "QOS_POLICY_FAILURE")
            ):
                raise CheckFailed(f"{label} at {Level.Name(level)}: no decision, the target answered {result}")
            if isinstance(result, Call):
                await ctx.drop(result.name)
