"""Every check starts from a verified idle state.

Before the first check the runner records what the target holds (its links' capacities and
reservations: nothing, on a server the suite started; whatever other clients hold, on --target),
and verifies that the links report exactly what the connected calls hold. After each check — its
calls dropped by its cleanup — it verifies that the target holds that again:

- calls of the suite's still connected (a cleanup that could not drop them) are dropped, and a link
  capacity a check changed is put back: the suite's own untidiness, not the provider's;
- what the links still hold beyond that is the provider's leak (a release that freed less than the
  call held), and a link that holds less freed more than a call held (PROV-4, PROV-5).

A leak is reported once, as the failure of CORE-IDLE-001 naming the check after which it appeared,
instead of as a cascade of later checks finding no free capacity. The runner then restores an idle
target where it can (it restarts a server it owns: the provider rebuilds its ledger from the calls
that are still connected, which are none of the suite's) and otherwise does not run the checks that
need one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from callqos.conformance.harness import Call, CheckContext, RpcFailed
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import provider_pb2

IDLE_CHECK = "CORE-IDLE-001"


@dataclass
class Snapshot:
    """Per link: capacity and (sending, receiving) reserved."""

    capacity: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, links: list[provider_pb2.Link]) -> Snapshot:
        return cls(
            {link.name: link.capacity_bytes_per_second for link in links},
            {
                link.name: (link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second)
                for link in links
            },
        )

    def differences(self, now: Snapshot) -> list[Difference]:
        """Where `now` holds more or less than this snapshot, per link and direction."""
        out = []
        for name, (send, recv) in now.reserved.items():
            base_send, base_recv = self.reserved.get(name, (0, 0))
            for direction, got, base in (("sending", send, base_send), ("receiving", recv, base_recv)):
                if got != base:
                    out.append(Difference(name, direction, got, base))
        return out


@dataclass(frozen=True)
class Difference:
    link: str
    direction: str
    now: int
    before: int

    def __str__(self) -> str:
        return f"{self.link} {self.direction} {self.now} B/s reserved instead of {self.before}"


async def drop_leftovers(ctx: CheckContext) -> list[str]:
    """Drop every connected call the suite's principals own (a cleanup may have missed one, or a
    call made while a request timed out); return their names."""
    dropped = []
    for call in await ctx.connected_calls(strict=False):
        if ctx.session.ours(call.owner):
            # As its owner; under --token the owner is a name the server gave, and the suite's token acts.
            acting = call.owner if call.owner in (ctx.session.principal, ctx.session.intruder) else None
            try:
                await ctx.rpc("DropCall", svc.DropCallRequest(name=call.name), acting)
            except RpcFailed:
                continue
            dropped.append(call.name)
    return dropped


async def restore_capacity(ctx: CheckContext, baseline: Snapshot, now: Snapshot) -> list[str]:
    """Put back every link capacity that differs from the baseline; return what was restored."""
    restored = []
    for name, capacity in baseline.capacity.items():
        if now.capacity.get(name, capacity) != capacity:
            link = provider_pb2.Link(name=name, capacity_bytes_per_second=capacity)
            await ctx.rpc("UpdateLink", svc.UpdateLinkRequest(link=link))
            restored.append(f"{name} capacity {now.capacity[name]} → {capacity}")
    return restored


async def snapshot(ctx: CheckContext) -> Snapshot | None:
    """The links now (None without link administration: there is nothing to compare)."""
    if not ctx.caps.link_admin:
        return None
    return Snapshot.of(await ctx.links())


@dataclass
class Verdict:
    """What the verification after a check found: the suite's own leftovers it tidied (not a fault
    of the target), and what the target still held (its leak)."""

    tidied: list[str] = field(default_factory=list)
    leak: list[Difference] = field(default_factory=list)


async def verify(ctx: CheckContext, baseline: Snapshot | None) -> Verdict:
    """Tidy what the suite left behind, then compare the links with the baseline."""
    verdict = Verdict()
    verdict.tidied += [f"dropped {name}, still connected" for name in await drop_leftovers(ctx)]
    if baseline is None:
        return verdict
    now = await snapshot(ctx)
    assert now is not None
    verdict.tidied += await restore_capacity(ctx, baseline, now)
    if verdict.tidied:
        now = await snapshot(ctx)
        assert now is not None
    verdict.leak = baseline.differences(now)
    return verdict


def leak_reason(after: str, leak: list[Difference]) -> str:
    more = any(difference.now > difference.before for difference in leak)
    cause = (
        "every call it made is disconnected, so the provider holds capacity for no call: a release did not free "
        "everything the call held (PROV-4)"
        if more
        else "every call it made is disconnected, yet the links hold less than before it: a release freed more than "
        "the call held, or freed it twice (PROV-4, PROV-5)"
    )
    return f"after {after}: {'; '.join(map(str, leak))}; {cause}"


def is_connected(call: Call) -> bool:
    return call.state == Call.State.STATE_CONNECTED
