"""`make bench` (first): callqos throughput against a bare grpc.aio echo server measured in the
same run, judged against the targets of issue #17 (`targets.py`).

Every server runs in its own process (as in production) and one load generator (this process,
CONCURRENCY RPCs in flight) drives them in alternating rounds, so that each round compares like
with like on the same noisy machine at the same moment:
- echo: the bare grpc.aio unary RPCs/s (the baseline of the round);
- CreateCall + DropCall against the default server (SQLite file storage, reference provider),
  with tracing off (the embedded default), at the production 10 % head sampling, and with every
  trace sampled (`programs.py` says what "tracing on" exports);
- RenegotiateCall (each loop alternating its connected call between two rates) and GetCall;
- the same RPCs against two floor servers (`programs.FloorServicer`): one doing only what
  durability needs (the call and its event committed to SQLite by callqos's own store), and one
  that also validates each request and has the reference provider decide ("floor+decide"): the
  least callqos must do, whose ratio is the closest a row can come on this machine.

Printed per variant: RPCs/s and the throughput ratio to the echo of the same round (median and
range over rounds): the targets are judged on that ratio, as issue #17 states them. Beside it, in
a column of its own, the CPU-normalised ratio: the echo's CPU per RPC (its server's and the load
generator's, the two processes sharing the machine) over the variant's. On a machine shared with
other work, throughput in one window swings by tens of per cent with what other processes take,
while CPU per RPC holds within about 10 %, so the second column says whether a low throughput
ratio is the server's cost or the machine's load; with the CPU to themselves, the two agree. The
tracing overheads are judged the same way (throughput, against the untraced server), with the
CPU-normalised overhead beside them.

Then the reference provider out of process (served by `callqos-provider serve reference`, which
the server launches and talks to over a Unix socket, callqos.provider.v1) against the same
provider in process, in alternating rounds of the same run, with the CPU per cycle of the server
(plus the provider process, out of process). Goal: out of process at least 0.7 of in process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
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


# A make+drop cycle commits three times: CreateCall's call, DropCall's (with the release it owes,
# issue #11), and the owed release forgotten once the provider has confirmed it.
MAKE_DROP_COMMITS = 3 / 2


VARIANTS = {
    "echo": Variant("bare grpc.aio echo (baseline)", "echo", workload.echo, 1, 0),
    "make_drop": Variant("CreateCall + DropCall, tracing off", "off", workload.make_drop, 2, MAKE_DROP_COMMITS),
    "make_drop_sampled": Variant(
        "CreateCall + DropCall, 10% sampled", "sampled", workload.make_drop, 2, MAKE_DROP_COMMITS
    ),
    "make_drop_all": Variant("CreateCall + DropCall, all sampled", "all", workload.make_drop, 2, MAKE_DROP_COMMITS),
    "renegotiate": Variant("RenegotiateCall", "off", workload.renegotiate, 1, 1),
    "get": Variant("GetCall", "off", workload.get, 1, 0),
    # The floors (programs.FloorServicer): the same RPCs doing only what durability needs, and
    # that plus validation and the reference provider's decisions (the least callqos must do).
    "floor_make_drop": Variant("floor: CreateCall + DropCall", "floor", workload.make_drop, 2, MAKE_DROP_COMMITS),
    "floor_renegotiate": Variant("floor: RenegotiateCall", "floor", workload.renegotiate, 1, 1),
    "floor_get": Variant("floor: GetCall", "floor", workload.get, 1, 0),
    "least_make_drop": Variant(
        "floor+decide: CreateCall + DropCall", "least", workload.make_drop, 2, MAKE_DROP_COMMITS
    ),
    "least_renegotiate": Variant("floor+decide: RenegotiateCall", "least", workload.renegotiate, 1, 1),
    "least_get": Variant("floor+decide: GetCall", "least", workload.get, 1, 0),
}
# Each judged row's floors: durability alone, and durability with validation and decisions.
FLOORS = {
    "make_drop": ("floor_make_drop", "least_make_drop"),
    "make_drop_sampled": ("floor_make_drop", "least_make_drop"),
    "renegotiate": ("floor_renegotiate", "least_renegotiate"),
    "get": ("floor_get", "least_get"),
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
    """The echo baseline, the two floor servers, and the default callqos server untraced, at the
    production sampling and with every trace sampled."""
    callqos = {"off": None, "sampled": programs.PRODUCTION_SAMPLING, "all": 1.0}
    made = {
        "echo": ServerProcess(workdir / "echo", program=programs.echo_program(), health_check=False),
        "floor": ServerProcess(workdir / "floor", program=programs.floor_program(), health_check=False),
        "least": ServerProcess(workdir / "least", program=programs.floor_program(decide=True), health_check=False),
    }
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
    """The highest CPU-normalised ratio `name` could reach if the server spent on each RPC no more
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
    """The throughput ratio of `name` to `base`, round by round (each round's `base` measured
    moments before or after it): what the targets are judged on."""
    return [rate / baseline for rate, baseline in zip(results[name].rates, results[base].rates, strict=True)]


