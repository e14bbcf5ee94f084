"""`make bench` (first): callqos throughput against a bare grpc.aio echo server measured in the
same run, judged against the targets of issue #17 (`targets.py`).

Every server runs in its own process (as in production) and one load generator (this process,
CONCURRENCY RPCs in flight) drives them in alternating rounds, so that each round compares like
with like on the same noisy machine at the same moment:
- echo: the bare grpc.aio unary RPCs/s (the baseline of the round);
- CreateCall + DropCall against the default server (SQLite file storage, reference provider),
  with tracing off (the embedded default), at the production 10 % head sampling, and with every
  trace sampled (`programs.py` says what "tracing on" exports);
- RenegotiateCall (each loop alternating its connected call between two rates) and GetCall.

Printed per variant: RPCs/s; the throughput ratio to the echo of the same round; and the same
ratio at equal CPU — the echo's CPU per RPC (its server's and the load generator's, the two
processes sharing the machine) over the variant's — with medians and ranges over rounds. The
targets are judged at equal CPU: on a machine shared with other work, throughput in one window
swings by tens of per cent with what other processes take (rounds of one run ranged 0.16-0.70),
while CPU per RPC holds within about 10 %; with the CPU to themselves, the two ratios are the
same thing. The tracing overheads are judged the same way against the untraced server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import programs
import workload
from targets import Row, report
from workload import CONCURRENCY, Measured, process_cpu_seconds, rotated

from callqos.server.store.sqlite import SqliteStore
from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2, event_pb2

ROUNDS = 5
ROUND_SECONDS = 2.0

Load = Callable[[str, float, Callable[[], float] | None], Awaitable[Measured]]


@dataclass(frozen=True)
class Variant:
    label: str
    server: str  # which server of `servers` it is measured on
    load: Load
    rpcs_per_op: int  # RPCs in one operation of `load` (a make+drop cycle is two)
    commits_per_rpc: float  # store commits each RPC makes (the limit: see `limit`)


VARIANTS = {
    "echo": Variant("bare grpc.aio echo (baseline)", "echo", workload.echo, 1, 0),
    "make_drop": Variant("CreateCall + DropCall, tracing off", "off", workload.make_drop, 2, 1),
    "make_drop_sampled": Variant("CreateCall + DropCall, 10% sampled", "sampled", workload.make_drop, 2, 1),
    "make_drop_all": Variant("CreateCall + DropCall, all sampled", "all", workload.make_drop, 2, 1),
    "renegotiate": Variant("RenegotiateCall", "off", workload.renegotiate, 1, 1),
    "get": Variant("GetCall", "off", workload.get, 1, 0),
}


@dataclass
class Series:
    """One variant over the rounds: RPCs/s and the server's CPU µs per RPC, one of each per round."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    client_cpu_us: list[float] = field(default_factory=list)  # the load generator's, per RPC

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_us_per_rpc(self) -> float:
        return statistics.median(self.cpu_us) if self.cpu_us else 0.0


def servers(workdir: Path) -> dict[str, ServerProcess]:
    """The echo baseline, and the default callqos server untraced, at the production sampling and
    with every trace sampled."""
    callqos = {"off": None, "sampled": programs.PRODUCTION_SAMPLING, "all": 1.0}
    made = {"echo": ServerProcess(workdir / "echo", program=programs.echo_program(), health_check=False)}
    for name, sampling in callqos.items():
        made[name] = ServerProcess(
            workdir / name, program=programs.callqos_program(sampling), storage="sqlite", log_level="warning"
        )
    return made


async def commit_cost_us(commits: int = 2000) -> float:
    """CPU µs one store commit costs at best: CreateCall's commit (a connected call and its
    QOS_GRANTED event, as the server makes them) into a SQLite file, CONCURRENCY commits at a time
    so that they share transactions as fully as group commit can make them."""
    with tempfile.TemporaryDirectory(prefix="callqos-bench-commit-") as tmp:
        store = SqliteStore(Path(tmp) / "callqos.db")
        try:
            made = []
            for i in range(commits):
                call = call_pb2.Call(
                    name=f"calls/c{i}",
                    provider="providers/reference",
                    state=call_pb2.Call.State.STATE_CONNECTED,
                    destination="sip:bench",
                    requested_qos=workload.qos(1000),
                    granted_qos=workload.qos(1000),
                    owner="anonymous",
                    tenant="default",
                    etag="0123456789abcdef",
                )
                event = event_pb2.QosEvent(
                    call=call.name, tenant="default", provider=call.provider, current_qos=call.granted_qos
                )
                made.append((call, event))
            started = time.process_time()
            for first in range(0, commits, CONCURRENCY):
                await asyncio.gather(
                    *(store.commit(call, [event]) for call, event in made[first : first + CONCURRENCY])
                )
            return 1e6 * (time.process_time() - started) / commits
        finally:
            await store.close()


