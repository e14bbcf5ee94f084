"""Call leases: how long a call lives unless its owner extends it, and the one timer that ends the
calls whose lease runs out.

A call made with a lease (CreateCall's `lease_duration`, or the server's `max_lease_seconds` when
it asks for none) lives until its `lease_expire_time`; ExtendCall moves that to `lease_duration`
after now. A lease that ends disconnects its call LEASE_EXPIRED (both legs of a call between two
applications: the caller's lease governs the pair) and releases what it reserved — so no
reservation outlives its owner's interest by more than one lease. What a lease is for a request is
`LeasePolicy`'s to say; ending a call is the call manager's (`CallManager.expire_lease`, under
the call's lock, settled like every other outcome).

`LeaseTimer` is the one timer of every lease. It keeps no state of its own beyond when it next
has to wake: a lease is stored with its call, and the store indexes the live ones
(`store.base.lease_deadline_us`). One task sleeps until the earliest lease in the store ends, or
until a commit sets an earlier one (`scheduled`), asks the call manager to end every call whose
lease ended by then, and looks again. So there is no timer per call, nothing to cancel when a
lease is extended or a call dropped (the manager finds the lease moved, or gone, and does
nothing), and after a restart — or a kill -9 — the same query finds every lease that ended while
no server ran: `expire_overdue` ends those before the server serves.

Whether a lease has ended is decided with one clock (`Clock`, the system's by default; tests pass
a `testing.ManualClock`): by the manager when it expires a call and when it extends one, each
under the call's lock, so an extension that arrives before the lease ends always keeps the call,
and one that arrives after it never revives it.

Several replicas on one database (`Store.shared`; conformance/SPEC.md REPL-4): every replica runs
this timer over the one lease index, and any of them may end any call whose lease ran out — it is
not left to the leader. Each ending re-reads the call under its lock, which is held across the
replicas (`locks.KeyedLocks` on the store's shared locks), so a call is ended, released and
announced once: the replicas that come second find it ended (or extended) and do nothing. Why
not the leader alone: a replica's own commits wake its timer at once (`scheduled`), so a lease
ends on time wherever it was made, with no failover to wait for; and when a replica dies, the
others already know its leases, because on a shared store the timer looks at the index again at
least every SHARED_LOOK_AGAIN_SECONDS (a lease set on another replica wakes nobody here; an
indexed MIN every second is cheap). Replicas woken by the same deadline go through what is due in
different orders (shuffled), so that a burst of expiries is shared out rather than contended for
call by call. The clock is each replica's own: replicas keep their clocks synchronised (NTP), as a
skew of s lets a lease end up to s early on the replica whose clock is ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from callqos.server.store.base import Store

log = logging.getLogger(__name__)

# Nanoseconds since the epoch, now.
Clock = Callable[[], int]
# How many expired leases one query returns; the timer asks again until none is left.
EXPIRY_BATCH = 100
# After a call could not be expired (the store failed), how long until the timer tries again.
RETRY_SECONDS = 1.0
# On a store several replicas share, the longest the timer sleeps without looking at the lease
# index again: how late, at most, a replica learns of a lease another replica set (one that died
# before ending it, in particular).
SHARED_LOOK_AGAIN_SECONDS = 1.0


@dataclass(frozen=True)
class LeasePolicy:
    """The server's lease rules: `max_seconds` (0: no maximum) bounds every lease asked for, and
    is the lease of a call that asks for none (without a maximum, such a call has no lease)."""

    max_seconds: float = 0.0

    def lease_for(self, asked: duration_pb2.Duration | None) -> duration_pb2.Duration | None:
        """The lease of a new call that asked for `asked` (validated; None: asked for none)."""
        if asked is not None:
            return asked
        if not self.max_seconds:
            return None
        return duration_pb2.Duration(seconds=int(self.max_seconds), nanos=round(self.max_seconds % 1 * 1e9))


def expiry(now_ns: int, duration: duration_pb2.Duration) -> timestamp_pb2.Timestamp:
    """When a lease of `duration` taken at `now_ns` ends."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(now_ns + duration.ToNanoseconds())
    return stamp


class LeaseTimer:
    """The one timer that ends calls whose lease ran out (see the module docstring).

    `expire(name)` ends the call `name` if its lease has ended by the timer's clock, and says
    whether it did; it is the call manager's, and may raise (the timer logs it and tries that call
    again a little later)."""

    def __init__(
        self,
        store: Store,
        expire: Callable[[str], Awaitable[bool]],
        clock: Clock = time.time_ns,
    ) -> None:
        self._store = store
        self._expire = expire
        self.clock = clock
        # Other replicas commit leases this timer is not told of (see the module docstring).
        self._look_again_us: int | None = int(SHARED_LOOK_AGAIN_SECONDS * 1e6) if store.shared else None
        self._wake = asyncio.Event()
        # When the task next wakes by itself (µs since the epoch); 0 while it is looking (any new
        # lease wakes it then), None when it waits for a lease to exist.
        self._target: int | None = 0
        self._task: asyncio.Task[None] | None = None

    def now_us(self) -> int:
        return self.clock() // 1000

    def scheduled(self, deadline_us: int) -> None:
        """A commit stored a live lease ending at `deadline_us`: wake the timer if that is earlier
        than when it would wake anyway. (A later lease needs nothing: the timer finds it when it
        looks again.)"""
        if self._target is None or deadline_us < self._target:
            self._wake.set()

    async def expire_overdue(self) -> int:
        """End every call whose lease ended by now; how many were ended. A call that could not be
        (the store failed) is logged and left for the next pass: its lease is still in the store."""
        now = self.now_us()
        ended = 0
        tried: set[str] = set()
        while True:
            due = [name for name in await self._store.expired_leases(now, EXPIRY_BATCH) if name not in tried]
            if not due:
                return ended
            if self._store.shared:  # other replicas are likely ending the same ones: start elsewhere
                random.shuffle(due)
            for name in due:
                tried.add(name)
                try:
                    if await self._expire(name):
                        ended += 1
                except Exception:
                    log.exception("could not end %s, whose lease ran out; trying again shortly", name)

    def start(self) -> None:
        """Run the timer (after `expire_overdue` has ended what ran out while no server ran)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callqos.leases")

    async def stop(self) -> None:
        """Stop the timer. Leases stay in the store; the next start honours them."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._target = 0  # looking: a lease committed meanwhile wakes the next wait at once
            try:
                await self.expire_overdue()
                following = await self._store.next_lease_expiry()
                if following is not None and following <= self.now_us():
                    # Left over from this pass (a call that failed to end): retry a little later.
                    following = self.now_us() + int(RETRY_SECONDS * 1e6)
            except Exception:
                log.exception("the lease timer could not read the store; trying again shortly")
                following = self.now_us() + int(RETRY_SECONDS * 1e6)
            if self._look_again_us is not None:
                soon = self.now_us() + self._look_again_us
                following = soon if following is None else min(following, soon)
            self._target = following
            delay = None if following is None else max(0.0, (following - self.now_us()) / 1e6)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
