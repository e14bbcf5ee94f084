"""The admission ledger: what callqos says is reserved is what the providers hold, and stays so
across failures and restarts (README "The admission ledger"; conformance/SPEC.md LINK-6, LINK-5,
CALL-6, PROV-19).

The call manager keeps the two in step on every operation (`calls.CallManager._settle`); this
module does what no single operation can:

- **Link capacities set with UpdateLink are durable** (LINK-5). UpdateLink keeps the new
  capacity, with the configured capacity it overrode, BEFORE asking the provider (a capacity the
  store cannot keep is refused with STORAGE_UNAVAILABLE, nothing changed), and answers with every
  call the change degraded or dropped (LINK-6). At start-up, before any call is restored, a kept
  capacity is put back while the link's configured capacity is still the one it overrode; once
  the configuration changes, the configuration wins and the kept capacity is forgotten.
- **Owed releases are retried** (CALL-6): a release the provider did not confirm stays owed (in
  the store when the call was recorded, else in memory) and is retried with exponential backoff,
  up to `release_retry_max_seconds` apart, until the provider confirms it; the pending count is
  the `callqos.releases.pending` gauge.
- **Reconciliation** (PROV-19): at start-up, and every `reconcile_interval_seconds`, each
  provider that lists its reservations is compared with the connected calls the store holds for
  it, call by call, by the rates GRANT-1 counts (a call between two applications once, under its
  caller's leg, which holds the pair's one reservation). A reservation no connected call holds is
  released; a connected call whose provider holds something else is re-taken, or recorded as
  what the provider holds when its level accepts that, or disconnected. A difference is acted on
  when a second pass sees it again (so that an operation in flight between the provider and the
  store is never mistaken for one), at once at start-up and for calls an operation could not put
  right itself (`CallManager.suspects`). Every repair is logged, counted
  (`callqos.ledger.repairs`) and, when it changes a call, announced by that call's events.

Several replicas on one database (conformance/SPEC.md REPL-4): the owed releases in the store
and the periodic reconciliation are the duties of the one replica that leads background work
(`leading`, from `background.Background`), so that a release is retried, and a difference acted
on, once, and they outlive a replica that dies (the next leader takes them over within its
`leader_check_seconds`). Every replica still retries the releases it owes in memory (no other
knows of them) and reconciles the calls it made suspect itself. No start-up pass acts at once
there (the other replicas have operations in flight): every difference waits for its second
sighting, and each is put right under the call's lock, which is held across the replicas
(`locks.KeyedLocks` on the store's shared locks), so an operation in flight on another replica
finishes before reconciliation looks at its call. UpdateLink holds its link's lock across the
replicas too, so that two replicas changing one link apply their capacities in one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from callqos.server import names
from callqos.server.calls import LINK_CHANGES, CallManager, rates_of
from callqos.server.errors import Reason, ServiceError, storage_unavailable
from callqos.server.hosting import HostedProvider, HostedProviders
from callqos.server.locks import KeyedLocks, to_completion
from callqos.server.store.base import LinkCapacity, Store, StoreUnavailable, holds_reservation
from callqos.server.telemetry import Instruments
from callqos.v1 import callqos_service_pb2 as svc

log = logging.getLogger(__name__)

# How often the loop looks for owed releases that are due; backoff starts here and doubles.
TICK_SECONDS = 0.25
FIRST_RETRY_SECONDS = 0.5
SUSPECT_PASS_SECONDS = 1.0


@dataclass
class _Retry:
    """When an owed release is next tried, and how many tries failed."""

    attempts: int
    due: float  # time.monotonic()


class Ledger:
    def __init__(
        self,
        store: Store,
        providers: HostedProviders,
        calls: CallManager,
        telemetry: Instruments,
        *,
        reconcile_interval_seconds: float,
        release_retry_max_seconds: float,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.providers = providers
        self.calls = calls
        self.telemetry = telemetry
        self.reconcile_interval = reconcile_interval_seconds
        self.retry_max = release_retry_max_seconds
        # UpdateLink and reconciliation never overlap (a reconciliation pass would see the calls
        # a capacity change is shedding half-way), nor do two UpdateLinks (their kept capacity
        # and the provider's would be applied in different orders).
        self._admin = asyncio.Lock()
        self._link_locks = KeyedLocks(store.shared_locks(), "link")
        # Whether this replica leads background work now (asked only when the store is shared).
        self._leading = leading
        self._retries: dict[str, _Retry] = {}
        self._seen: set[tuple[str, str, tuple[int, int] | None, tuple[int, int] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.pending = 0  # owed releases, for the gauge
        self.repairs: Counter[str] = Counter()  # reconciliation outcomes since start, by outcome
        telemetry.pending_releases = lambda: self.pending

    # -- start-up and shutdown ---------------------------------------------------------------
    async def put_back_link_capacities(self) -> None:
        """Before any call is restored: apply each capacity kept from UpdateLink whose link is
        still configured as it was when it was set; forget the others (LINK-5)."""
        readable = await self.providers.read_configured_links()
        for kept in await self.store.link_capacities():
            parsed = names.parse_link(kept.link)
            provider = names.provider_name(parsed[0]) if parsed is not None else ""
            if provider and provider not in readable and self.providers.find(provider) is not None:
                continue  # hosted, but its links cannot be read now: kept for the next start
            configured = self.providers.configured_capacity.get(kept.link)
            if configured is None or parsed is None:
                log.warning("forgetting the capacity set for %s: no hosted provider administers it", kept.link)
                await self._forget_capacity(kept.link)
                continue
            if configured == kept.capacity != kept.configured:
                # The provider still holds the capacity UpdateLink set: a provider process that
                # outlived the server reports its running capacity, not its configured one. The
                # set one is kept (and put back if that process restarts), and the configured one
                # is the one recorded when it was set.
                self.providers.configured_capacity[kept.link] = configured = kept.configured
            if configured != kept.configured:
                log.warning(
                    "link %s: its configured capacity changed from %d to %d B/s since UpdateLink set %d B/s; "
                    "the configuration wins",
                    kept.link,
                    kept.configured,
                    configured,
                    kept.capacity,
                )
                await self._forget_capacity(kept.link)
                continue
            provider_id, link_id = parsed
            try:
                info = self.providers.get(names.provider_name(provider_id))
                await self.providers.update_link(info, link_id, kept.capacity)
            except ServiceError as error:
                log.error("could not put back the capacity UpdateLink set for %s: %s", kept.link, error.message)
                continue
            log.info("link %s: capacity %d B/s, as set with UpdateLink", kept.link, kept.capacity)

    async def _forget_capacity(self, link: str) -> None:
        try:
            await self.store.set_link_capacity(None, link)
        except StoreUnavailable as exc:
            log.warning("could not forget the capacity kept for %s: %s", link, exc.cause)

    def leads(self) -> bool:
        """Whether this process does the duties that must happen once: always, when it owns its
        store; the leading replica's, when several share it."""
        return not self.store.shared or self._leading()

    async def start(self) -> None:
        """After the calls are restored, before serving: retry every owed release, reconcile
        every provider that lists its reservations, then keep doing both in the background. On
        a shared store, only the background passes (confirmed, on the leader)."""
        if not self.store.shared:
            await self.retry_releases(everything=True)
            await self.reconcile(confirm=False)
        self._task = asyncio.create_task(self._run(), name="callqos ledger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        next_pass = time.monotonic() + self.reconcile_interval
        last_pass = 0.0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.retry_releases()
                now = time.monotonic()
                periodic = self.reconcile_interval > 0 and now >= next_pass
                # Suspects are reconciled soon (acted on without waiting for a second sighting),
                # but no more than once a second while they keep failing (a full disk).
                if periodic or (self.calls.suspects and now - last_pass >= SUSPECT_PASS_SECONDS):
                    last_pass = now
                    await self.reconcile(confirm=True)
                    if periodic:
                        next_pass = time.monotonic() + self.reconcile_interval
            except Exception:  # the loop must outlive any one failure (a storage error, a bug)
                log.exception("the ledger's background pass failed; trying again")

    # -- UpdateLink --------------------------------------------------------------------------
    async def update_link(self, info: HostedProvider, link_id: str, capacity: int) -> svc.UpdateLinkResponse:
        """Set the capacity of the provider's link `link_id`, durably (LINK-5), and answer with
        the link and every call the provider degraded or dropped for it (LINK-6). Runs to the end
        even if the caller leaves, so the kept capacity and the provider's agree."""
        return await to_completion(self._update_link(info, link_id, capacity))

    async def _update_link(self, info: HostedProvider, link_id: str, capacity: int) -> svc.UpdateLinkResponse:
        link = names.link_name(info.id, link_id)
        async with self._admin, self._link_locks.hold(link):
            if not any(known.name == link for known in await self.providers.list_links(info)):
                raise ServiceError(Reason.ERROR_REASON_LINK_NOT_FOUND, f"no link {link}", metadata={"link": link})
            configured = self.providers.configured_capacity.get(link, capacity)
            before = {kept.link: kept for kept in await self.store.link_capacities()}.get(link)
            keep = None if capacity == configured else LinkCapacity(link, capacity, configured)
            try:
                await self.store.set_link_capacity(keep, link)
            except StoreUnavailable as exc:
                raise storage_unavailable(exc.cause, f"keep the new capacity of {link}") from exc
            gathered: list[svc.LinkChange] = []
            token = LINK_CHANGES.set(gathered)
            try:
                updated = await self.providers.update_link(info, link_id, capacity)
            except BaseException:
                # The provider changed nothing (PROV-21): neither does the store.
                with contextlib.suppress(StoreUnavailable):
                    await self.store.set_link_capacity(before, link)
                raise
            finally:
                LINK_CHANGES.reset(token)
            return svc.UpdateLinkResponse(link=updated, changes=gathered)

    # -- owed releases -----------------------------------------------------------------------
    async def retry_releases(self, *, everything: bool = False) -> None:
        """Try each owed release that is due (`everything`: all of them, as at start-up). One
        first seen now waits a little: the operation that owes it is likely still releasing. The
        releases owed in the store are the leader's alone on a shared store."""
        owed = {item.call: item for item in await self.store.pending_releases()} if self.leads() else {}
        owed.update(self.calls.owed)
        self.pending = len(owed)
        now = time.monotonic()
        for call in list(self._retries):
            if call not in owed:
                del self._retries[call]
        for call, item in owed.items():
            retry = self._retries.setdefault(
                call, _Retry(item.attempts, now if everything else now + FIRST_RETRY_SECONDS)
            )
            if not everything and retry.due > now:
                continue
            if await self.calls.retry_release(item):
                self._retries.pop(call, None)
                self.pending -= 1
                continue
            retry.attempts += 1
            retry.due = time.monotonic() + min(self.retry_max, FIRST_RETRY_SECONDS * 2 ** (retry.attempts - 1))

    # -- reconciliation ----------------------------------------------------------------------
    async def reconcile(self, *, confirm: bool) -> Counter[str]:
        """One pass over every provider that lists its reservations (PROV-19). With `confirm`, a
        difference is acted on only when the previous pass saw the same one (or its call is a
        suspect); without, at once. A replica that does not lead looks only at its own suspects.
        Returns the outcomes by kind ("released", "re-taken", ...)."""
        outcomes: Counter[str] = Counter()
        leads = self.leads()
        if not leads and not self.calls.suspects:
            return outcomes
        async with self._admin:
            suspects = set(self.calls.suspects)
            failed: set[str] = set()
            seen_now: set[tuple[str, str, tuple[int, int] | None, tuple[int, int] | None]] = set()
            connected_calls = await self.store.connected_calls()
            for info in self.providers.all():
                try:
                    held = await self.providers.holdings(info)
                except ServiceError as error:
                    log.warning("could not list the reservations of provider %s: %s", info.id, error.message)
                    continue
                if held is None:
                    continue
                # What the store says the provider holds, by the name it holds it under: a call between
                # two applications holds one reservation, under its caller's leg.
                stored = {
                    c.name: rates_of(c.granted_qos)
                    for c in connected_calls
                    if c.provider == info.name and holds_reservation(c)
                }
                differing = {name for name, rates in held.items() if stored.get(name) != rates}
                differing |= {name for name, rates in stored.items() if name not in held and rates != (0, 0)}
                differing |= suspects & (held.keys() | stored.keys())
                if not leads:
                    differing &= suspects
                for name in sorted(differing):
                    key = (info.id, name, held.get(name), stored.get(name))
                    if confirm and name not in suspects and key not in self._seen:
                        seen_now.add(key)  # acted on if the next pass sees it again
                        continue
                    outcome = await self.calls.reconcile_call(info, name)
                    outcomes[outcome] += 1
                    if outcome == "failed":
                        failed.add(name)
                    if outcome not in ("agreed", "failed"):
                        log.warning(
                            "ledger: provider %s held %s for %s, the store %s: %s",
                            info.id,
                            held.get(name),
                            name,
                            stored.get(name),
                            outcome,
                        )
                    self.telemetry.ledger_repair(info.name, outcome)
            if leads:
                self._seen = seen_now
            # A suspect is cleared once a pass found nothing to do for it, or put it right.
            self.calls.suspects -= suspects - failed
        self.repairs.update(outcomes)
        return outcomes