def limit(results: dict[str, Series], name: str, commit_us: float) -> float:
    """The highest ratio at equal CPU `name` could reach if the server spent on each RPC no more
    than the bare echo server does, plus its store commits (`commit_us` each): its load
    generator's CPU per RPC (a bigger answer costs the client more to read) stays what it is."""
    echo, ours = results["echo"], results[name]
    echo_rpc = echo.cpu_us_per_rpc + statistics.median(echo.client_cpu_us)
    floor = echo.cpu_us_per_rpc + VARIANTS[name].commits_per_rpc * commit_us + statistics.median(ours.client_cpu_us)
    return echo_rpc / floor


async def run(seconds: float = ROUND_SECONDS, rounds: int = ROUNDS) -> dict[str, Series]:
    results = {name: Series() for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="callqos-bench-") as tmp:
        started = servers(Path(tmp))
        async with contextlib.AsyncExitStack() as stack:
            for server in started.values():
                await stack.enter_async_context(server)
            for round_ in range(rounds):
                for name in rotated(list(VARIANTS), round_):
                    variant = VARIANTS[name]
                    server = started[variant.server]
                    measured = await variant.load(server.target, seconds, process_cpu_seconds(server.pid))
                    results[name].rates.append(measured.rate * variant.rpcs_per_op)
                    results[name].cpu_us.append(1e6 * (measured.probe_per_op or 0.0) / variant.rpcs_per_op)
                    results[name].client_cpu_us.append(1e6 * measured.own_cpu_per_op / variant.rpcs_per_op)
    return results


def _per_round(results: dict[str, Series], name: str, base: str) -> list[float]:
    """The throughput ratio of `name` to `base`, round by round."""
    return [rate / baseline for rate, baseline in zip(results[name].rates, results[base].rates, strict=True)]


def _per_round_cpu(results: dict[str, Series], name: str, base: str) -> list[float]:
    """The same ratio at equal CPU, round by round: `base`'s CPU per RPC (server and load generator
    together, the two sharing the machine) over `name`'s. It is the throughput ratio the two would
    have with the same CPU to share, and it does not swing with what other processes take."""
    ours, theirs = results[name], results[base]
    return [
        (base_server + base_client) / (server + client)
        for server, client, base_server, base_client in zip(
            ours.cpu_us, ours.client_cpu_us, theirs.cpu_us, theirs.client_cpu_us, strict=True
        )
    ]


def rows(results: dict[str, Series], commit_us: float) -> list[Row]:
    """The targets this benchmark measures, each the median of its per-round figures at equal CPU
    (the throughput ratio measured and the limit, see `limit`, are in each row's note)."""
    judged = []
    for key in ("make_drop", "make_drop_sampled", "renegotiate", "get"):
        ratios = _per_round_cpu(results, key, "echo")
        measured = statistics.median(_per_round(results, key, "echo"))
        note = f"throughput ratio {measured:.2f}; limit {limit(results, key, commit_us):.2f}"
        judged.append(Row(key, statistics.median(ratios), min(ratios), max(ratios), note))
    for key, traced in (("tracing_sampled", "make_drop_sampled"), ("tracing_all", "make_drop_all")):
        overheads = [1 - ratio for ratio in _per_round_cpu(results, traced, "make_drop")]
        measured = 1 - statistics.median(_per_round(results, traced, "make_drop"))
        judged.append(
            Row(key, statistics.median(overheads), min(overheads), max(overheads), f"in throughput {measured:.0%}")
        )
    return judged


def table(results: dict[str, Series], commit_us: float) -> str:
    echo = results["echo"]
    lines = [
        f"{CONCURRENCY} RPCs in flight; servers and load generator on the same {os.cpu_count()}-core machine; "
        f"median (range) of {len(echo.rates)} alternating rounds",
        f"{'':<38}{'RPC/s':>7}  {'throughput ratio':<18}{'at equal CPU':<18}{'limit':<7}"
        f"{'CPU per RPC: server + load':>28}",
    ]
    for name, variant in VARIANTS.items():
        series = results[name]
        ratios = _per_round(results, name, "echo")
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        equal = _per_round_cpu(results, name, "echo")
        at_equal = f"{statistics.median(equal):.2f} ({min(equal):.2f}-{max(equal):.2f})"
        cpu = f"{series.cpu_us_per_rpc:.0f} + {statistics.median(series.client_cpu_us):.0f} µs"
        reach = f"{limit(results, name, commit_us):.2f}"
        lines.append(f"{variant.label:<38}{series.rate:>7.0f}  {spread:<18}{at_equal:<18}{reach:<7}{cpu:>28}")
    lines.append(
        f"limit: the ratio at equal CPU if the server spent on an RPC no more than the bare echo server, plus "
        f"its store commits at {commit_us:.0f} µs each (SQLite, CONCURRENCY commits grouped)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=ROUND_SECONDS, help="measurement window per variant and round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--results", type=Path, help="append the judged rows to this file (JSON lines)")
    args = parser.parse_args()
    results = asyncio.run(run(args.seconds, args.rounds))
    commit_us = asyncio.run(commit_cost_us())
    print(table(results, commit_us))
    print(report(rows(results, commit_us), args.results))


if __name__ == "__main__":
    main()