def _per_round_cpu(results: dict[str, Series], name: str, base: str) -> list[float]:
    """The CPU-normalised ratio, round by round: `base`'s CPU per RPC (server and load generator
    together, the two sharing the machine) over `name`'s. It is the throughput ratio the two would
    have with the same CPU to share, and it does not swing with what other processes take; printed
    beside the throughput ratio, never instead of it."""
    ours, theirs = results[name], results[base]
    return [
        (base_server + base_client) / (server + client)
        for server, client, base_server, base_client in zip(
            ours.cpu_us, ours.client_cpu_us, theirs.cpu_us, theirs.client_cpu_us, strict=True
        )
    ]


def rows(results: dict[str, Series], commit_us: float) -> list[Row]:
    """The targets this benchmark measures, each judged on the median of its per-round throughput
    ratios to the echo of the same run (issue #17); the CPU-normalised figure and the floors' (see
    `programs.FloorServicer`: the closest the row could come) are in each row's note."""
    judged = []
    for key in ("make_drop", "make_drop_sampled", "renegotiate", "get"):
        ratios = _per_round(results, key, "echo")
        normalised = statistics.median(_per_round_cpu(results, key, "echo"))
        floor, least = FLOORS[key]
        note = (
            f"CPU-normalised {normalised:.2f}; floor {statistics.median(_per_round(results, floor, 'echo')):.2f}, "
            f"floor+decide {statistics.median(_per_round(results, least, 'echo')):.2f} "
            f"(CPU-normalised {statistics.median(_per_round_cpu(results, least, 'echo')):.2f})"
        )
        judged.append(Row(key, statistics.median(ratios), min(ratios), max(ratios), note))
    for key, traced in (("tracing_sampled", "make_drop_sampled"), ("tracing_all", "make_drop_all")):
        overheads = [1 - ratio for ratio in _per_round(results, traced, "make_drop")]
        normalised = 1 - statistics.median(_per_round_cpu(results, traced, "make_drop"))
        judged.append(
            Row(key, statistics.median(overheads), min(overheads), max(overheads), f"CPU-normalised {normalised:.0%}")
        )
    return judged


def table(results: dict[str, Series], commit_us: float) -> str:
    echo = results["echo"]
    lines = [
        f"{CONCURRENCY} RPCs in flight; servers and load generator on the same {os.cpu_count()}-core machine; "
        f"median (range) of {len(echo.rates)} alternating rounds",
        f"{'':<38}{'RPC/s':>7}  {'throughput ratio':<18}{'CPU-normalised':<18}{'limit':<7}"
        f"{'CPU per RPC: server + load':>28}",
    ]
    for name, variant in VARIANTS.items():
        series = results[name]
        ratios = _per_round(results, name, "echo")
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        equal = _per_round_cpu(results, name, "echo")
        normalised = f"{statistics.median(equal):.2f} ({min(equal):.2f}-{max(equal):.2f})"
        cpu = f"{series.cpu_us_per_rpc:.0f} + {statistics.median(series.client_cpu_us):.0f} µs"
        reach = f"{limit(results, name, commit_us):.2f}"
        lines.append(f"{variant.label:<38}{series.rate:>7.0f}  {spread:<18}{normalised:<18}{reach:<7}{cpu:>28}")
    lines.append(
        "throughput ratio: RPC/s over the echo's of the same round (the targets are judged on it); CPU-normalised: "
        "the echo's CPU per RPC over the variant's (server + load generator)"
    )
    lines.append(
        f"limit: the CPU-normalised ratio if the server spent on an RPC no more than the bare echo server, plus "
        f"its store commits at {commit_us:.0f} µs each (SQLite, CONCURRENCY commits grouped)"
    )
    return "\n".join(lines)


