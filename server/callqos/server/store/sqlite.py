"""SQLite storage: one file under the data directory (WAL), or memory when asked.

Writes run on the event loop, cheaper than a thread hop: the commits that are ready in the same
turn of the loop share one short transaction (group commit, `store.group`), each acknowledged
only once it has committed.
synchronous=NORMAL in WAL mode survives a process crash (SIGKILL) without losing a committed
transaction; only an OS crash or power loss can lose the last few.

A write SQLite cannot make (SQLITE_FULL, SQLITE_IOERR, a locked or read-only file) leaves the
transaction rolled back and raises `StoreUnavailable` naming the cause; the connection stays
usable, so writes succeed again once space is freed.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from callqos.server.qos import reserved_rate
from callqos.server.store.base import (
    AddressInUseError,
    CallPage,
    EventBounds,
    IdempotencyRecord,
    LinePage,
    LinkCapacity,
    PendingRelease,
    QuotaExceededError,
    Store,
    StoreUnavailable,
    Usage,
    UsageLimits,
    held_usage,
    lease_deadline_us,
    stored_rate,
)
from callqos.server.store.group import GroupCommitter
from callqos.server.store.paging import newest_first, next_cursor
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.wire import DEFAULT_TENANT

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, for newest-first listing
    name     TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    state    INTEGER NOT NULL,
    data     BLOB NOT NULL,                      -- callqos.v1.Call
    tenant   TEXT NOT NULL DEFAULT 'default',
    reserved_sending   INTEGER NOT NULL DEFAULT 0,  -- bytes/s held while connected (quotas)
    reserved_receiving INTEGER NOT NULL DEFAULT 0,
    line     TEXT NOT NULL DEFAULT '',           -- Call.line: the line an INCOMING call was offered on
    active   INTEGER NOT NULL DEFAULT 0,         -- 1: counts toward its tenant's active calls (held_usage)
    lease_expire_us INTEGER NOT NULL DEFAULT 0   -- when its live lease ends (lease_deadline_us); 0: none
);
CREATE INDEX IF NOT EXISTS calls_state ON calls (state, seq);
CREATE INDEX IF NOT EXISTS calls_tenant ON calls (tenant, seq);
CREATE INDEX IF NOT EXISTS calls_line ON calls (line, seq) WHERE line != '';
CREATE INDEX IF NOT EXISTS calls_active ON calls (tenant, active, reserved_sending, reserved_receiving);
CREATE INDEX IF NOT EXISTS calls_lease ON calls (lease_expire_us) WHERE lease_expire_us > 0;
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    create_us    INTEGER NOT NULL,
    data         BLOB NOT NULL,                  -- callqos.v1.QosEvent
    tenant       TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE IF NOT EXISTS requests (            -- AIP-155 idempotency records
    tenant      TEXT NOT NULL,
    principal   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    method      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    call        TEXT NOT NULL,                   -- the call, or line, the request created or changed
    status      BLOB NOT NULL,
    create_us   INTEGER NOT NULL,
    PRIMARY KEY (tenant, principal, request_id)
);
CREATE INDEX IF NOT EXISTS requests_age ON requests (create_us);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, for newest-first listing
    name     TEXT NOT NULL UNIQUE,
    address  TEXT NOT NULL,
    owner    TEXT NOT NULL,
    state    INTEGER NOT NULL,
    data     BLOB NOT NULL,                      -- callqos.v1.Line
    tenant   TEXT NOT NULL DEFAULT 'default'
);
-- At most one open line of a tenant per address, whatever commits race
-- (callqos.v1.Line.State.STATE_OPEN = 1).
CREATE UNIQUE INDEX IF NOT EXISTS lines_open_address ON lines (tenant, address) WHERE state = 1;
CREATE INDEX IF NOT EXISTS lines_tenant ON lines (tenant, seq);
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
MEMORY = ":memory:"
# Bumped whenever _SCHEMA changes. A new file gets _SCHEMA as it is; a file of an older version
# is brought forward by the steps in _MIGRATIONS, one version at a time, each step in one
# transaction. A step is self-contained: it names its own DDL (never _SCHEMA, which keeps
# moving) so that it means the same thing whatever steps come after it. A newer file is refused,
# not guessed at.
SCHEMA_VERSION = 5
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
_LINE_OPEN = line_pb2.Line.State.STATE_OPEN


def _nothing() -> None:
    """What a write that changes none of the store's memory does once committed."""


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run `script` statement by statement: unlike `executescript`, this stays inside the
    transaction the caller began (Python 3.11's executescript commits first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Version 1 → 2: tenants (issue #13). Every call, event and request_id so far belongs to the
    default tenant; each call gets the quota columns of what it holds (connected: its grant).
    A version-1 file may already have the `lines` table and `calls.line` column that incoming
    calls (issue #10) added without a version of their own; this step leaves them be, and
    step 3 makes them whole."""
    _script(
        db,
        """
        ALTER TABLE calls ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
        ALTER TABLE calls ADD COLUMN reserved_sending INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE calls ADD COLUMN reserved_receiving INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE events ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
        ALTER TABLE requests RENAME TO requests_1;
        DROP INDEX IF EXISTS requests_age;
        """,
    )
    connected = call_pb2.Call.State.STATE_CONNECTED
    for seq, data in db.execute("SELECT seq, data FROM calls").fetchall():
        call = call_pb2.Call.FromString(data)
        call.tenant = DEFAULT_TENANT
        held = call.state == connected
        db.execute(
            "UPDATE calls SET data = ?, reserved_sending = ?, reserved_receiving = ? WHERE seq = ?",
            (
                call.SerializeToString(),
                stored_rate(reserved_rate(call.granted_qos.sending)) if held else 0,
                stored_rate(reserved_rate(call.granted_qos.receiving)) if held else 0,
                seq,
            ),
        )
    for seq, data in db.execute("SELECT seq, data FROM events").fetchall():
        event = event_pb2.QosEvent.FromString(data)
        event.tenant = DEFAULT_TENANT
        db.execute("UPDATE events SET data = ? WHERE seq = ?", (event.SerializeToString(), seq))
    _script(
        db,
        """
        CREATE TABLE requests (
            tenant      TEXT NOT NULL,
            principal   TEXT NOT NULL,
            request_id  TEXT NOT NULL,
            method      TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            call        TEXT NOT NULL,
            status      BLOB NOT NULL,
            create_us   INTEGER NOT NULL,
            PRIMARY KEY (tenant, principal, request_id)
        );
        CREATE INDEX requests_age ON requests (create_us);
        CREATE INDEX IF NOT EXISTS calls_tenant ON calls (tenant, seq);
        CREATE INDEX IF NOT EXISTS calls_usage ON calls (tenant, state, reserved_sending, reserved_receiving);
        """,
    )
    db.execute(
        "INSERT INTO requests SELECT 'default', principal, request_id, method, fingerprint, call, status, create_us "
        "FROM requests_1"
    )
    db.execute("DROP TABLE requests_1")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Version 2 → 3: lines and incoming calls (issue #10) under tenants. Lines belong to a
    tenant (the default one for lines opened before tenants: the `lines` table a version-1 file
    may already have gets a tenant column), and an address is unique among the OPEN lines of one
    tenant. Calls get `line` (for ListCalls' line filter) if they lack it, and `active`: a call
    counts toward its tenant's quotas while connected, except the answering leg of a call between
    two applications, whose one reservation its caller's leg holds (`held_usage`)."""
    if "line" not in _columns(db, "calls"):
        db.execute("ALTER TABLE calls ADD COLUMN line TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE calls ADD COLUMN active INTEGER NOT NULL DEFAULT 0")
    lines_exist = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lines'").fetchone()
    if lines_exist and "tenant" not in _columns(db, "lines"):
        db.execute("ALTER TABLE lines ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'")
        for seq, data in db.execute("SELECT seq, data FROM lines").fetchall():
            line = line_pb2.Line.FromString(data)
            line.tenant = DEFAULT_TENANT
            db.execute("UPDATE lines SET data = ? WHERE seq = ?", (line.SerializeToString(), seq))
    _script(
        db,
        """
        CREATE TABLE IF NOT EXISTS lines (
            seq      INTEGER PRIMARY KEY AUTOINCREMENT,
            name     TEXT NOT NULL UNIQUE,
            address  TEXT NOT NULL,
            owner    TEXT NOT NULL,
            state    INTEGER NOT NULL,
            data     BLOB NOT NULL,
            tenant   TEXT NOT NULL DEFAULT 'default'
        );
        DROP INDEX IF EXISTS lines_open_address;
        CREATE UNIQUE INDEX lines_open_address ON lines (tenant, address) WHERE state = 1;
        CREATE INDEX IF NOT EXISTS lines_tenant ON lines (tenant, seq);
        DROP INDEX IF EXISTS calls_usage;
        CREATE INDEX IF NOT EXISTS calls_line ON calls (line, seq) WHERE line != '';
        CREATE INDEX IF NOT EXISTS calls_active ON calls (tenant, active, reserved_sending, reserved_receiving);
        """,
    )
    for seq, data in db.execute("SELECT seq, data FROM calls").fetchall():
        call = call_pb2.Call.FromString(data)
        held = held_usage(call)
        db.execute(
            "UPDATE calls SET line = ?, active = ?, reserved_sending = ?, reserved_receiving = ? WHERE seq = ?",
            (call.line, held.active_calls, stored_rate(held.sending), stored_rate(held.receiving), seq),
        )


def _migrate_to_4(db: sqlite3.Connection) -> None:
    """Version 3 → 4: the admission ledger (issue #11). Link capacities set with UpdateLink are
    kept (with the configured capacity each overrode, LINK-5), and releases owed to providers are
    recorded until they confirm them (CALL-6). Both tables start empty: nothing was kept or owed
    before."""
    _script(
        db,
        """
        CREATE TABLE link_capacities (
            link       TEXT PRIMARY KEY,
            capacity   TEXT NOT NULL,
            configured TEXT NOT NULL
        );
        CREATE TABLE pending_releases (
            call       TEXT PRIMARY KEY,
            provider   TEXT NOT NULL,
            attempts   INTEGER NOT NULL,
            next_us    INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            seq        INTEGER NOT NULL
        );
        """,
    )


def _migrate_to_5(db: sqlite3.Connection) -> None:
    """Version 4 → 5: call leases (issue #14). Each call gets the column the lease timer reads,
    from the call itself (no call of an earlier version has a lease, so it stays 0)."""
    _script(
        db,
        """
        ALTER TABLE calls ADD COLUMN lease_expire_us INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX IF NOT EXISTS calls_lease ON calls (lease_expire_us) WHERE lease_expire_us > 0;
        """,
    )
    for seq, data in db.execute("SELECT seq, data FROM calls").fetchall():
        deadline = lease_deadline_us(call_pb2.Call.FromString(data))
        if deadline:
            db.execute("UPDATE calls SET lease_expire_us = ? WHERE seq = ?", (deadline, seq))


# Version N → the step that makes a version N-1 file version N.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
}


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
        if not fresh and not (0 < version <= SCHEMA_VERSION):
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()
            raise OSError(f"{path} has schema version {version}; this server needs {SCHEMA_VERSION}")
        if fresh:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        while version and version < SCHEMA_VERSION:
            version += 1
            self._db.execute("BEGIN IMMEDIATE")
            try:
                _MIGRATIONS[version](self._db)
                self._db.execute(f"PRAGMA user_version = {version}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last_seq: int = row[0] if row else 0  # the newest event committed
        self._next_seq = self._last_seq  # the newest event numbered in the group being written
        # The open lines, by (tenant, address) → (name, serialized line): what `open_line` answers
        # from. Safe for the same reason as the call cache: every write passes through `commit`.
        self._open_lines: dict[tuple[str, str], tuple[str, bytes]] = {
            (tenant, address): (name, data)
            for tenant, address, name, data in self._db.execute(
                "SELECT tenant, address, name, data FROM lines WHERE state = ?", (_LINE_OPEN,)
            )
        }
        # Commits ready together share one transaction (store/group.py).
        self._committer = GroupCommitter(self._db, self._forget_group)

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
        self,
        *,
        tenant: str,
        state: int | None,
        provider: str | None,
        limit: int,
        before: int,
        line: str | None = None,
    ) -> CallPage:
        filters = {"state": state, "provider": provider, "line": line}
        sql, args = newest_first("calls", tenant, filters, limit=limit, before=before, mark="?")
        rows = self._db.execute(sql, args).fetchall()
        return CallPage([call_pb2.Call.FromString(data) for _, data in rows[:limit]], next_cursor(rows, limit))

    async def usage(self, tenant: str) -> Usage:
        return self._usage(tenant)

    def _usage(self, tenant: str) -> Usage:
        # Summed in two 32-bit halves, so that no SQLite SUM overflows int64 however large the
        # rates (each stored saturated at the int64 maximum), and the total stays exact.
        row = self._db.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(reserved_sending >> 32), 0), COALESCE(SUM(reserved_sending & 4294967295), 0), "
            "COALESCE(SUM(reserved_receiving >> 32), 0), COALESCE(SUM(reserved_receiving & 4294967295), 0) "
            "FROM calls WHERE tenant = ? AND active = 1",
            (tenant,),
        ).fetchone()
        return Usage(active_calls=row[0], sending=(row[1] << 32) + row[2], receiving=(row[3] << 32) + row[4])

    async def connected_calls(self) -> list[call_pb2.Call]:
        rows = self._db.execute(
            "SELECT data FROM calls WHERE state = ? ORDER BY seq",
            (call_pb2.Call.State.STATE_CONNECTED,),
        ).fetchall()
        return [call_pb2.Call.FromString(data) for (data,) in rows]

    async def calls_in_state(self, state: int) -> list[call_pb2.Call]:
        rows = self._db.execute("SELECT data FROM calls WHERE state = ? ORDER BY seq", (state,)).fetchall()
        return [call_pb2.Call.FromString(data) for (data,) in rows]

    async def next_lease_expiry(self) -> int | None:
        row = self._db.execute("SELECT MIN(lease_expire_us) FROM calls WHERE lease_expire_us > 0").fetchone()
        return int(row[0]) if row[0] is not None else None

    async def expired_leases(self, now_us: int, limit: int) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM calls WHERE lease_expire_us > 0 AND lease_expire_us <= ? "
            "ORDER BY lease_expire_us LIMIT ?",
            (now_us, limit),
        ).fetchall()
        return [name for (name,) in rows]

    # -- lines ----------------------------------------------------------------------------
    async def get_line(self, name: str) -> line_pb2.Line | None:
        row = self._db.execute("SELECT data FROM lines WHERE name = ?", (name,)).fetchone()
        return line_pb2.Line.FromString(row[0]) if row else None

    async def open_line(self, address: str, tenant: str) -> line_pb2.Line | None:
        # From memory: every CreateCall asks (is its destination an open line?), and a query per
        # call was a twentieth of the server's CPU making calls (README "Performance").
        opened = self._open_lines.get((tenant, address))
        return line_pb2.Line.FromString(opened[1]) if opened else None

    def _line_committed(self, line: line_pb2.Line) -> None:
        """Keep `_open_lines` in step with a line just committed."""
        key = (line.tenant or DEFAULT_TENANT, line.address)
        if line.state == _LINE_OPEN:
            self._open_lines[key] = (line.name, line.SerializeToString())
        elif self._open_lines.get(key, ("",))[0] == line.name:
            del self._open_lines[key]

    async def list_lines(
        self,
        *,
        tenant: str,
        state: int | None,
        address: str | None,
        owner: str | None,
        limit: int,
        before: int,
    ) -> LinePage:
        filters = {"state": state, "address": address, "owner": owner}
        sql, args = newest_first("lines", tenant, filters, limit=limit, before=before, mark="?")
        rows = self._db.execute(sql, args).fetchall()
        return LinePage([line_pb2.Line.FromString(data) for _, data in rows[:limit]], next_cursor(rows, limit))

    # -- writes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, aborted (`_abort`) on any failure."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._abort(exc)
            raise

    def _abort(self, exc: BaseException) -> None:
        """Roll back the transaction `exc` failed (if SQLite has not already done so: after
        SQLITE_FULL it has, and a second ROLLBACK would hide the cause); a failure of the storage
        itself is raised as StoreUnavailable."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        unavailable = self._unavailable(exc)
        if unavailable is not exc:
            raise unavailable from exc

    @staticmethod
    def _unavailable(exc: BaseException) -> BaseException:
        """`exc` as StoreUnavailable when it is a failure of the storage itself (a full disk, an
        I/O error, a locked or read-only file); else `exc`."""
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
            if code in _UNAVAILABLE:
                unavailable = StoreUnavailable(_UNAVAILABLE[code])
                unavailable.__cause__ = exc
                return unavailable
        return exc

    async def commit(
        self,
        call: call_pb2.Call | Sequence[call_pb2.Call],
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None = None,
        *,
        lines: Sequence[line_pb2.Line] = (),
        limits: UsageLimits | None = None,
        owe: PendingRelease | None = None,
        released: bool = False,
    ) -> list[event_pb2.QosEvent]:
        calls = [call] if isinstance(call, call_pb2.Call) else list(call)
        stored = [(each, each.SerializeToString()) for each in calls]

        def write() -> tuple[list[event_pb2.QosEvent], Callable[[], None]]:
            numbered, seq = self._write(stored, events, idempotency, lines, limits, owe, released)
            self._next_seq = seq

            def committed() -> None:
                self._last_seq = seq
                for each, data in stored:
                    self._remember(each.name, data)
                for line in lines:
                    self._line_committed(line)

            return numbered, committed

        return await self._committer.submit(write)

    def _forget_group(self, error: BaseException) -> BaseException:
        """A group's transaction was rolled back (`error` ended it): the sequence numbers its
        writes took are free again. Returns the error its commits get when the whole group
        failed (a failure of the storage as StoreUnavailable)."""
        self._next_seq = self._last_seq
        return self._unavailable(error)

    def _write(
        self,
        stored: Sequence[tuple[call_pb2.Call, bytes]],
        events: Sequence[event_pb2.QosEvent],
        idempotency: IdempotencyRecord | None,
        lines: Sequence[line_pb2.Line],
        limits: UsageLimits | None,
        owe: PendingRelease | None,
        released: bool,
    ) -> tuple[list[event_pb2.QosEvent], int]:
        """One commit's statements, inside the group's transaction (`store.group`): the events
        numbered after those of the writes before it in the group, and the last number taken."""
        numbered: list[event_pb2.QosEvent] = []
        seq = self._next_seq
        now_us = time.time_ns() // 1000
        try:
            before = self._usage(limits.tenant) if limits is not None else None
            for each, data in stored:
                held = held_usage(each)
                self._db.execute(
                    "INSERT INTO calls (name, provider, state, data, tenant, reserved_sending, reserved_receiving, "
                    "line, active, lease_expire_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO "
                    "UPDATE SET state = excluded.state, data = excluded.data, "
                    "reserved_sending = excluded.reserved_sending, reserved_receiving = excluded.reserved_receiving, "
                    "active = excluded.active, lease_expire_us = excluded.lease_expire_us",
                    (
                        each.name,
                        each.provider,
                        each.state,
                        data,
                        each.tenant or DEFAULT_TENANT,
                        stored_rate(held.sending),
                        stored_rate(held.receiving),
                        each.line,
                        held.active_calls,
                        lease_deadline_us(each),
                    ),
                )
            if limits is not None and before is not None:
                after = self._usage(limits.tenant)
                over = limits.exceeded(after, before)
                if over:
                    raise QuotaExceededError(limits, over, after)
            for line in lines:
                self._db.execute(
                    "INSERT INTO lines (name, address, owner, state, data, tenant) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, data = excluded.data",
                    (
                        line.name,
                        line.address,
                        line.owner,
                        line.state,
                        line.SerializeToString(),
                        line.tenant or DEFAULT_TENANT,
                    ),
                )
            for event in events:
                seq += 1
                numbered_event = event_pb2.QosEvent()
                numbered_event.CopyFrom(event)
                numbered_event.sequence = seq
                self._db.execute(
                    "INSERT INTO events (seq, create_us, data, tenant) VALUES (?, ?, ?, ?)",
                    (seq, now_us, numbered_event.SerializeToString(), numbered_event.tenant or DEFAULT_TENANT),
                )
                numbered.append(numbered_event)
            if idempotency is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        idempotency.tenant,
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
            if released and stored:
                names = [each.name for each, _ in stored]
                self._db.execute(f"DELETE FROM pending_releases WHERE call IN ({', '.join('?' * len(names))})", names)
        except sqlite3.IntegrityError as error:
            if "lines.address" in str(error):
                raise AddressInUseError(str(error)) from error
            raise
        except sqlite3.Error as error:
            raise self._unavailable(error)  # noqa: B904 (its cause is set) — a storage failure is its whole group's
        return numbered, seq

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
        await self._submit(lambda: self._db.execute("DELETE FROM pending_releases WHERE call = ?", (call,)))

    # -- link capacities set with UpdateLink ----------------------------------------------
    async def link_capacities(self) -> list[LinkCapacity]:
        rows = self._db.execute("SELECT link, capacity, configured FROM link_capacities ORDER BY link").fetchall()
        return [LinkCapacity(link, int(capacity), int(configured)) for link, capacity, configured in rows]

    async def set_link_capacity(self, capacity: LinkCapacity | None, link: str) -> None:
        if capacity is None:
            await self._submit(lambda: self._db.execute("DELETE FROM link_capacities WHERE link = ?", (link,)))
        else:
            await self._submit(
                lambda: self._db.execute(
                    "INSERT OR REPLACE INTO link_capacities (link, capacity, configured) VALUES (?, ?, ?)",
                    (link, str(capacity.capacity), str(capacity.configured)),
                )
            )

    async def _submit(self, statement: Callable[[], object]) -> None:
        """A write other than `commit`'s, in turn with the commits (store.group): so that it is
        never written before a commit made earlier (an owed release forgotten before the commit
        that owed it)."""

        def write() -> tuple[None, Callable[[], None]]:
            try:
                statement()
            except sqlite3.Error as error:
                raise self._unavailable(error)  # noqa: B904 (its cause is set)
            return None, _nothing

        await self._committer.submit(write)

    async def find_request(
        self, request_id: str, principal: str, tenant: str = DEFAULT_TENANT
    ) -> IdempotencyRecord | None:
        row = self._db.execute(
            "SELECT method, fingerprint, call, status FROM requests "
            "WHERE tenant = ? AND principal = ? AND request_id = ?",
            (tenant, principal, request_id),
        ).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(request_id, principal, row[0], row[1], row[2], bytes(row[3]), tenant)

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
