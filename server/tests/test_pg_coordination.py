"""The PostgreSQL store's coordination between replicas, piece by piece: the commit listener's
wake-ups, and the marks replicas hold in pg_locks."""

from __future__ import annotations

import asyncio
import random

import psycopg

from callqos.server.store.pg_coordination import TENANT_LOCK, CommitListener, ProviderListMark
from callqos.server.testing import PostgresServer


async def test_a_follower_of_the_commit_listener_always_stops_when_cancelled() -> None:
    """A replica that fails to start (REPL-5) or stops cancels the event hub's follower of
    `changes()`. Cancelled while a poll times out, a wake-up arrives, or both in the same turn of
    the loop, the follower must end: it once waited for ever (a replica with another provider
    list hung at start instead of exiting with status 2). Bounded: 300 followers, 2 s each."""
    listener = CommitListener("unused: never started", poll_seconds=0.001)
    rng = random.Random(20261129)

    async def follow() -> None:
        async for _ in listener.changes():
            pass

    async def wake() -> None:
        while True:
            listener._wake()
            await asyncio.sleep(rng.choice((0, 0, 0.0005, 0.001)))

    waker = asyncio.create_task(wake())
    try:
        for _ in range(300):
            follower = asyncio.create_task(follow())
            await asyncio.sleep(rng.choice((0, 0.0005, 0.001, 0.002)))
            follower.cancel()
            done, _ = await asyncio.wait({follower}, timeout=2)
            assert follower in done, "the follower did not end after it was cancelled"
    finally:
        waker.cancel()


async def test_a_tenants_quota_lock_does_not_read_as_another_replicas_provider_list(postgres: PostgresServer) -> None:
    """REPL-5 reads the provider lists of live replicas from pg_locks. A commit that checks a
    tenant's quotas holds an advisory lock of its own meanwhile; it must not read as a provider
    list, or a replica with the same providers as the others would refuse to start."""
    url = postgres.database()
    async with await psycopg.AsyncConnection.connect(url) as committing, committing.transaction():
        await committing.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TENANT_LOCK, "default"))
        mark = ProviderListMark(url)
        try:
            assert await mark.hold(["no-qos", "reference"]) == set()
        finally:
            await mark.close()
