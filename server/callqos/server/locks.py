"""Concurrency helpers: per-key locks (across replicas when the store is shared), and running a
mutation to completion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Hashable
from contextlib import asynccontextmanager
from typing import TypeVar

from callqos.server.store.base import SharedLocks

T = TypeVar("T")


async def to_completion(work: Awaitable[T]) -> T:
    """Await `work` in its own task, which finishes even if the awaiting RPC is cancelled (the
    client went away, or grpc enforced its deadline). A mutation that has reached a provider
    must end with the store and the provider agreeing — the call recorded and its events
    emitted, or whatever was reserved released — never cut between the two (conformance/SPEC.md
    API-8). Provider decisions are still bounded by the caller's deadline (see
    hosting.CALLER_DEADLINE)."""
    task = asyncio.ensure_future(work)
    # If the caller is gone, nobody awaits the task: retrieve its outcome so it is not reported
    # as "exception never retrieved" (the outcome itself is in the store and the events).
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)


class KeyedLocks:
    """One holder per key at a time. With `shared` (the store's `shared_locks()`: several
    replicas on one database), one holder among every replica: this process's holders of a key
    queue here first, then the one at the front takes the key from the other replicas too.
    `namespace` keeps the keys of different lock sets apart there (a call's name and a line's
    may be equal strings)."""

    def __init__(self, shared: SharedLocks | None = None, namespace: str = "") -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}
        self._shared = shared
        self._namespace = namespace

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                if self._shared is None:
                    yield
                else:
                    async with self._shared.hold(f"{self._namespace}:{key!r}"):
                        yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
