"""SQLite storage: one file under the data directory (WAL), or memory when asked.

Writes run inline on the event loop: each is one short transaction (tens of microseconds with
WAL and synchronous=NORMAL), cheaper than a thread hop.
synchronous=NORMAL in WAL mode survives a process crash (SIGKILL) without losing a committed
transaction; only an OS crash or power loss can lose the last few.

A write SQLite cannot make (SQLITE_FULL, SQLITE_IOERR, a locked or read-only file) leaves the
transaction rolled back and raises `StoreUnavailable` naming the cause; the connection stays
usable, so writes succeed again once space is freed.

Schema versions: 1 (calls, events, requests, meta); 2 adds `link_capacities` and
`pending_releases`. A version-1 file is migrated forward when opened; a newer one is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from callqos.server.store.base import (
    CallPage,
    EventBounds,
    IdempotencyRecord,
    LinkCapacity,
    PendingRelease,
    Store,
    StoreUnavailable,
)
from callqos.v1 import call_pb2, event_pb2

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS calls (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, for newest-first listing
    name     TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    state    INTEGER NOT NULL,
    data     BLOB NOT NULL                       -- callqos.v1.Call
);
CREATE INDEX IF NOT EXISTS calls_state ON calls (state, seq);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    create_us    INTEGER NOT NULL,
    data         BLOB NOT NULL                   -- callqos.v1.QosEvent
);
CREATE TABLE IF NOT EXISTS requests (            -- AIP-155 idempotency records
    principal   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    method      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    call        TEXT NOT NULL,
    status      BLOB NOT NULL,
    create_us   INTEGER NOT NULL,
    PRIMARY KEY (principal, request_id)
);
CREATE INDEX IF NOT EXISTS requests_age ON requests (create_us);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
    + """
