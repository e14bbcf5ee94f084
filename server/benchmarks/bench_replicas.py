"""`make bench`: replicas on PostgreSQL against one SQLite process, measured in the same run.

CreateCall + DropCall cycles per second (the reference provider admitting and releasing, the
call, its events and its request record committed) against:
- one server process on SQLite (the default, as `make run` serves);
- one replica on PostgreSQL;
- two replicas on PostgreSQL, the load spread over both as a load balancer would;
with the CPU each costs per cycle: the server processes', and PostgreSQL's (the postmaster and
its backends). PostgreSQL runs durable here (fsync and synchronous commit on), as in production.

Then the one thing no number of replicas can raise: commits that carry events take turns on the
event counter row (store.pg_schema: that is what makes sequence order commit order), each
holding it through its WAL flush. Measured directly: commits with an event per second, from
many concurrent committers on two stores, with nothing else running.

From those, the report projects how far replicas scale: each replica adds what one event loop
(one core) serves, until the database's CPU or the event counter is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import workload
from workload import CONCURRENCY, Measured

from callqos.server.store.postgres import PostgresStore
from callqos.server.testing import PostgresServer, ServerProcess
from callqos.v1 import call_pb2, event_pb2

VARIANTS = ("sqlite", "postgresql x1", "postgresql x2")
# Committers racing for the event counter in the ceiling measurement (more than any replica
# count here would bring), over this many stores (replicas, as the database sees them).
COMMITTERS = 32
STORES = 2


@dataclass(frozen=True)
class Variant:
    rate: float  # make+drop cycles/s, all replicas together
    server_cpu_ms: float  # CPU of the server processes per cycle (milliseconds)
    database_cpu_ms: float  # CPU of PostgreSQL per cycle (0 for SQLite: it is inside the server)


@dataclass(frozen=True)
class Results:
    variants: dict[str, Variant]
    event_commits_per_s: float  # the event counter's ceiling, whatever the replicas


def _cpu(*pids: int) -> Callable[[], float]:
    probes = [workload.process_cpu_seconds(pid) for pid in pids]
    return lambda: sum(probe() for probe in probes)


async def _variant(targets: list[str], seconds: float, servers: list[int], postgres: PostgresServer | None) -> Variant:
    database: Callable[[], float] = (
        workload.process_tree_cpu_seconds(postgres.postmaster_pid) if postgres else (lambda: 0.0)
    )
    before = database()
    started = time.monotonic()
    measured: Measured = await workload.make_drop(targets, seconds, _cpu(*servers))
    # The database's CPU over the whole run (warm-up included) per cycle of the same run.
    cycles = measured.rate * (time.monotonic() - started)
    return Variant(
        measured.rate,
        (measured.probe_per_op or 0.0) * 1000,
        (database() - before) / cycles * 1000 if postgres and cycles else 0.0,
    )


async def event_commit_ceiling(url: str, seconds: float) -> float:
    """Commits carrying one event per second, COMMITTERS at once over STORES stores."""
    stores = [await PostgresStore.open(url, pool_size=COMMITTERS // STORES) for _ in range(STORES)]
    try:
        done = 0
        deadline = time.monotonic() + seconds

        async def committer(index: int) -> None:
            nonlocal done
            store = stores[index % STORES]
            while time.monotonic() < deadline:
                call = call_pb2.Call(name=f"calls/{uuid.uuid4().hex}", state=call_pb2.Call.State.STATE_DISCONNECTED)
                await store.commit(call, [event_pb2.QosEvent(call=call.name)])
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(committer(index) for index in range(COMMITTERS)))
        return done / (time.monotonic() - started)
    finally:
        for store in stores:
            await store.close()


async def run(seconds: float, postgres: PostgresServer | None = None) -> Results:
    """Every variant, one after the other, on this machine now. A `postgres` given is used as
    it is (a test's); otherwise a durable one is started for the run."""
    async with AsyncExitStack() as stack:
        if postgres is None:
            postgres = stack.enter_context(PostgresServer(durable=True))
        variants: dict[str, Variant] = {}
        async with ServerProcess(storage="sqlite", log_level="warning") as sqlite:
            variants["sqlite"] = await _variant([sqlite.target], seconds, [sqlite.pid], None)
        for count in (1, 2):
            url = postgres.database()
            replicas = [
                ServerProcess(storage="postgresql", database_url=url, log_level="warning") for _ in range(count)
            ]
            async with AsyncExitStack() as running:
                for replica in replicas:
                    await running.enter_async_context(replica)
                variants[f"postgresql x{count}"] = await _variant(
                    [replica.target for replica in replicas], seconds, [replica.pid for replica in replicas], postgres
                )
        ceiling = await event_commit_ceiling(postgres.database(), seconds)
    return Results(variants, ceiling)


def report(results: Results) -> str:
    sqlite, one, two = (results.variants[name] for name in VARIANTS)
    lines = [
        f"concurrency {CONCURRENCY}, servers, PostgreSQL and load generator on the same {os.cpu_count()}-core machine",
        f"{'CreateCall + DropCall':<28}{'cycles/s':>10}{'ratio':>8}{'server CPU':>14}{'PostgreSQL CPU':>18}",
    ]
    for name in VARIANTS:
        variant = results.variants[name]
        lines.append(
            f"{name:<28}{variant.rate:>10.0f}{variant.rate / sqlite.rate:>8.2f}"
            f"{variant.server_cpu_ms:>11.2f} ms{variant.database_cpu_ms:>15.2f} ms"
        )
    lines.append(f"2 replicas against 1: {two.rate / one.rate:.2f} (one machine: they share its cores)")
    ceiling = results.event_commits_per_s
    lines.append(
        f"commits carrying events, PostgreSQL alone ({COMMITTERS} committers, durable): {ceiling:.0f}/s; "
        f"they take turns on the event counter through their WAL flush, so at most {ceiling / 2:.0f} "
        "cycles/s (2 such commits per cycle) whatever the replicas, and as many on any one link "
        "(its admissions take turns on its row the same way)"
    )
    # The projection: a replica is one event loop (one core); PostgreSQL has the cores it has.
    per_replica = 1000 / one.server_cpu_ms if one.server_cpu_ms else 0.0
    per_database_core = 1000 / one.database_cpu_ms if one.database_cpu_ms else 0.0
    lines.append(
        f"projection: a replica's CPU allows ~{per_replica:.0f} cycles/s (one core), a PostgreSQL core's "
        f"~{per_database_core:.0f}; N replicas give ~N x {per_replica:.0f} cycles/s until N reaches "
        f"~{per_database_core / per_replica if per_replica else 0:.1f} per database core, or the total "
        f"reaches the {ceiling / 2:.0f} cycles/s the event counter allows, whichever comes first"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per variant")
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)  # `make bench`'s BENCH_ARGS: one round here
    args = parser.parse_args()
    print(report(asyncio.run(run(args.seconds))))


if __name__ == "__main__":
    main()
