"""SQLite storage: one file under the data directory (WAL), or memory when asked.

Writes run inline on the event loop: each is one short transaction (tens of microseconds with
WAL and synchronous=NORMAL), cheaper than a thread hop.
synchronous=NORMAL in WAL mode survives a process crash (SIGKILL) without losing a committed
transaction; only an OS crash or power loss can lose the last few.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from callqos.server.store.base import AddressInUseError, CallPage, EventBounds, IdempotencyRecord, LinePage, Store
from callqos.v1 import call_pb2, event_pb2, line_pb2

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS lines (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, for newest-first listing
    name     TEXT NOT NULL UNIQUE,
    address  TEXT NOT NULL,
    owner    TEXT NOT NULL,
    state    INTEGER NOT NULL,
    data     BLOB NOT NULL                       -- callqos.v1.Line
);
-- At most one open line per address, whatever commits race (callqos.v1.Line.State.STATE_OPEN = 1).
CREATE UNIQUE INDEX IF NOT EXISTS lines_open_address ON lines (address) WHERE state = 1;
"""
# Added to the calls of a file made before lines existed (see _add_line_column). Both additions
# are compatible both ways (a new table, a column with a default), so SCHEMA_VERSION stays.
_CALLS_BY_LINE = "CREATE INDEX IF NOT EXISTS calls_line ON calls (line, seq) WHERE line != ''"
MEMORY = ":memory:"
# Bumped whenever _SCHEMA changes incompatibly; a file of another version is refused, not guessed at.
SCHEMA_VERSION = 1
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
        if not fresh and version != SCHEMA_VERSION:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()
            raise OSError(f"{path} has schema version {version}; this server needs {SCHEMA_VERSION}")
        self._db.executescript(_SCHEMA)
        self._add_line_column()
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_seq: int = row[0] if row else 0

    def _add_line_column(self) -> None:
        """The `line` of each call (its Call.line), for ListCalls' line filter: part of a new
        file's calls table, added to one made before lines existed."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
        if "line" not in columns:
            self._db.execute("ALTER TABLE calls ADD COLUMN line TEXT NOT NULL DEFAULT ''")
        self._db.execute(_CALLS_BY_LINE)

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

    async def list_calls(
        self, *, state: int | None, provider: str | None, limit: int, before: int, line: str | None = None
    ) -> CallPage:
        sql = "SELECT seq, data FROM calls WHERE seq < ?"
        args: list[object] = [before or (1 << 62)]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        if provider is not None:
            sql += " AND provider = ?"
            args.append(provider)
        if line is not None:
            sql += " AND line = ?"
            args.append(line)
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

    async def calls_in_state(self, state: int) -> list[call_pb2.Call]:
        rows = self._db.execute("SELECT data FROM calls WHERE state = ? ORDER BY seq", (state,)).fetchall()
        return [call_pb2.Call.FromString(data) for (data,) in rows]

    # -- lines ----------------------------------------------------------------------------
    async def get_line(self, name: str) -> line_pb2.Line | None:
        row = self._db.execute("SELECT data FROM lines WHERE name = ?", (name,)).fetchone()
        return line_pb2.Line.FromString(row[0]) if row else None

    async def open_line(self, address: str) -> line_pb2.Line | None:
        row = self._db.execute(
            "SELECT data FROM lines WHERE address = ? AND state = ?", (address, line_pb2.Line.State.STATE_OPEN)
        ).fetchone()
        return line_pb2.Line.FromString(row[0]) if row else None

    async def list_lines(
        self, *, state: int | None, address: str | None, owner: str | None, limit: int, before: int
    ) -> LinePage:
        sql = "SELECT seq, data FROM lines WHERE seq < ?"
        args: list[object] = [before or (1 << 62)]
        for column, value in (("state", state), ("address", address), ("owner", owner)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._db.execute(sql, args).fetchall()
        lines = [line_pb2.Line.FromString(data) for _, data in rows[:limit]]
        return LinePage(lines, rows[limit - 1][0] if len(rows) > limit else 0)

    # -- the one write path ---------------------------------------------------------------
    async def commit(
        self,
        call: call_pb2.Call | Sequence[call_pb2.Call],
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        lines: Sequence[line_pb2.Line] = (),
    ) -> list[event_pb2.QosEvent]:
        numbered: list[event_pb2.QosEvent] = []
        seq = self._last_seq
        now_us = time.time_ns() // 1000
        calls = [call] if isinstance(call, call_pb2.Call) else list(call)
        stored = [(each, each.SerializeToString()) for each in calls]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for each, data in stored:
                self._db.execute(
                    "INSERT INTO calls (name, provider, state, line, data) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, data = excluded.data",
                    (each.name, each.provider, each.state, each.line, data),
                )
            for line in lines:
                self._db.execute(
                    "INSERT INTO lines (name, address, owner, state, data) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, data = excluded.data",
                    (line.name, line.address, line.owner, line.state, line.SerializeToString()),
                )
            for event in events:
                seq += 1
                numbered_event = event_pb2.QosEvent()
                numbered_event.CopyFrom(event)
                numbered_event.sequence = seq
                self._db.execute(
                    "INSERT INTO events (seq, create_us, data) VALUES (?, ?, ?)",
                    (seq, now_us, numbered_event.SerializeToString()),
                )
                numbered.append(numbered_event)
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
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as error:
            self._db.execute("ROLLBACK")
            if "lines.address" in str(error):
                raise AddressInUseError(str(error)) from error
            raise
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._last_seq = seq
        for each, data in stored:
            self._remember(each.name, data)
        return numbered

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
            self._db.execute("DELETE FROM requests WHERE create_us < ?", (older_than_us,))
        bounds = await self.event_bounds()
        if cutoff <= bounds.pruned_through:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._db.execute("DELETE FROM events WHERE seq <= ?", (cutoff,)).rowcount
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)", (cutoff,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return dropped

    async def close(self) -> None:
        self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()