CREATE TABLE IF NOT EXISTS link_capacities (     -- UpdateLink, durable (LINK-5); uint64 as decimal text
    link       TEXT PRIMARY KEY,
    capacity   TEXT NOT NULL,
    configured TEXT NOT NULL                     -- the configured capacity it overrode
);
CREATE TABLE IF NOT EXISTS pending_releases (    -- releases owed to providers (CALL-6)
    call       TEXT PRIMARY KEY,
    provider   TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    next_us    INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    seq        INTEGER NOT NULL                  -- insertion order, oldest retried first
);
"""
)
MEMORY = ":memory:"
# Bumped whenever _SCHEMA changes; an older file is migrated forward (MIGRATED_FROM lists the
# versions this server can open and migrate), a newer one is refused, not guessed at.
SCHEMA_VERSION = 2
# Version 1 → 2 only adds tables, which _SCHEMA creates if they do not exist.
MIGRATED_FROM = frozenset({1})
# SQLite primary result codes (`sqlite_errorcode & 0xFF`) that mean "the storage cannot take
# this now" rather than a bug, with the cause an operator reads.
_UNAVAILABLE = {
    5: "the database is locked (SQLITE_BUSY)",
    6: "the database is locked (SQLITE_LOCKED)",
    7: "out of memory (SQLITE_NOMEM)",
    8: "the data directory is read-only (SQLITE_READONLY)",
    10: "disk I/O error (SQLITE_IOERR)",
    13: "disk is full (SQLITE_FULL)",
    14: "cannot open the database file (SQLITE_CANTOPEN)",
}
# Serialized calls kept in memory, newest used last. Safe because one process owns the file
# (see the lock below), so every write to a call passes through `commit` here.
CACHED_CALLS = 10_000


class StoreInUseError(OSError):
    """Another server process already owns this data directory."""


class SqliteStore(Store):
    def __init__(self, path: Path | str) -> None:
        self._lock_file = None
        if str(path) != MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Two servers admitting against one file would each think they own all capacity.
            self._lock_file = open(Path(path).with_suffix(".lock"), "w")  # noqa: SIM115 -- held for the lock
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_file.close()
                raise StoreInUseError(f"{path} is in use by another callqos server") from exc
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        fresh = not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone()
        if not fresh and version != SCHEMA_VERSION and version not in MIGRATED_FROM:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()
            raise OSError(f"{path} has schema version {version}; this server needs {SCHEMA_VERSION}")
        # Creates what a fresh file lacks, and what an older version's file lacks (the migration),
        # in one transaction with the version stamp.
        self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_seq: int = row[0] if row else 0

    # -- calls ----------------------------------------------------------------------------
    async def get_call(self, name: str) -> call_pb2.Call | None:
        data = self._cache.get(name)
        if data is None:
            row = self._db.execute("SELECT data FROM calls WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            data = row[0]
            self._remember(name, data)
        else:
            self._cache.move_to_end(name)
        return call_pb2.Call.FromString(data)

    def _remember(self, name: str, data: bytes) -> None:
        self._cache[name] = data
        self._cache.move_to_end(name)
        if len(self._cache) > CACHED_CALLS:
            self._cache.popitem(last=False)

    async def list_calls(self, *, state: int | None, provider: str | None, limit: int, before: int) -> CallPage:
        sql = "SELECT seq, data FROM calls WHERE seq < ?"
        args: list[object] = [before or (1 << 62)]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        if provider is not None:
            sql += " AND provider = ?"
            args.append(provider)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)  # one more tells whether another page exists
        rows = self._db.execute(sql, args).fetchall()
        calls = [call_pb2.Call.FromString(data) for _, data in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else 0
        return CallPage(calls, next_cursor)

    async def connected_calls(self) -> list[call_pb2.Call]:
        rows = self._db.execute(
            "SELECT data FROM calls WHERE state = ? ORDER BY seq",
            (call_pb2.Call.State.STATE_CONNECTED,),
        ).fetchall()
        return [call_pb2.Call.FromString(data) for (data,) in rows]

    # -- writes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT. On failure the transaction is rolled back (if SQLite has not
        already done so: after SQLITE_FULL it has, and a second ROLLBACK would hide the cause),
        and a failure of the storage itself becomes StoreUnavailable."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
                if code in _UNAVAILABLE:
                    raise StoreUnavailable(_UNAVAILABLE[code]) from exc
            raise

    async def commit(
        self,
        call: call_pb2.Call,
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        owe: PendingRelease | None = None,
        released: bool = False,
    ) -> list[event_pb2.QosEvent]:
        numbered: list[event_pb2.QosEvent] = []
        seq = self._last_seq
        now_us = time.time_ns() // 1000
        data = call.SerializeToString()
        with self._transaction():
            self._db.execute(
                "INSERT INTO calls (name, provider, state, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, data = excluded.data",
                (call.name, call.provider, call.state, data),
            )
            for event in events:
                seq += 1
                stored = event_pb2.QosEvent()
                stored.CopyFrom(event)
                stored.sequence = seq
                self._db.execute(
                    "INSERT INTO events (seq, create_us, data) VALUES (?, ?, ?)",
                    (seq, now_us, stored.SerializeToString()),
                )
                numbered.append(stored)
            if idempotency is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        idempotency.principal,
                        idempotency.request_id,
                        idempotency.method,
                        idempotency.fingerprint,
                        idempotency.call,
                        idempotency.status,
                        now_us,
                    ),
                )
            if owe is not None:
                self._owe(owe, now_us)
            if released:
                self._db.execute("DELETE FROM pending_releases WHERE call = ?", (call.name,))
        self._last_seq = seq
        self._remember(call.name, data)
        return numbered

    def _owe(self, owe: PendingRelease, now_us: int) -> None:
        self._db.execute(
            "INSERT INTO pending_releases (call, provider, attempts, next_us, last_error, seq) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (call) DO UPDATE SET provider = excluded.provider, attempts = excluded.attempts, "
            "next_us = excluded.next_us, last_error = excluded.last_error",
            (owe.call, owe.provider, owe.attempts, owe.next_attempt_us, owe.last_error, now_us),
        )

    async def pending_releases(self) -> list[PendingRelease]:
        rows = self._db.execute(
            "SELECT call, provider, attempts, next_us, last_error FROM pending_releases ORDER BY seq"
        ).fetchall()
        return [PendingRelease(*row) for row in rows]

    async def forget_release(self, call: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM pending_releases WHERE call = ?", (call,))

    # -- link capacities set with UpdateLink ----------------------------------------------
    async def link_capacities(self) -> list[LinkCapacity]:
        rows = self._db.execute("SELECT link, capacity, configured FROM link_capacities ORDER BY link").fetchall()
        return [LinkCapacity(link, int(capacity), int(configured)) for link, capacity, configured in rows]

    async def set_link_capacity(self, capacity: LinkCapacity | None, link: str) -> None:
        with self._transaction():
            if capacity is None:
                self._db.execute("DELETE FROM link_capacities WHERE link = ?", (link,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO link_capacities (link, capacity, configured) VALUES (?, ?, ?)",
                    (link, str(capacity.capacity), str(capacity.configured)),
                )

    async def find_request(self, request_id: str, principal: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            "SELECT method, fingerprint, call, status FROM requests WHERE principal = ? AND request_id = ?",
            (principal, request_id),
        ).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(request_id, principal, row[0], row[1], row[2], bytes(row[3]))

    # -- events ---------------------------------------------------------------------------
    async def events_after(self, sequence: int, limit: int) -> list[event_pb2.QosEvent]:
        rows = self._db.execute(
            "SELECT data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (sequence, limit)
        ).fetchall()
        return [event_pb2.QosEvent.FromString(data) for (data,) in rows]

    async def event_bounds(self) -> EventBounds:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()
        return EventBounds(pruned_through=row[0] if row else 0, last=self._last_seq)

    async def prune_events(self, *, keep_last: int, older_than_us: int) -> int:
        cutoff = max(self._last_seq - keep_last, 0)
        if older_than_us > 0:
            row = self._db.execute("SELECT MAX(seq) FROM events WHERE create_us < ?", (older_than_us,)).fetchone()
            cutoff = max(cutoff, row[0] or 0)
        if older_than_us > 0:
            # request_ids are remembered as long as events are (AIP-155 leaves the window to us).
            with self._transaction():
                self._db.execute("DELETE FROM requests WHERE create_us < ?", (older_than_us,))
        bounds = await self.event_bounds()
        if cutoff <= bounds.pruned_through:
            return 0
        with self._transaction():
            dropped: int = self._db.execute("DELETE FROM events WHERE seq <= ?", (cutoff,)).rowcount
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)", (cutoff,))
        return dropped

    async def close(self) -> None:
        self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()
