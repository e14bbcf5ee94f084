"""What the histories run against: the advertised capabilities, the link the suite's calls land on (its
capacity and RFC 2212 terms, as ListLinks reports them) and what the suite may do to it."""

from __future__ import annotations

from dataclasses import dataclass

from callqos.conformance.exceptions import CheckSkipped
from callqos.conformance.harness import CheckContext, Level
from callqos.conformance.rules import ST, Path, QosSpec, best_effort, cl
from callqos.conformance.verify import Limits


@dataclass(frozen=True)
class World:
    provider: str
    capacity: int  # per direction, at the start
    link: str  # the link's name ('' without link administration: capacity is the advertised one)
    path: Path
    service_types: frozenset[int]
    renegotiation: bool
    set_capacity: bool  # UpdateLink, with the provider shedding what no longer fits
    restartable: bool
    limits: Limits

    @property
    def fixed_latency(self) -> int:
        """The delay no GUARANTEED reservation goes below (advertised minimum, or the link's D + L)."""
        return self.limits.min_latency or self.path.fixed_microseconds

    def offers(self, stype: int) -> bool:
        return stype in self.service_types


async def discover(ctx: CheckContext) -> World:
    """The world of this target. With several links, a probe call finds the one the suite's
    destinations are routed to."""
    caps = ctx.caps
    capacity = ctx.params.capacity
    if not caps.qos_supported or not capacity or ST.SERVICE_TYPE_CONTROLLED_LOAD not in caps.service_types:
        raise CheckSkipped("capability: nothing can be reserved with a known capacity (CONTROLLED_LOAD)")
    link_name = ""
    path = Path(0, 0, 0, caps.max_sdu_size_bytes or 1500)
    if caps.link_admin:
        links = await ctx.links()
        chosen = links[0] if len(links) == 1 else None
        if chosen is None:
            probe = await ctx.create(QosSpec(sending=cl(1), receiving=best_effort()), Level.SERVICE_LEVEL_NEEDED)
            after = await ctx.links()
            chosen = next((link for link in after if link.sending_reserved_bytes_per_second), None)
            await ctx.drop(probe.name)
        if chosen is None:
            raise CheckSkipped("could not tell which link the suite's calls use")
        link_name, capacity = chosen.name, chosen.capacity_bytes_per_second
        path = Path(
            chosen.error_term_c_bytes,
            chosen.error_term_d_microseconds,
            chosen.min_path_latency_microseconds,
            chosen.mtu_bytes or path.mtu_bytes,
        )
    return World(
        provider=ctx.provider,
        capacity=capacity,
        link=link_name,
        path=path,
        service_types=frozenset(caps.service_types),
        renegotiation=caps.renegotiation,
        set_capacity=caps.link_admin and caps.provider_initiated_changes,
        restartable=ctx.session.restartable,
        limits=ctx.session.limits,
    )
