"""PostgreSQL storage, shared by several server processes (replicas) on one database.

The same contract as SQLite (store.base), with what several processes need on top:
- One transaction per commit, on a pooled connection (no group commit: store.group is SQLite's,
  see app.open_store; concurrent commits here run on connections of their own, and PostgreSQL
  shares a WAL flush among them): the calls (and lines) first, then, with `limits`, the tenant's
  quota checked against every replica's committed calls under a transaction-level advisory lock
  of that tenant (two replicas admitting for one tenant take turns, so together they cannot
  overshoot it); then the idempotency record; then, as the last
  statement, the events numbered from the one `event_log` row (its lock orders the commits that
  carry events, so sequence order is commit order across replicas: see store.pg_schema), and a
  NOTIFY that PostgreSQL delivers at commit to every replica listening (`changes()`; the
  committing replica skips its own).
- No cache of calls: another replica may change any call at any time.
- Retention is pruned by the leading replica only (`leader`); event ages are the database's
  clock, one clock for every replica.
- The releases owed to providers (`owe`, `released`) are written in the commit's transaction, and
  the capacities kept from UpdateLink in their own, as in SQLite; every replica reads them, the
  leading one retries the releases (`ledger`).
- `shared_locks()`, `leadership()` and the commit listener use dedicated connections
  (store.pg_coordination); `shared_ledger()` the pool (store.pg_ledger).
- A failure to reach the database (a connection refused or lost, the pool exhausted for
  `POOL_WAIT_SECONDS`) is `StoreUnavailable`, with nothing written; the pool reconnects by itself.
The DSN (`database_url`) is never logged with its password (`pg_coordination.shown`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from callqos.server.providers.base import SharedLedger
from callqos.server.store.base import (
    AddressInUseError,
    CallPage,
    EventBounds,
    IdempotencyRecord,
    Leadership,
    LinePage,
    LinkCapacity,
    PendingRelease,
    QuotaExceededError,
    SharedLocks,
    Store,
    StoreUnavailable,
    Usage,
    UsageLimits,
    held_usage,
    lease_deadline_us,
    stored_rate,
)
from callqos.server.store.paging import newest_first, next_cursor
from callqos.server.store.pg_coordination import (
    CHANNEL,
    TENANT_LOCK,
    AdvisoryKeyLocks,
    AdvisoryLeader,
    CommitListener,
    Connection,
    ProviderListMark,
    connection_info,
    shown,
    unavailable,
)
from callqos.server.store.pg_ledger import PostgresLedger
from callqos.server.store.pg_schema import SchemaError, migrate
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.wire import DEFAULT_TENANT

log = logging.getLogger(__name__)

# How long a request waits for a pooled connection before it fails with StoreUnavailable.
POOL_WAIT_SECONDS = 10.0
_NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
_UPSERT_CALL = (
    "INSERT INTO calls (name, provider, state, data, tenant, reserved_sending, reserved_receiving, line, active, "
    "lease_expire_us) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
    "state = excluded.state, data = excluded.data, reserved_sending = excluded.reserved_sending, "
    "reserved_receiving = excluded.reserved_receiving, active = excluded.active, "
    "lease_expire_us = excluded.lease_expire_us"
)
_UPSERT_LINE = (
    "INSERT INTO lines (name, address, owner, state, data, tenant) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, data = excluded.data"
)
_OWE = (
    "INSERT INTO pending_releases (call, provider, attempts, next_us, last_error) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (call) DO UPDATE SET provider = excluded.provider, attempts = excluded.attempts, "
    "next_us = excluded.next_us, last_error = excluded.last_error"
)
# The events of one commit, numbered from event_log.last in the statement that inserts them.
_INSERT_EVENTS = (
    "WITH head AS (UPDATE event_log SET last = last + %(n)s WHERE id = 1 RETURNING last) "
    "INSERT INTO events (seq, create_us, tenant, data) "
    f"SELECT head.last - %(n)s + e.ord, {_NOW_US}, e.tenant, e.data "
    "FROM head, unnest(%(tenants)s::text[], %(datas)s::bytea[]) WITH ORDINALITY AS e(tenant, data, ord) "
    "RETURNING seq"
)


class PostgresStore(Store):
    shared = True

    def __init__(
        self,
        dsn: str,
        pool: AsyncConnectionPool[Connection],
        listener: CommitListener,
        locks: AdvisoryKeyLocks,
        leader: AdvisoryLeader,
        provider_list: ProviderListMark,
    ) -> None:
        self.dsn = dsn
        self._pool = pool
        self._listener = listener
        self._locks = locks
        self._leader = leader
        self._provider_list = provider_list
        self._ledger = PostgresLedger(pool)

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 10, poll_seconds: float = 1.0) -> PostgresStore:
        """Connect, migrate the schema forward (refusing a newer one), open the pool and start
        listening. StoreUnavailable when the database cannot be reached; SchemaError when its
        schema is newer than this code's."""
        conninfo = connection_info(dsn)
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                found, version = await migrate(conn)
        except psycopg.Error as exc:
            raise unavailable(exc) from exc
        if found != version:
            log.info("migrated the database schema", extra={"from_version": found, "to_version": version})
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=POOL_WAIT_SECONDS,
            name="callqos",
        )
        try:
            await pool.open(wait=True, timeout=POOL_WAIT_SECONDS)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(f"the database cannot be reached: {exc}") from exc
        listener = CommitListener(conninfo, poll_seconds)
        listener.start()
        log.info("using PostgreSQL", extra={"database": shown(dsn), "schema_version": version})
        marks = AdvisoryKeyLocks(conninfo), AdvisoryLeader(conninfo), ProviderListMark(conninfo)
        return cls(dsn, pool, listener, *marks)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise unavailable(exc) from exc

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        async with self._connection() as conn:
            return await (await conn.execute(sql.encode(), params)).fetchall()

    # -- calls ----------------------------------------------------------------------------
    async def get_call(self, name: str) -> call_pb2.Call | None:
        rows = await self._rows("SELECT data FROM calls WHERE name = %s", (name,))
        return call_pb2.Call.FromString(_bytes(rows[0][0])) if rows else None

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
        sql, args = newest_first("calls", tenant, filters, limit=limit, before=before, mark="%s")
        rows = await self._rows(sql, args)
        return CallPage([call_pb2.Call.FromString(_bytes(data)) for _, data in rows[:limit]], next_cursor(rows, limit))

    async def usage(self, tenant: str) -> Usage:
        async with self._connection() as conn:
            return await _usage(conn, tenant)

    async def connected_calls(self) -> list[call_pb2.Call]:
        return await self.calls_in_state(call_pb2.Call.State.STATE_CONNECTED)

    async def calls_in_state(self, state: int) -> list[call_pb2.Call]:
        rows = await self._rows("SELECT data FROM calls WHERE state = %s ORDER BY seq", (state,))
        return [call_pb2.Call.FromString(_bytes(data)) for (data,) in rows]

    async def next_lease_expiry(self) -> int | None:
        rows = await self._rows("SELECT min(lease_expire_us) FROM calls WHERE lease_expire_us > 0")
        return _int(rows[0][0]) if rows[0][0] is not None else None

    async def expired_leases(self, now_us: int, limit: int) -> list[str]:
        rows = await self._rows(
            "SELECT name FROM calls WHERE lease_expire_us > 0 AND lease_expire_us <= %s "
            "ORDER BY lease_expire_us LIMIT %s",
            (now_us, limit),
        )
        return [str(name) for (name,) in rows]

    # -- lines ----------------------------------------------------------------------------
    async def get_line(self, name: str) -> line_pb2.Line | None:
        rows = await self._rows("SELECT data FROM lines WHERE name = %s", (name,))
        return line_pb2.Line.FromString(_bytes(rows[0][0])) if rows else None

    async def open_line(self, address: str, tenant: str) -> line_pb2.Line | None:
        rows = await self._rows(
            "SELECT data FROM lines WHERE tenant = %s AND address = %s AND state = %s",
            (tenant, address, line_pb2.Line.State.STATE_OPEN),
        )
        return line_pb2.Line.FromString(_bytes(rows[0][0])) if rows else None

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
        sql, args = newest_first("lines", tenant, filters, limit=limit, before=before, mark="%s")
        rows = await self._rows(sql, args)
        return LinePage([line_pb2.Line.FromString(_bytes(data)) for _, data in rows[:limit]], next_cursor(rows, limit))

    # -- the one write path ---------------------------------------------------------------
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
        unnumbered = []
        for event in events:
            copy = event_pb2.QosEvent()
            copy.CopyFrom(event)
            copy.sequence = 0  # the row's seq is the sequence
            unnumbered.append(copy)
        try:
            async with self._connection() as conn, conn.transaction():
                before = None
                if limits is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TENANT_LOCK, limits.tenant))
                    before = await _usage(conn, limits.tenant)
                if calls:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(_UPSERT_CALL.encode(), [_call_row(each) for each in calls])
                if limits is not None and before is not None:
                    after = await _usage(conn, limits.tenant)
                    over = limits.exceeded(after, before)
                    if over:
                        raise QuotaExceededError(limits, over, after)
                for line in lines:
                    await conn.execute(
                        _UPSERT_LINE.encode(),
                        (
                            line.name,
                            line.address,
                            line.owner,
                            line.state,
                            line.SerializeToString(),
                            line.tenant or DEFAULT_TENANT,
                        ),
                    )
                if idempotency is not None:
                    await conn.execute(
                        "INSERT INTO requests VALUES (%s, %s, %s, %s, %s, %s, %s, " + _NOW_US + ") "
                        "ON CONFLICT (tenant, principal, request_id) DO UPDATE SET method = excluded.method, "
                        "fingerprint = excluded.fingerprint, call = excluded.call, status = excluded.status, "
                        "create_us = excluded.create_us",
                        (
                            idempotency.tenant,
                            idempotency.principal,
                            idempotency.request_id,
                            idempotency.method,
                            idempotency.fingerprint,
                            idempotency.call,
                            idempotency.status,
                        ),
                    )
                if owe is not None:
                    await conn.execute(
                        _OWE.encode(), (owe.call, owe.provider, owe.attempts, owe.next_attempt_us, owe.last_error)
                    )
                if released and calls:
                    await conn.execute(
                        "DELETE FROM pending_releases WHERE call = ANY(%s)", ([each.name for each in calls],)
                    )
                first = 0
                if unnumbered:
                    # Last: the event_log row stays locked from here to COMMIT, and every other
                    # commit with events waits for it (see the module docstring).
                    cursor = await conn.execute(
                        _INSERT_EVENTS.encode(),
                        {
                            "n": len(unnumbered),
                            "tenants": [event.tenant or DEFAULT_TENANT for event in unnumbered],
                            "datas": [event.SerializeToString() for event in unnumbered],
                        },
                    )
                    first = min(_int(row[0]) for row in await cursor.fetchall())
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._listener.instance))
        except pg_errors.UniqueViolation as error:
            if error.diag.constraint_name == "lines_open_address":
                raise AddressInUseError(str(error)) from error
            raise
        numbered = []
        for index, event in enumerate(events):
            copy = event_pb2.QosEvent()
            copy.CopyFrom(event)
            copy.sequence = first + index
            numbered.append(copy)
        return numbered

    async def pending_releases(self) -> list[PendingRelease]:
        rows = await self._rows(
            "SELECT call, provider, attempts, next_us, last_error FROM pending_releases ORDER BY seq"
        )
        return [
            PendingRelease(str(call), str(provider), _int(attempts), _int(next_us), str(error))
            for call, provider, attempts, next_us, error in rows
        ]

    async def forget_release(self, call: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM pending_releases WHERE call = %s", (call,))

    # -- link capacities set with UpdateLink ----------------------------------------------
    async def link_capacities(self) -> list[LinkCapacity]:
        rows = await self._rows("SELECT link, capacity, configured FROM link_capacities ORDER BY link")
        return [LinkCapacity(str(link), _int(capacity), _int(configured)) for link, capacity, configured in rows]

    async def set_link_capacity(self, capacity: LinkCapacity | None, link: str) -> None:
        async with self._connection() as conn:
            if capacity is None:
                await conn.execute("DELETE FROM link_capacities WHERE link = %s", (link,))
            else:
                await conn.execute(
                    "INSERT INTO link_capacities (link, capacity, configured) VALUES (%s, %s, %s) "
                    "ON CONFLICT (link) DO UPDATE SET capacity = excluded.capacity, configured = excluded.configured",
                    (link, capacity.capacity, capacity.configured),
                )

    async def find_request(
        self, request_id: str, principal: str, tenant: str = DEFAULT_TENANT
    ) -> IdempotencyRecord | None:
        rows = await self._rows(
            "SELECT method, fingerprint, call, status FROM requests "
            "WHERE tenant = %s AND principal = %s AND request_id = %s",
            (tenant, principal, request_id),
        )
        if not rows:
            return None
        method, fingerprint, call, status = rows[0]
        return IdempotencyRecord(
            request_id, principal, str(method), str(fingerprint), str(call), _bytes(status), tenant
        )

    # -- events ---------------------------------------------------------------------------
    async def events_after(self, sequence: int, limit: int) -> list[event_pb2.QosEvent]:
        rows = await self._rows("SELECT seq, data FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (sequence, limit))
        events = []
        for seq, data in rows:
            event = event_pb2.QosEvent.FromString(_bytes(data))
            event.sequence = _int(seq)
            events.append(event)
        return events

    async def event_bounds(self) -> EventBounds:
        rows = await self._rows("SELECT pruned_through, last FROM event_log WHERE id = 1")
        return EventBounds(pruned_through=_int(rows[0][0]), last=_int(rows[0][1]))

    async def prune_events(self, *, keep_last: int, older_than_us: int) -> int:
        async with self._connection() as conn, conn.transaction():
            row = await (await conn.execute("SELECT last, pruned_through FROM event_log WHERE id = 1")).fetchone()
            assert row is not None
            last, pruned = _int(row[0]), _int(row[1])
            cutoff = max(last - keep_last, 0)
            if older_than_us > 0:
                aged = await (
                    await conn.execute("SELECT max(seq) FROM events WHERE create_us < %s", (older_than_us,))
                ).fetchone()
                cutoff = max(cutoff, _int(aged[0]) if aged and aged[0] is not None else 0)
                # request_ids are remembered as long as events are (AIP-155 leaves the window to us).
                await conn.execute("DELETE FROM requests WHERE create_us < %s", (older_than_us,))
            if cutoff <= pruned:
                return 0
            dropped = await conn.execute("DELETE FROM events WHERE seq <= %s", (cutoff,))
            await conn.execute(
                "UPDATE event_log SET pruned_through = greatest(pruned_through, %s) WHERE id = 1", (cutoff,)
            )
            return dropped.rowcount

    # -- several replicas -----------------------------------------------------------------
    def shared_locks(self) -> SharedLocks:
        return self._locks

    def shared_ledger(self) -> SharedLedger:
        return self._ledger

    def leadership(self) -> Leadership:
        return self._leader

    async def host_providers(self, ids: Sequence[str]) -> bool:
        return not await self._provider_list.hold(ids)

    async def changes(self) -> AsyncIterator[None]:
        async for _ in self._listener.changes():
            yield

    async def check(self) -> None:
        await self._rows("SELECT 1")
        await self._provider_list.keep()  # after a database restart, say again which providers (REPL-5)

    async def close(self) -> None:
        await self._listener.close()
        await self._leader.close()
        await self._provider_list.close()
        await self._locks.close()
        await self._pool.close()


async def _usage(conn: Connection, tenant: str) -> Usage:
    row = await (
        await conn.execute(
            "SELECT count(*), coalesce(sum(reserved_sending), 0), coalesce(sum(reserved_receiving), 0) "
            "FROM calls WHERE tenant = %s AND active",
            (tenant,),
        )
    ).fetchone()
    assert row is not None
    return Usage(active_calls=_int(row[0]), sending=_int(row[1]), receiving=_int(row[2]))


def _call_row(call: call_pb2.Call) -> tuple[object, ...]:
    held = held_usage(call)
    return (
        call.name,
        call.provider,
        call.state,
        call.SerializeToString(),
        call.tenant or DEFAULT_TENANT,
        stored_rate(held.sending),
        stored_rate(held.receiving),
        call.line,
        bool(held.active_calls),
        lease_deadline_us(call),
    )


def _int(value: object) -> int:
    """A column PostgreSQL returns as int or Decimal (count, sum, numeric), as an int."""
    assert isinstance(value, int | Decimal), value
    return int(value)


def _bytes(value: object) -> bytes:
    """A bytea column (bytes, or a memoryview when read in binary)."""
    assert isinstance(value, bytes | memoryview), type(value)
    return bytes(value)


__all__ = ["PostgresStore", "SchemaError"]
