"""Concurrency helpers: per-key locks (across replicas when the store is shared), and running a
mutation to completion."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Hashable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
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

    def hold(self, key: Hashable) -> _Held:
        """`async with locks.hold(key)`: the lock of `key`, made when first asked for and dropped
        when nobody holds or waits for it."""
        return _Held(self, key)


class _Held:
    """One `hold`: a plain async context manager (every mutation takes one or two; a generator-
    based one costs several times as much to enter and leave)."""

    __slots__ = ("_key", "_locks", "_shared")

    def __init__(self, locks: KeyedLocks, key: Hashable) -> None:
        self._locks, self._key = locks, key
        self._shared: AbstractAsyncContextManager[None] | None = None  # the other replicas' turn, held

    async def __aenter__(self) -> None:
        locks = self._locks
        table = locks._locks
        lock, users = table.get(self._key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        table[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(held=False)
            raise
        if locks._shared is not None:
            shared = locks._shared.hold(f"{locks._namespace}:{self._key!r}")
            try:
                await shared.__aenter__()
            except BaseException:
                self._leave(held=True)
                raise
            self._shared = shared

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        shared, self._shared = self._shared, None
        try:
            if shared is not None:
                await shared.__aexit__(kind, error, trace)
        finally:
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
