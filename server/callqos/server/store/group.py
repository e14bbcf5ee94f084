"""Group commit for SQLite: mutations that are ready in the same turn of the event loop share one
transaction — one BEGIN, one COMMIT, one write of each page they touch to the WAL — and each is
acknowledged only after that COMMIT.

Each mutation is a `Write`: a function that runs its statements inside the open transaction and
returns its result and what to do once it is durable (`on_commit`: the store's in-memory state,
its cache and last sequence, follows the database only then). Each runs under a SAVEPOINT of its
own, so one that fails (a quota exceeded, an address in use) is rolled back alone and gets its
own error, while the others commit. When the transaction itself fails — its COMMIT, or a write
after which SQLite has rolled the whole transaction back (a full disk, an I/O error) — every
mutation of the group fails with that error and nothing of the group is acknowledged: no caller
is ever told "committed" about something that is not.

Writes run synchronously in one callback of the loop, so nothing else touches the connection
while a group's transaction is open, and groups commit in the order they formed: the sequence
numbers a group's events get follow those of every group before it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
OnCommit = Callable[[], None]
Write = Callable[[], tuple[T, OnCommit]]


class _Member(Generic[T]):
    __slots__ = ("future", "write")

    def __init__(self, write: Write[T], future: asyncio.Future[T]) -> None:
        self.write, self.future = write, future


class GroupCommitter:
    """Commits the writes submitted on `db` in groups (see the module). `on_abort` is told when
    a whole group failed, so that the store forgets what its writes prepared."""

    def __init__(self, db: sqlite3.Connection, on_abort: Callable[[], None]) -> None:
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
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        # A write whose submitter was cancelled before its group formed is not made.
        group = [member for member in self._waiting if not member.future.done()]
        self._waiting = []
        if not group:
            return
        self.groups += 1
        self.writes += len(group)
        db = self._db
        done: list[tuple[_Member[Any], Any, OnCommit]] = []
        failed: list[tuple[_Member[Any], BaseException]] = []
        alone = len(group) == 1  # no savepoint needed: its failure is the transaction's
        try:
            db.execute("BEGIN IMMEDIATE")
            for member in group:
                if not alone:
                    db.execute("SAVEPOINT member")
                try:
                    result, on_commit = member.write()
                except BaseException as error:
                    if alone or not db.in_transaction:
                        raise  # the transaction is gone (SQLite rolled it back): the group fails
                    db.execute("ROLLBACK TO member")
                    db.execute("RELEASE member")
                    failed.append((member, error))
                    continue
                if not alone:
                    db.execute("RELEASE member")
                done.append((member, result, on_commit))
            db.execute("COMMIT")
        except BaseException as aborted:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._on_abort()
            for member in group:
                if not member.future.done():
                    member.future.set_exception(aborted)
            return
        # Durable now: the store's memory follows, then each is told, in the order they committed.
        for member, result, on_commit in done:
            on_commit()
            if not member.future.done():
                member.future.set_result(result)
        for member, refused in failed:
            if not member.future.done():
                member.future.set_exception(refused)
