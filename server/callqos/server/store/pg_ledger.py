"""The shared admission ledger on PostgreSQL (`providers.base.SharedLedger`): the books a provider
keeps for every replica at once, in `ledger_links` and `ledger_reservations` (store.pg_schema).

A provider opens `books(provider)` for each decision: one transaction on a pooled connection, in
which it locks the rows of the links it decides on (`SELECT … FOR UPDATE`, in link order, so two
deciders never wait for each other), reads what it needs, writes what it decided, and commits at
the end of the block. A decider on another replica that locks the same link waits for the commit
and then reads the committed rows (READ COMMITTED: each statement sees what committed before it),
so two replicas can never both take the last free capacity of a link.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from callqos.server.providers.base import BookedLink, BookedReservation, LedgerBooks, SharedLedger
from callqos.server.store.pg_coordination import Connection, unavailable
from callqos.v1 import flowspec_pb2


class PostgresBooks(LedgerBooks):
    """One provider's books inside one transaction."""

    def __init__(self, conn: Connection, provider: str) -> None:
        self._conn = conn
        self._provider = provider

    async def links(self, ids: Sequence[str], *, lock: bool) -> dict[str, BookedLink]:
        if lock:
            sql = (
                "SELECT link, capacity, configured, sending, receiving, last_order, 0 FROM ledger_links "
                "WHERE provider = %s AND link = ANY(%s) ORDER BY link FOR UPDATE"
            )
        else:
            sql = (
                "SELECT l.link, l.capacity, l.configured, l.sending, l.receiving, l.last_order, "
                "(SELECT count(*) FROM ledger_reservations r WHERE r.provider = l.provider AND r.link = l.link "
                "AND (r.sending > 0 OR r.receiving > 0)) FROM ledger_links l "
                "WHERE l.provider = %s AND l.link = ANY(%s) ORDER BY l.link"
            )
        rows = await (await self._conn.execute(sql, (self._provider, list(ids)))).fetchall()
        return {
            str(row[0]): BookedLink(
                str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]), int(row[6])
            )
            for row in rows
        }

    async def reservations(self, *, calls: Sequence[str] = (), links: Sequence[str] = ()) -> list[BookedReservation]:
        rows = await (
            await self._conn.execute(
                "SELECT call, link, level, qos, sending, receiving, ord FROM ledger_reservations "
                "WHERE provider = %s AND (call = ANY(%s) OR link = ANY(%s)) ORDER BY ord",
                (self._provider, list(calls), list(links)),
            )
        ).fetchall()
        return [
            BookedReservation(
                call=str(row[0]),
                link=str(row[1]),
                level=int(row[2]),
                qos=flowspec_pb2.QosSpec.FromString(bytes(row[3])),
                sending=int(row[4]),
                receiving=int(row[5]),
                order=int(row[6]),
            )
            for row in rows
        ]

    async def put_link(self, link: BookedLink) -> None:
        await self._conn.execute(
            "UPDATE ledger_links SET capacity = %s, configured = %s, sending = %s, receiving = %s, last_order = %s "
            "WHERE provider = %s AND link = %s",
            (link.capacity, link.configured, link.sending, link.receiving, link.last_order, self._provider, link.id),
        )

    async def put_reservation(self, reservation: BookedReservation) -> None:
        await self._conn.execute(
            "INSERT INTO ledger_reservations (provider, call, link, level, qos, sending, receiving, ord) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (provider, call) DO UPDATE SET "
            "link = excluded.link, level = excluded.level, qos = excluded.qos, sending = excluded.sending, "
            "receiving = excluded.receiving, ord = excluded.ord",
            (
                self._provider,
                reservation.call,
                reservation.link,
                reservation.level,
                reservation.qos.SerializeToString(),
                reservation.sending,
                reservation.receiving,
                reservation.order,
            ),
        )

    async def add_link(self, link: BookedLink) -> None:
        """New: the capacity given (the configured one, or one UpdateLink set that was put back).
        Known and configured as it was: kept (UpdateLink on any replica may have changed its
        capacity). Configured otherwise since: the configuration wins."""
        await self._conn.execute(
            "INSERT INTO ledger_links (provider, link, capacity, configured, sending, receiving, last_order) "
            "VALUES (%s, %s, %s, %s, 0, 0, 0) ON CONFLICT (provider, link) DO UPDATE SET "
            "capacity = excluded.capacity, configured = excluded.configured "
            "WHERE ledger_links.configured <> excluded.configured",
            (self._provider, link.id, link.capacity, link.configured),
        )

    async def delete_reservation(self, call: str) -> None:
        await self._conn.execute(
            "DELETE FROM ledger_reservations WHERE provider = %s AND call = %s", (self._provider, call)
        )


class PostgresLedger(SharedLedger):
    def __init__(self, pool: AsyncConnectionPool[Connection]) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def books(self, provider: str) -> AsyncIterator[LedgerBooks]:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield PostgresBooks(conn, provider)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unavailable(exc) from exc

    async def add_links(self, provider: str, links: Sequence[BookedLink]) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                books = PostgresBooks(conn, provider)
                for link in sorted(links, key=lambda each: each.id):
                    await books.add_link(link)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unavailable(exc) from exc
