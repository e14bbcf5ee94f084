"""Concurrency helpers: per-key locks, and running a mutation to completion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Hashable
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

    def hold(self, key: Hashable) -> _Held:
        """`async with locks.hold(key)`: the lock of `key`, made when first asked for and dropped
        when nobody holds or waits for it."""
        return _Held(self, key)


class _Held:
    """One `hold`: a plain async context manager (every mutation takes one or two; a generator-
    based one costs several times as much to enter and leave)."""

    __slots__ = ("_key", "_locks")

    def __init__(self, locks: KeyedLocks, key: Hashable) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        table = self._locks._locks
        lock, users = table.get(self._key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        table[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(held=False)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._leave(held=True)

    def _leave(self, *, held: bool) -> None:
        table = self._locks._locks
        lock, users = table[self._key]
        if held:
            lock.release()
        if users == 1:
            del table[self._key]
        else:
            table[self._key] = (lock, users - 1)
