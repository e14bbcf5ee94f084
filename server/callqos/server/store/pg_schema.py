"""The PostgreSQL schema: versioned, forward-only migrations, applied at start-up.

`callqos_schema` records each version applied (its number, what it did, when). At start-up a
server applies the versions its code has and the database lacks, all in one transaction, under a
transaction-level advisory lock (so replicas starting together migrate once, one after the
other); it refuses a database whose newest applied version is beyond its code (a newer server
migrated it: this one would misread it), naming both versions. A step is never edited once
released; a change is a new step appended to MIGRATIONS (the one place: nothing else names a
version), self-contained like SQLite's (its own DDL). Version 1 holds everything SQLite's schema
version 5 holds (#11's ledger tables, the leases' column), plus the shared ledger; the PostgreSQL
versions count on their own from there.

What the tables hold, and why the event numbers come from one row:
- `calls`, `lines`, `requests` (AIP-155 records) and `events` are those of the SQLite store
  (`calls.lease_expire_us` and its partial index too: the lease index every replica's lease
  timer reads, `store.base.lease_deadline_us`), with `events.data` holding a QosEvent WITHOUT
  its sequence (the row's `seq` is the sequence: it is known only inside the committing
  transaction, from the statement that inserts the events).
- `event_log` is one row: the last sequence ever given and how far events were pruned. A commit
  with events bumps `last` as its last statement, so the row lock serialises those commits in
  the order they commit: sequence order is commit order across every replica (a SERIAL column
  would not give that: its numbers are taken at insert, not at commit, so a reader could see 11
  before 10 commits and skip it forever).
- `link_capacities` (capacities set with UpdateLink, with the configured capacity each overrode:
  LINK-5) and `pending_releases` (releases owed to providers until they confirm them: CALL-6), as
  in SQLite; both shared by every replica.
- `ledger_links` and `ledger_reservations` are the admission books providers keep in the shared
  ledger (`store.pg_ledger`), rows locked per link while a decision is made. Capacities and rates
  are numeric(20): a uint64 capacity fits. (A call's reserved rates, for quotas, are bigint,
  saturated as SQLite's are: `store.base.stored_rate`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from callqos.server.store.pg_coordination import MIGRATION_LOCK


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "calls (with their leases), lines, events, idempotency records, the event counter, link capacities, "
        "owed releases, the shared admission ledger",
        """
        CREATE TABLE calls (
            seq      bigserial PRIMARY KEY,          -- creation order, for newest-first listing
            name     text NOT NULL UNIQUE,
            provider text NOT NULL,
            state    integer NOT NULL,
            data     bytea NOT NULL,                 -- callqos.v1.Call
            tenant   text NOT NULL,
            reserved_sending   bigint NOT NULL DEFAULT 0,  -- bytes/s held while connected (quotas)
            reserved_receiving bigint NOT NULL DEFAULT 0,
            line     text NOT NULL DEFAULT '',
            active   boolean NOT NULL DEFAULT false, -- counts toward its tenant's active calls
            lease_expire_us bigint NOT NULL DEFAULT 0 -- when its live lease ends (lease_deadline_us); 0: none
        );
        CREATE INDEX calls_state ON calls (state, seq);
        CREATE INDEX calls_tenant ON calls (tenant, seq);
        CREATE INDEX calls_line ON calls (line, seq) WHERE line <> '';
        CREATE INDEX calls_active ON calls (tenant) WHERE active;
        CREATE INDEX calls_lease ON calls (lease_expire_us) WHERE lease_expire_us > 0;
        CREATE TABLE event_log (
            id             integer PRIMARY KEY CHECK (id = 1),
            last           bigint NOT NULL,          -- the newest sequence ever given
            pruned_through bigint NOT NULL           -- every event <= this is gone
        );
        INSERT INTO event_log VALUES (1, 0, 0);
        CREATE TABLE events (
            seq       bigint PRIMARY KEY,
            create_us bigint NOT NULL,               -- the database's clock, for age retention
            tenant    text NOT NULL,
            data      bytea NOT NULL                 -- callqos.v1.QosEvent, sequence unset
        );
        CREATE INDEX events_age ON events (create_us);
        CREATE TABLE requests (
            tenant      text NOT NULL,
            principal   text NOT NULL,
            request_id  text NOT NULL,
            method      text NOT NULL,
            fingerprint text NOT NULL,
            call        text NOT NULL,
            status      bytea NOT NULL,
            create_us   bigint NOT NULL,
            PRIMARY KEY (tenant, principal, request_id)
        );
        CREATE INDEX requests_age ON requests (create_us);
        CREATE TABLE lines (
            seq     bigserial PRIMARY KEY,
            name    text NOT NULL UNIQUE,
            address text NOT NULL,
            owner   text NOT NULL,
            state   integer NOT NULL,
            data    bytea NOT NULL,                  -- callqos.v1.Line
            tenant  text NOT NULL
        );
        -- At most one open line of a tenant per address (callqos.v1.Line.State.STATE_OPEN = 1).
        CREATE UNIQUE INDEX lines_open_address ON lines (tenant, address) WHERE state = 1;
        CREATE INDEX lines_tenant ON lines (tenant, seq);
        CREATE TABLE link_capacities (               -- UpdateLink, durable (LINK-5)
            link       text PRIMARY KEY,
            capacity   numeric(20) NOT NULL,
            configured numeric(20) NOT NULL          -- the configured capacity it overrode
        );
        CREATE TABLE pending_releases (              -- releases owed to providers (CALL-6)
            call       text PRIMARY KEY,
            provider   text NOT NULL,
            attempts   integer NOT NULL,
            next_us    bigint NOT NULL,
            last_error text NOT NULL,
            seq        bigserial NOT NULL            -- insertion order, oldest retried first
        );
        CREATE TABLE ledger_links (
            provider   text NOT NULL,
            link       text NOT NULL,
            capacity   numeric(20) NOT NULL,
            configured numeric(20) NOT NULL,
            sending    numeric(20) NOT NULL,
            receiving  numeric(20) NOT NULL,
            last_order bigint NOT NULL,
            PRIMARY KEY (provider, link)
        );
        CREATE TABLE ledger_reservations (
            provider   text NOT NULL,
            call       text NOT NULL,
            link       text NOT NULL,
            level      integer NOT NULL,
            qos        bytea NOT NULL,                -- callqos.v1.QosSpec held
            sending    numeric(20) NOT NULL,
            receiving  numeric(20) NOT NULL,
            ord        bigint NOT NULL,
            PRIMARY KEY (provider, call)
        );
        CREATE INDEX ledger_reservations_link ON ledger_reservations (provider, link, ord);
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaError(OSError):
    """The database's schema cannot be served by this code (newer, or not ours)."""


async def migrate(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> tuple[int, int]:
    """Bring the database to SCHEMA_VERSION; returns (the version found, the version now)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS callqos_schema ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await (await conn.execute("SELECT version FROM callqos_schema ORDER BY version")).fetchall()
        applied = [int(str(row[0])) for row in rows]
        found = applied[-1] if applied else 0
        if applied != list(range(1, found + 1)):
            raise SchemaError(f"callqos_schema lists versions {applied}: not a history this server wrote")
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {found}, newer than this server's {SCHEMA_VERSION}: "
                "a newer callqos server migrated it; run that version (schemas only move forward)"
            )
        for step in MIGRATIONS[found:]:
            await conn.execute(step.sql.encode())
            await conn.execute(
                "INSERT INTO callqos_schema (version, description) VALUES (%s, %s)", (step.version, step.description)
            )
        return found, SCHEMA_VERSION
