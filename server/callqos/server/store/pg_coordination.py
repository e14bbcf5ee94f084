"""How replicas on one PostgreSQL database coordinate: connection settings and the DSN shown in
logs, key locks and the leader (session advisory locks on dedicated connections), and the
listener that hears other replicas' commits (LISTEN/NOTIFY).

Session advisory locks live as long as the connection that took them: a replica killed with
SIGKILL loses its connections, and PostgreSQL releases its locks, so another replica takes the
lead (or a waiting key) at its next try. They are taken on dedicated connections, never on the
pool's (a pooled connection is shared by the next request, which would inherit the lock). A
connection that breaks loses every lock taken on it: its holders are told nothing (their work
has reached or will reach the database through the pool, whose commit is the last word), so
every duty and every locked operation is written to be harmless when it runs twice.

Behind a pooler (PgBouncer), use session pooling: transaction pooling breaks LISTEN and session
advisory locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from callqos.server.store.base import Leadership, SharedLocks, StoreUnavailable

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]

# The channel commits with events NOTIFY. The payload names the store that committed (a wake-up,
# never the data), so that a replica skips its own: it has its own events already.
CHANNEL = "callqos_events"
# The advisory locks callqos takes, all here so that no two share a key by accident. Each
# two-key class is its own: REPL-5 reads PROVIDER_LIST_LOCK's class from pg_locks, where a
# tenant's lock once read as another replica's provider list.
# pg_advisory_xact_lock(MIGRATION_LOCK): one migrator at a time (`pg_schema`).
MIGRATION_LOCK = (7117, 1)
# pg_try_advisory_lock(LEADER_LOCK): the replica that holds it leads.
LEADER_LOCK = (7117, 2)
# pg_advisory_lock_shared(PROVIDER_LIST_LOCK, key of a provider list): held by every replica for
# as long as it runs, so that one starting with another list sees it in pg_locks (REPL-5).
PROVIDER_LIST_LOCK = 7118
# pg_advisory_xact_lock(TENANT_LOCK, hashtext(tenant)): one quota-checked commit of a tenant at a
# time (`postgres`).
TENANT_LOCK = 7119
# How long an operation waits for a key another replica holds before it fails (a replica that
# holds a key that long is stuck; PostgreSQL releases it when that replica's connection drops).
KEY_WAIT_SECONDS = 30.0
# Connections that hold key locks: a key always goes to the same one (its hash picks it), so
# that one busy connection does not queue every replica's operation behind it.
KEY_CONNECTIONS = 2
# Defaults added to the DSN unless it sets them: a connection that stops answering is noticed in
# about 25 s, and the replica is named in pg_stat_activity.
_DSN_DEFAULTS = {
    "application_name": "callqos",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def connection_info(dsn: str) -> str:
    """`dsn` (a URI or key=value string) with the defaults above for what it leaves unset."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"database_url is not a PostgreSQL connection string: {exc}") from None
    return make_conninfo(**{**_DSN_DEFAULTS, **{k: str(v) for k, v in given.items() if v is not None}})


def shown(dsn: str) -> str:
    """`dsn` as it may be logged: every part but the password."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable database_url)"
    parts = [f"{key}={value}" for key, value in sorted(given.items()) if key != "password" and value is not None]
    return " ".join(parts) + (" password=***" if "password" in given else "")


def unavailable(exc: BaseException) -> StoreUnavailable:
    """A driver error as StoreUnavailable, naming the cause for an operator (never the DSN)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"the database cannot be reached: {detail}")


