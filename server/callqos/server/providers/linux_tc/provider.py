"""The linux-tc provider: admission control that the kernel enforces.

What a call may reserve is decided exactly as the reference provider decides it — this class
*is* a ReferenceProvider for accounting (CONTROLLED_LOAD reserves its token rate, GUARANTEED its
peak within the RFC 2212 delay bound, newest calls shed first) — so both providers agree on
what a grant reserves. On top of that, every change of the books is put into the kernel before
the decision is returned: each link's interfaces hold an HTB class per reserving call and
direction, with the call's filter (see `filters`), as `shaper` describes.

The order is always: decide in the books → make the kernel match the books → answer. If the
kernel refuses, the books are put back as they were, the kernel is brought back to them, and
the operation fails (the host reports PROVIDER_UNAVAILABLE); a refused admission or
renegotiation never touches the kernel.

Provider-initiated changes: an interface going down (or disappearing) takes its link's capacity
to 0, which sheds that link's calls exactly as a capacity cut does (IF_AVAILABLE degraded to
best effort, NEEDED dropped, with events); when it comes back the capacity is restored and the
hierarchy rebuilt for the calls still held. UpdateLink changes the capacity the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from callqos.server.providers import (
    AdmissionRequest,
    Decision,
    Grant,
    ProviderChange,
    ProviderHost,
    Restored,
)
from callqos.server.providers.linux_tc import config, filters
from callqos.server.providers.linux_tc.netlink import Interface, TcError
from callqos.server.providers.linux_tc.shaper import CallClass, Plan, Shaper, call_class
from callqos.server.providers.reference import LinkState, ReferenceProvider, Reservation
from callqos.v1 import provider_pb2

log = logging.getLogger(__name__)

DIRECTIONS = ("sending", "receiving")


class LinuxTcProvider(ReferenceProvider):
    display_name = "Linux traffic control"
    description = (
        "Admission control enforced by the kernel: one HTB class per call and direction on each "
        "managed interface, packets steered by the call's provider_specific filter."
    )

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        parsed = config.parse(settings or {})
        self._poll_seconds = parsed.poll_interval_seconds
        # link id → (direction, shaper) for each direction the kernel enforces
        self._shapers: dict[str, list[tuple[str, Shaper]]] = {}
        accounting: list[dict[str, Any]] = []
        try:
            for link in parsed.links:
                mtu = self._open(link)
                accounting.append(
                    {**link.accounting, "id": link.id, "capacity_bytes_per_second": link.capacity, "mtu_bytes": mtu}
                )
        except BaseException:
            self._close()
            raise
        super().__init__({"links": accounting})
        self.settings = settings or {}
        self._configured = {link.id: link.capacity for link in parsed.links}
        self._down: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None

    def _open(self, link: config.LinkConfig) -> int:
        """Open the link's interfaces, check them against its settings; the MTU to use."""
        mtu = link.mtu
        shapers: list[tuple[str, Shaper]] = []
        self._shapers[link.id] = shapers
        for direction, name in (("sending", link.sending), ("receiving", link.receiving)):
            if name is None:
                continue
            interface = Interface(name.ifname, name.netns)
            shapers.append((direction, Shaper(interface, 0)))
            try:
                state = interface.call(interface.state)
            except TcError as exc:
                raise ValueError(f"link {link.id}: {exc}") from None
            if not state.exists:
                raise ValueError(f"link {link.id}: no interface {interface.label}")
            if link.mtu and link.mtu > state.mtu:
                raise ValueError(f"link {link.id}: mtu_bytes {link.mtu} exceeds {interface.label}'s MTU {state.mtu}")
            mtu = min(mtu or state.mtu, state.mtu)
            if state.speed_bytes_per_second and link.capacity > state.speed_bytes_per_second:
                raise ValueError(
                    f"link {link.id}: capacity {link.capacity} B/s exceeds {interface.label}'s speed "
                    f"{state.speed_bytes_per_second} B/s"
                )
        for _, shaper in shapers:
            shaper.mtu = mtu
        return mtu

    def _close(self) -> None:
        for shapers in self._shapers.values():
            for _, shaper in shapers:
                shaper.interface.close()

    # -- the contract ------------------------------------------------------------------------
    def validate_provider_specific(self, data: bytes) -> list[str]:
        return [f"linux-tc filter: {problem}" for problem in filters.problems(data)]

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        # Links whose interface is down start with no capacity, so restored calls on them are
        # shed like on any link that lost capacity.
        for link in self._links.values():
            if not await self._is_up(link):
                self._down.add(link.id)
                link.capacity = 0
        on_link = {item.call: self._route(item.destination).id for item in restored}
        changes = self._explain(await super().start(host, restored), on_link)
        async with self._lock:
            # Rebuilt from nothing: exactly the classes of the calls handed back, nothing else.
            for link in self._links.values():
                await self._enforce(link, fresh=True)
        self._watcher = asyncio.create_task(self._watch(), name=f"linux-tc {self.id}: interface state")
        return changes

    async def stop(self) -> None:
        # The hierarchy stays in place: connected calls stay shaped while the server restarts,
        # and start() rebuilds it for the calls it is handed back.
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.to_thread(self._close)

    async def admit(self, request: AdmissionRequest) -> Decision:
        return await self._decide_enforced(request)

    async def renegotiate(self, request: AdmissionRequest) -> Decision:
        return await self._decide_enforced(request)

    async def release(self, call: str) -> None:
        async with self._lock:
            held = self._calls.get(call)
            self._unreserve(call)
            if held is not None:
                self._annotate(held.link)
                await self._enforce(held.link)

    async def update_link(self, link_id: str, capacity: int) -> provider_pb2.Link:
        async with self._lock:
            link = self._links[link_id]
            previous = self._configured[link_id]
            try:
                # All or nothing, like the reference provider (PROV-21).
                with self._all_or_nothing():
                    self._configured[link_id] = capacity
                    changes = await self._apply_capacity(link)
            except BaseException:
                self._configured[link_id] = previous
                raise
            result = self._link_proto(link)
        # Reported after the lock is released, like the reference provider does.
        for change in changes:
            await self.host.report_change(change)
        return result

    # -- decisions that the kernel enforces ---------------------------------------------------
    async def _decide_enforced(self, request: AdmissionRequest) -> Decision:
        async with self._lock:
            before = self._calls.get(request.call)
            decision = self._decide(request)
            if isinstance(decision, Grant):
                link = self._calls[request.call].link
                try:
                    await self._enforce(link)
                except BaseException:
                    self._put_back(request.call, before)
                    await self._enforce_quietly(link)
                    raise
            self._annotate(self._route(request.destination))
            return decision

    def _put_back(self, call: str, before: Reservation | None) -> None:
        """The books as they were before a decision whose enforcement failed."""
        self._unreserve(call)
        if before is not None:
            for direction, rate in before.rates.items():
                before.link.reserved[direction] += rate
            self._calls[call] = before

    async def _apply_capacity(self, link: LinkState) -> list[ProviderChange]:
        """Set the link's capacity from its configuration and state, shed what no longer fits,
        and enforce the result."""
        link.capacity = 0 if link.id in self._down else self._configured[link.id]
        changes = self._shed()
        # The books have changed and the changes must reach the host whatever the kernel says;
        # a failure is logged, and the next enforcement of this link reconciles the kernel.
        await self._enforce_quietly(link)
        return changes

    def _shed(self) -> list[ProviderChange]:
        """The reference provider's shedding (newest first), with the reason when it is a link
        being down rather than a capacity cut."""
        on_link = {call: held.link.id for call, held in self._calls.items()}
        return self._explain(self._shed_all(), on_link)

    def _explain(self, changes: list[ProviderChange], on_link: Mapping[str, str]) -> list[ProviderChange]:
        explained = []
        for change in changes:
            link_id = on_link.get(change.call, "")
            if link_id in self._down:
                labels = ", ".join(shaper.interface.label for _, shaper in self._shapers[link_id])
                outcome = "QoS degraded to best effort" if change.qos is not None else "QoS cannot be sustained"
                change = dataclasses.replace(change, message=f"link {link_id}: interface {labels} is down; {outcome}")
            explained.append(change)
        return explained

    # -- the kernel ---------------------------------------------------------------------------
    def _plan(self, link: LinkState, direction: str, mtu: int) -> Plan:
        calls: dict[str, CallClass] = {}
        for call, held in self._calls.items():
            if held.link is not link:
                continue
            try:
                flow = filters.parse(held.qos.provider_specific)
            except filters.FilterError as exc:
                # Validated on the way in; only data stored by another provider version gets here.
                log.warning("call %s: provider_specific is not a linux-tc filter (%s); no filter installed", call, exc)
                flow = None
            item = call_class(getattr(held.qos, direction), link.terms, mtu, flow, direction)
            if item is not None:
                calls[call] = item
        return Plan(link.capacity, calls)

    async def _enforce(self, link: LinkState, *, fresh: bool = False) -> None:
        """Make the link's interfaces hold what the books say."""
        for direction, shaper in self._shapers[link.id]:
            plan = self._plan(link, direction, shaper.mtu)
            await shaper.interface.run(lambda shaper=shaper, plan=plan: shaper.apply(plan, fresh=fresh))  # type: ignore[misc]

    async def _enforce_quietly(self, link: LinkState) -> None:
        try:
            await self._enforce(link)
        except Exception:
            log.exception("link %s: could not bring the kernel back to the books", link.id)

    async def _is_up(self, link: LinkState) -> bool:
        for _, shaper in self._shapers[link.id]:
            try:
                state = await shaper.interface.run(shaper.interface.state)
            except TcError:
                log.exception("link %s: cannot read %s", link.id, shaper.interface.label)
                return False
            if not state.up:
                return False
        return True

    async def _watch(self) -> None:
        """Poll interface state; a change sheds (down) or restores (up) the link's capacity."""
        while True:
            await asyncio.sleep(self._poll_seconds)
            for link in self._links.values():
                try:
                    await self._check(link)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("link %s: handling an interface state change failed", link.id)

    async def _check(self, link: LinkState) -> None:
        up = await self._is_up(link)
        if up == (link.id not in self._down):
            return
        async with self._lock:
            if up:
                log.info("link %s: interface up; capacity %d B/s restored", link.id, self._configured[link.id])
                self._down.discard(link.id)
                link.capacity = self._configured[link.id]
                # The interface may have been re-created: rebuild its hierarchy for the calls held.
                await self._enforce(link, fresh=True)
                changes: list[ProviderChange] = []
            else:
                log.warning("link %s: interface down; its calls are shed", link.id)
                self._down.add(link.id)
                link.capacity = 0
                changes = self._shed()
                with contextlib.suppress(TcError):  # a vanished interface has nothing to clean
                    await self._enforce(link)
        for change in changes:
            await self.host.report_change(change)

    # -- for tests and diagnostics ------------------------------------------------------------
    async def installed(self, link_id: str) -> dict[str, dict[str, int]]:
        """direction → call → HTB class minor, as installed on the link's interfaces."""
        found = {}
        for direction, shaper in self._shapers[link_id]:
            found[direction] = await shaper.interface.run(shaper.installed)
        return found
