"""CONC: no over-admission under concurrent make and renegotiate (admission is check-then-reserve;
it must be atomic)."""

from __future__ import annotations

import asyncio

from callqos.conformance.checks.common import check_links_within, check_within
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed
from callqos.conformance.harness import Call, CheckContext, Level, needs_capacity
from callqos.conformance.rules import QosSpec, best_effort, cl

NEEDED = Level.SERVICE_LEVEL_NEEDED
PARALLEL = 10


@check(
    "CONC-001",
    "Concurrent CreateCalls never admit more than capacity",
    MUST,
    "concurrency",
    spec=("PROV-6", "ADMIT-1", "GRANT-1", "LINK-2"),
    source="project decision: admission is atomic",
    needs=("qos_supported",),
    timeout=15,
)
async def concurrent_create(ctx: CheckContext) -> None:
    """10 CreateCalls of capacity/4 at once: connected calls hold ≤ capacity; links within capacity."""
    capacity = needs_capacity(ctx)
    qos = QosSpec(sending=cl(capacity // 4), receiving=best_effort())
    results = await asyncio.gather(*(ctx.try_create(qos, NEEDED) for _ in range(PARALLEL)))
    calls = [r for r in results if isinstance(r, Call)]
    check_within(ctx, calls, capacity, f"{PARALLEL} concurrent CreateCalls")
    await check_links_within(ctx)
    if not calls:
        raise CheckFailed("no concurrent CreateCall was admitted on an idle provider")


@check(
    "CONC-002",
    "Concurrent renegotiations never admit more than capacity",
    MUST,
    "concurrency",
    spec=("PROV-6", "PROV-3", "ADMIT-1", "GRANT-1", "LINK-2"),
    source="TSPI_lineSetCallQualityOfService; project decision: admission is atomic",
    needs=("qos_supported", "renegotiation"),
    timeout=15,
)
async def concurrent_renegotiate(ctx: CheckContext) -> None:
    """4 calls of capacity/8, then all renegotiated to capacity/3 at once: granted sum ≤ capacity."""
    capacity = needs_capacity(ctx)
    calls = [await ctx.create(QosSpec(sending=cl(capacity // 8), receiving=best_effort()), NEEDED) for _ in range(4)]
    up = QosSpec(sending=cl(capacity // 3), receiving=best_effort())
    await asyncio.gather(*(ctx.renegotiate(c.name, up) for c in calls))
    now = [await ctx.get(c.name) for c in calls]
    check_within(ctx, now, capacity, "4 calls renegotiated concurrently")
    await check_links_within(ctx)
