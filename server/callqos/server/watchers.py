"""Who is watching: the limits on open WatchEvents streams, and cutting the ones that stall.

Every open stream holds a slot, counted here and nowhere else. Three limits apply, checked in
this order when a stream opens:

1. `max_watchers` bounds all streams of the server (TOO_MANY_WATCHERS, metadata scope=server).
2. The tenant's quota `watchers_per_principal` (`quota_watchers_per_principal`, overridable per
   tenant in `tenant_quotas`; 0 = none) bounds the streams of each principal of that tenant:
   QUOTA_EXCEEDED with a google.rpc.QuotaFailure naming `principal:{tenant}/{principal}`. This is
   the tenant's allowance, set by who sells or grants it.
3. `max_watchers_per_principal` bounds the streams of any one principal, of any tenant, whatever
   its quota (TOO_MANY_WATCHERS, scope=principal): the operator's protection, so that one client
   opening a thousand idle streams cannot lock every other watcher out (SPEC.md WATCH-11).

A principal can therefore hold min(quota, max_watchers_per_principal) streams; when both are the
same number the quota is the one reported. Principals are told apart within their tenant
(`Caller.subject`). Taking a slot is one synchronous step — the checks and the count together,
no await between them — so streams opened at the same moment can never overshoot a limit.

A watcher that has stopped reading (its client stopped, HTTP/2 flow control has filled every
buffer between us) would otherwise keep its slot, and the events it will never read, for ever.
Its cursor stops moving while newer events pile up behind it; once it has not moved for
`watch_stall_seconds` while more than `watch_backlog_events` newer events wait, the stream is cut
with UNAVAILABLE / WATCHER_TOO_SLOW. That status is resumable: the client's watch reopens from
the last event it received, so a consumer that was only slow loses nothing (conformance/SPEC.md
WATCH-12). An idle watcher — nothing to send — is never cut: it costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from callqos.server.errors import Reason, ServiceError
from callqos.server.security.identity import Caller
from callqos.server.security.quotas import quota_failure

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Watcher:
    """One open WatchEvents stream: whose it is (`{tenant}/{principal}`), how far it has got,
    and how to cut it."""

    principal: str
    cursor: int = 0
    moved_at: float = field(default_factory=time.monotonic)
    # Ends the stream with a status; set once it is streaming (None: cannot be cut yet, or cut).
    cut: Callable[[ServiceError], Awaitable[None]] | None = None

    def advanced(self, sequence: int) -> None:
        """The stream has passed event `sequence` (delivered it, or skipped it by its filter)."""
        self.cursor = sequence
        self.moved_at = time.monotonic()


@dataclass(frozen=True)
class WatchLimits:
    total: int
    per_principal: int
    stall_seconds: float
    backlog_events: int


class Watchers:
    """The open watchers, their limits, and the supervisor that cuts stalled ones."""

    def __init__(self, limits: WatchLimits) -> None:
        self.limits = limits
        self._open: set[Watcher] = set()
        self._by_principal: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, caller: Caller, quota: int = 0) -> Watcher:
        """A slot for a new stream of `caller`, whose tenant allows each principal `quota` streams
        (0: no quota). TOO_MANY_WATCHERS (RESOURCE_EXHAUSTED; ErrorInfo metadata `scope` says
        which limit) or QUOTA_EXCEEDED (RESOURCE_EXHAUSTED with a QuotaFailure) otherwise: see
        the module for the order. Synchronous on purpose: see the module."""
        if len(self._open) >= self.limits.total:
            raise ServiceError(
                Reason.ERROR_REASON_TOO_MANY_WATCHERS,
                f"{self.limits.total} watch streams are open; try again later",
                metadata={"scope": "server", "limit": str(self.limits.total)},
            )
        subject = caller.subject
        open_now = self._by_principal[subject]
        if quota and open_now >= quota:
            raise quota_failure(
                f"principal:{subject}",
                "watchers_per_principal",
                quota,
                f"{caller.principal} already has {open_now} watch streams open (quota {quota})",
            )
        if open_now >= self.limits.per_principal:
            raise ServiceError(
                Reason.ERROR_REASON_TOO_MANY_WATCHERS,
                f"{caller.principal} has {self.limits.per_principal} watch streams open; close one first",
                metadata={"scope": "principal", "limit": str(self.limits.per_principal)},
            )
        watcher = Watcher(subject)
        self._open.add(watcher)
        self._by_principal[subject] += 1
        return watcher

    def release(self, watcher: Watcher) -> None:
        if watcher in self._open:
            self._open.discard(watcher)
            self._by_principal[watcher.principal] -= 1
            if not self._by_principal[watcher.principal]:
                del self._by_principal[watcher.principal]

    def stalled(self, last_sequence: int, now: float) -> list[Watcher]:
        """The streams to cut: not moved for stall_seconds with more than backlog_events waiting."""
        limits = self.limits
        return [
            watcher
            for watcher in self._open
            if watcher.cut is not None
            and last_sequence - watcher.cursor > limits.backlog_events
            and now - watcher.moved_at > limits.stall_seconds
        ]

    async def cut_stalled(self, last_sequence: int) -> int:
        """Cut every stalled stream now; how many were cut."""
        cut = 0
        for watcher in self.stalled(last_sequence, time.monotonic()):
            end, watcher.cut = watcher.cut, None
            if end is None:
                continue
            behind = last_sequence - watcher.cursor
            log.warning(
                "cut a watch stream that stopped reading",
                extra={"principal": watcher.principal, "cursor": watcher.cursor, "behind": behind},
            )
            await end(
                ServiceError(
                    Reason.ERROR_REASON_WATCHER_TOO_SLOW,
                    f"this watch read nothing for {self.limits.stall_seconds:g}s while {behind} newer events "
                    f"waited; resume after sequence {watcher.cursor}",
                    metadata={"after_sequence": str(watcher.cursor), "behind": str(behind)},
                )
            )
            self.release(watcher)  # its slot is free even if the stream's handler is slow to end
            cut += 1
        return cut

    async def supervise(self, last_sequence: Callable[[], int]) -> None:
        """Cut stalled streams, checking a few times per stall period, until cancelled."""
        interval = min(1.0, self.limits.stall_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cut_stalled(last_sequence())
            except Exception:
                log.exception("cutting stalled watch streams failed")