def key_of(key: str) -> int:
    """A key lock's bigint: the first 8 bytes of SHA-256 (two keys share one by chance ~2^-64)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class DedicatedConnection:
    """One connection outside the pool, reconnected when it breaks. `epoch` counts connections
    made, so that a lock taken on an earlier one is known to be gone."""

    def __init__(self, conninfo: str, name: str) -> None:
        self._conninfo = conninfo
        self._name = name
        self._conn: Connection | None = None
        self._guard = asyncio.Lock()
        self.epoch = 0

    async def run(self, query: Any, params: tuple[object, ...] = ()) -> tuple[int, Any]:
        """(the epoch it ran in, the first column of the first row). StoreUnavailable when the
        database cannot be reached; the next call reconnects."""
        async with self._guard:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                    self.epoch += 1
                row = await (await self._conn.execute(query, params)).fetchone()
                return self.epoch, row[0] if row else None
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    log.warning("%s connection to the database broke: %s", self._name, exc)
                    await self._close()
                raise unavailable(exc) from exc

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def close(self) -> None:
        async with self._guard:
            await self._close()


class AdvisoryKeyLocks(SharedLocks):
    """Key locks across replicas: `pg_try_advisory_lock` on a dedicated connection, tried again
    with a growing pause while another replica holds the key (a blocking `pg_advisory_lock`
    would hold the connection, and every other key on it, for as long as it waits)."""

    def __init__(self, conninfo: str) -> None:
        self._connections = [DedicatedConnection(conninfo, f"key lock {i}") for i in range(KEY_CONNECTIONS)]

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = key_of(key)
        conn = self._connections[lock % KEY_CONNECTIONS]
        pause, deadline = 0.002, time.monotonic() + KEY_WAIT_SECONDS
        while True:
            epoch, taken = await conn.run("SELECT pg_try_advisory_lock(%s)", (lock,))
            if taken:
                break
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"another replica has held {key} for {KEY_WAIT_SECONDS:g}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            # Shielded: a cancelled holder must still let go, or the key stays taken for as long
            # as this replica's connection lives.
            await asyncio.shield(self._release(conn, epoch, lock, key))

    @staticmethod
    async def _release(conn: DedicatedConnection, epoch: int, lock: int, key: str) -> None:
        if conn.epoch != epoch:
            log.warning("the connection holding %s broke while it was held; PostgreSQL released it", key)
            return
        try:
            await conn.run("SELECT pg_advisory_unlock(%s)", (lock,))
        except StoreUnavailable as exc:  # the connection broke: PostgreSQL released the lock with it
            log.warning("could not release %s (%s); it went with the connection", key, exc.cause)

    async def close(self) -> None:
        for conn in self._connections:
            await conn.close()


class AdvisoryLeader(Leadership):
    """The replica holding the session advisory lock LEADER_LOCK leads. A replica that does not
    lead tries to take it each time it is asked; the leader checks that its connection (and so
    its lock) is still there."""

    def __init__(self, conninfo: str) -> None:
        self._conn = DedicatedConnection(conninfo, "leader")
        self._epoch = 0  # the connection epoch the lock was taken in; 0: not leading

    async def lead(self) -> bool:
        try:
            if self._epoch:
                epoch, _ = await self._conn.run("SELECT 1")
                if epoch == self._epoch:
                    return True
                log.warning("lost the lead: the connection that held it broke")
                self._epoch = 0
            epoch, taken = await self._conn.run("SELECT pg_try_advisory_lock(%s, %s)", LEADER_LOCK)
        except StoreUnavailable as exc:
            if self._epoch:
                log.warning("lost the lead: %s", exc.cause)
            self._epoch = 0
            return False
        if taken:
            self._epoch = epoch
            log.info("leading the replicas' background work")
        return bool(taken)

    async def close(self) -> None:
        # Unlocked first, so that the next replica to ask leads at once: the lock also goes with
        # the session, but PostgreSQL ends a closed session a moment after the client has left.
        if self._epoch:
            self._epoch = 0
            with contextlib.suppress(StoreUnavailable):
                await self._conn.run("SELECT pg_advisory_unlock(%s, %s)", LEADER_LOCK)
        await self._conn.close()


def provider_list_key(ids: Iterable[str]) -> int:
    """The advisory lock key of a list of provider ids (order does not matter): 31 bits of its
    SHA-256, so that it reads back from pg_locks.objid (an unsigned oid) unchanged."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class ProviderListMark:
    """What a replica says to the others about the providers it hosts: a shared session advisory
    lock on (PROVIDER_LIST_LOCK, the list's key), held on a dedicated connection for the
    replica's life and gone with it (`kill -9` included). A replica starting with another list
    finds the others' keys in pg_locks and does not start (REPL-5): it would disconnect the calls
    of every provider it does not host, which the others serve."""

    def __init__(self, conninfo: str) -> None:
        self._conn = DedicatedConnection(conninfo, "provider list")
        self._key: int | None = None
        self._epoch = 0  # the connection the mark was taken on

    async def hold(self, ids: Iterable[str]) -> set[int]:
        """Hold the mark of `ids`; the keys of the other provider lists live replicas hold."""
        self._key = key = provider_list_key(ids)
        self._epoch, _ = await self._conn.run("SELECT pg_advisory_lock_shared(%s, %s)", (PROVIDER_LIST_LOCK, key))
        _, held = await self._conn.run(
            "SELECT array_agg(DISTINCT objid::bigint) FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = %s AND objsubid = 2 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (PROVIDER_LIST_LOCK,),
        )
        return {int(other) for other in held or ()} - {key}

    async def keep(self) -> None:
        """Take the mark again if the connection that held it broke (a database restart ends
        the session, and the lock with it). StoreUnavailable while the database is away."""
        if self._key is None:
            return
        epoch, _ = await self._conn.run("SELECT 1")
        if epoch != self._epoch:
            self._epoch, _ = await self._conn.run(
                "SELECT pg_advisory_lock_shared(%s, %s)", (PROVIDER_LIST_LOCK, self._key)
            )

    async def close(self) -> None:
        await self._conn.close()  # the lock goes with the session


class CommitListener:
    """LISTEN on CHANNEL on a dedicated connection, and wake whoever waits in `changes()` on
    every other store's notification, on every (re)connection (what was committed while not
    listening), and every `poll_seconds` in any case (so a notification lost with a connection
    costs at most that long). `instance` is the payload this store's own commits notify with:
    those wake nobody here, as the committer hands its events to the hub itself."""

    def __init__(self, conninfo: str, poll_seconds: float) -> None:
        self.instance = uuid.uuid4().hex
        self._conninfo = conninfo
        self._poll = poll_seconds
        # Wake-ups so far: one that comes while a consumer is busy is not lost. `_woken` is set
        # (and replaced by a fresh one) at each. An Event and `asyncio.timeout`, not a Condition
        # waited on through `asyncio.wait_for`: on Python 3.11 a consumer cancelled while that
        # wait timed out or was woken could wait for ever for the lock the Condition re-takes,
        # and a replica that failed to start hung instead of exiting (test_pg_coordination).
        self._generation = 0
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="callqos commit listener")

    def _wake(self) -> None:
        self._generation += 1
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    async def _listen(self) -> None:
        pause = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    pause = 0.1
                    self._wake()
                    async for notification in conn.notifies():
                        if notification.payload != self.instance:
                            self._wake()
            except psycopg.Error as exc:
                log.warning("listening for other replicas' commits failed (%s); polling until it is back", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def changes(self) -> AsyncIterator[None]:
        seen = -1
        while True:
            if self._generation == seen:  # nothing new since the last: wait for a wake-up or the poll
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await self._woken.wait()
            seen = self._generation
            yield

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
