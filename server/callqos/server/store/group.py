"""Group commit for SQLite: mutations that are ready in the same turn of the event loop share one
transaction — one BEGIN, one COMMIT, one write of each page they touch to the WAL — and each is
acknowledged only after that COMMIT.

Each mutation is a `Write`: a function that runs its statements inside the open transaction and
returns its result and what to do once it is durable (`on_commit`: the store's in-memory state,
its cache and last sequence, follows the database only then). One that fails on its own (a quota
exceeded, an address in use) gets its own error, and the rest of its group is rolled back and
written again without it, so the others commit as if it had never been tried (the writes are
functions of the database as they find it, so writing one again is the same write). When the
storage fails — the COMMIT, a write that raises `StoreUnavailable` (a full disk, an I/O error),
or a write after which SQLite has rolled the whole transaction back — every mutation of the group
fails with the same error (the store names it: `StoreUnavailable`, which the call manager answers
with UNAVAILABLE / STORAGE_UNAVAILABLE after compensating each call, issue #11) and nothing of the
group is acknowledged: no caller is ever told "committed" about something that is not.

Writes run synchronously in one callback of the loop, so nothing else touches the connection
while a group's transaction is open, and groups commit in the order they formed: the sequence
numbers a group's events get follow those of every group before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from callqos.server.store.base import StoreUnavailable

T = TypeVar("T")
OnCommit = Callable[[], None]
Write = Callable[[], tuple[T, OnCommit]]


class _Member(Generic[T]):
    __slots__ = ("future", "write")

    def __init__(self, write: Write[T], future: asyncio.Future[T]) -> None:
        self.write, self.future = write, future


class GroupCommitter:
    """Commits the writes submitted on `db` in groups (see the module). `on_abort` is told when a
    transaction was rolled back, with the error that ended it, so that the store forgets what the
    writes prepared; it returns the error every member of a failed group gets (a failure of the
    storage named as the store names it)."""

    def __init__(self, db: sqlite3.Connection, on_abort: Callable[[BaseException], BaseException]) -> None:
        self._db = db
        self._on_abort = on_abort
        self._waiting: list[_Member[Any]] = []
        self._scheduled = False
        self.groups = 0  # groups committed or failed, and the writes in them (for the benchmark's story)
        self.writes = 0

    async def submit(self, write: Write[T]) -> T:
        """`write`'s result, once the transaction it ran in has committed; its error, or the
        group's, otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append(_Member(write, future))
        if not self._scheduled:
            # After every callback already due in this turn: what they submit joins the group.
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                raise  # cancelled before its group formed: never written
            # Cancelled after its group was written: the outcome stands (the caller must not take
            # a durable commit for one that never happened); the cancellation comes at its next await.
            task = asyncio.current_task()
            if task is not None:
                task.cancel()
            return future.result()

    def _flush(self) -> None:
        self._scheduled = False
        # A write whose submitter was cancelled before its group formed is not made.
        group = [member for member in self._waiting if not member.future.done()]
        self._waiting = []
        self.groups += 1 if group else 0
        self.writes += len(group)
        while group:
            group = self._commit(group)

    def _commit(self, group: list[_Member[Any]]) -> list[_Member[Any]]:
        """Write `group` in one transaction and commit it; what is left to write again: the group
        without a write that failed on its own (none when the group committed or failed)."""
        db = self._db
        done: list[tuple[_Member[Any], Any, OnCommit]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for member in group:
                try:
                    result, on_commit = member.write()
                except BaseException as error:
                    if len(group) == 1 or not db.in_transaction or isinstance(error, StoreUnavailable):
                        # Its failure is the group's: the storage failed (or SQLite rolled the
                        # whole transaction back), and would fail the others as well.
                        raise
                    # A write that fails on its own (a quota, an address in use) fails alone: the
                    # group is rolled back and written again without it. (Cheaper than a savepoint
                    # around every write, for a failure that is rare.)
                    db.execute("ROLLBACK")
                    self._on_abort(error)
                    if not member.future.done():
                        member.future.set_exception(error)
                    return [other for other in group if other is not member]
                done.append((member, result, on_commit))
            db.execute("COMMIT")
        except BaseException as aborted:
            if db.in_transaction:
                # (After SQLITE_FULL SQLite may have rolled back already; a failing ROLLBACK must
                # not hide the cause.)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            failure = self._on_abort(aborted)
            for member in group:
                if not member.future.done():
                    member.future.set_exception(failure)
            return []
        # Durable now: the store's memory follows, then each is told, in the order they committed.
        for member, result, on_commit in done:
            on_commit()
            if not member.future.done():
                member.future.set_result(result)
        return []
