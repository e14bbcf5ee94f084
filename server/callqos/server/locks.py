"""Concurrency helpers: per-key locks, and running a mutation to completion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Hashable
from contextlib import asynccontextmanager
from typing import TypeVar

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
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
