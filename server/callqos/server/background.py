"""Work a server does outside any request.

On the one replica that leads (`Store.leadership()`: always the process that owns a SQLite file;
among replicas sharing PostgreSQL, the holder of the leader's advisory lock, replaced within
`leader_check_seconds` when it dies):
- pruning events and idempotency records beyond retention (every PRUNE_INTERVAL_SECONDS);
- with a shared store, ringing out the offered calls whose ring time passed and that no replica's
  timer ended (the replica that offered them died: each replica times only its own offers);
- with a shared store, the admission ledger's duties (`ledger.Ledger`, which asks `leading`):
  retrying the releases owed in the store, and reconciling the providers' books with the calls.
Each duty is harmless when two replicas run it (a leader that lost its lead without knowing it):
pruning deletes what is already gone, a ring-out re-checks the call under its lock, and a
reconciliation acts only on a difference seen twice, under the call's lock (held across the
replicas).

On every replica: readiness. The health service says the API service (callqos.v1.CallQosService,
what readiness probes ask) is NOT_SERVING while the store cannot be reached (`Store.check`), so a
load balancer stops sending requests that could only fail, and SERVING again once it can; the
whole server ("", what liveness asks) stays SERVING, as a restart would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from callqos.server.incoming import Switchboard
from callqos.server.store.base import Store, StoreUnavailable
from callqos.v1 import call_pb2

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 60.0
# An offer is rung out by the leader only this long after its time, so that the timer of the
# replica that offered it, when alive, does it first.
RING_OUT_LATE_SECONDS = 1.0
# Readiness is checked this often.
CHECK_SECONDS = 2.0


class Background:
    def __init__(
        self,
        store: Store,
        calls: Switchboard,
        *,
        prune: Callable[[], Awaitable[int]],
        leader_check_seconds: float,
        set_serving: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.store = store
        self.calls = calls
        self._prune = prune
        self._interval = leader_check_seconds
        self._set_serving = set_serving
        self._leadership = store.leadership()
        self._tasks: list[asyncio.Task[None]] = []
        self.leading = False
        self.rounds = 0  # rounds of duties run as the leader (tests wait on it)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._lead_forever(), name="callqos leader"))
        if self.store.shared:
            self._tasks.append(asyncio.create_task(self._watch_readiness(), name="callqos readiness"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._leadership.close()

    # -- the leader's duties -----------------------------------------------------------------
    async def _lead_forever(self) -> None:
        next_prune = 0.0
        interval = self._interval if self.store.shared else PRUNE_INTERVAL_SECONDS
        while True:
            try:
                self.leading = await self._leadership.lead()
                if self.leading:
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                        dropped = await self._prune()
                        if dropped:
                            log.info("pruned events beyond retention", extra={"dropped": dropped})
                    if self.store.shared:
                        await self.ring_out_orphaned_offers()
                    self.rounds += 1
            except Exception:  # the loop must outlive any one failure (the database away, a bug)
                log.exception("the leader's background work failed; trying again")
            await asyncio.sleep(interval)

    async def ring_out_orphaned_offers(self) -> None:
        """End NO_ANSWER every offered call whose ring time passed (its replica's timer did not)."""
        now = time.time()
        for call in await self.store.calls_in_state(call_pb2.Call.State.STATE_OFFERING):
            if call.offer_expire_time.ToNanoseconds() / 1e9 + RING_OUT_LATE_SECONDS <= now:
                await self.calls.ring_out(call.name, "nobody answered (rung out by the leading replica)")

    # -- readiness ---------------------------------------------------------------------------
    async def _watch_readiness(self) -> None:
        serving = True
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                await asyncio.wait_for(self.store.check(), CHECK_SECONDS)
                reachable = True
            except (StoreUnavailable, TimeoutError) as exc:
                reachable = False
                if serving:
                    log.error("the database cannot be reached; not serving until it can: %s", exc)
            if reachable != serving:
                serving = reachable
                if serving:
                    log.info("the database can be reached again; serving")
                await self._set_serving(serving)