# -- a provider out of process ----------------------------------------------------------------
REMOTE_ROUNDS = 2
REMOTE_GOAL = 0.7
SERVE_REFERENCE = [sys.executable, "-m", "callqos.server.remote.serve", "serve", "reference"]


def _provider_pid(server: ServerProcess) -> int:
    """The pid of the provider process `server` launched (from its log: `provider process started`)."""
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("message") == "provider process started":
                return int(entry["pid"])
    raise RuntimeError(f"no provider process in the log of the server\n{server.log()}")


async def run_remote(seconds: float, rounds: int = REMOTE_ROUNDS) -> dict[str, float]:
    """make+drop cycles/s and CPU µs per cycle, the reference provider in process and out of
    process (both servers on SQLite, as `make run`), in alternating rounds; the means."""
    in_process = ServerProcess(storage="sqlite", log_level="warning")
    remote = ServerProcess(
        storage="sqlite",
        log_level="info",  # the log names the provider process, whose CPU counts too
        providers={"reference": {"plugin": "remote", "command": SERVE_REFERENCE}},
        default_provider="reference",
    )
    rates: dict[str, list[float]] = {"in_process": [], "remote": []}
    cpu: dict[str, list[float]] = {"in_process": [], "remote": []}
    async with in_process, remote:
        server_cpu = workload.process_cpu_seconds(in_process.pid)
        remote_cpu = workload.process_cpu_seconds(remote.pid)
        provider_cpu = workload.process_cpu_seconds(_provider_pid(remote))
        probes = {"in_process": server_cpu, "remote": lambda: remote_cpu() + provider_cpu()}
        targets = {"in_process": in_process.target, "remote": remote.target}
        for _ in range(rounds):
            for kind in ("in_process", "remote"):
                measured = await workload.make_drop(targets[kind], seconds, probes[kind])
                rates[kind].append(measured.rate)
                cpu[kind].append((measured.probe_per_op or 0.0) * 1e6)
    return {
        "in_process_cycles_per_s": statistics.mean(rates["in_process"]),
        "remote_cycles_per_s": statistics.mean(rates["remote"]),
        "in_process_cpu_us_per_cycle": statistics.mean(cpu["in_process"]),
        "remote_cpu_us_per_cycle": statistics.mean(cpu["remote"]),
    }


def report_remote(results: dict[str, float]) -> str:
    ratio = results["remote_cycles_per_s"] / results["in_process_cycles_per_s"]
    verdict = "met" if ratio >= REMOTE_GOAL else "NOT met"
    return "\n".join(
        [
            "reference provider in process vs out of process (Unix socket, callqos.provider.v1), "
            "in alternating rounds:",
            f"{'CreateCall + DropCall, in process':<44}{results['in_process_cycles_per_s']:>8.0f} cycles/s "
            f"{results['in_process_cpu_us_per_cycle']:>6.0f} µs CPU per cycle (server)",
            f"{'CreateCall + DropCall, out of process':<44}{results['remote_cycles_per_s']:>8.0f} cycles/s "
            f"{results['remote_cpu_us_per_cycle']:>6.0f} µs CPU per cycle (server + provider)",
            f"out of process / in process: {ratio:.2f} (goal >= {REMOTE_GOAL}: {verdict})",
        ]
    )


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
    print()
    print(report_remote(asyncio.run(run_remote(args.seconds))))


if __name__ == "__main__":
    main()
