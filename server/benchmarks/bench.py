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

Each figure is the median over rounds of the per-round ratio to that round's echo (the tracing
overhead: of the per-round ratio of traced to untraced cycles); the range over rounds is printed
beside it. The server's CPU per RPC is printed too: it is steadier than throughput here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import programs
import workload
from targets import Row, report
from workload import CONCURRENCY, Measured, process_cpu_seconds

from callqos.server.testing import ServerProcess

ROUNDS = 3
ROUND_SECONDS = 2.0

Load = Callable[[str, float, Callable[[], float] | None], Awaitable[Measured]]


@dataclass(frozen=True)
class Variant:
    label: str
    server: str  # which server of `servers` it is measured on
    load: Load
    rpcs_per_op: int  # RPCs in one operation of `load` (a make+drop cycle is two)


VARIANTS = {
    "echo": Variant("bare grpc.aio echo (baseline)", "echo", workload.echo, 1),
    "make_drop": Variant("CreateCall + DropCall, tracing off", "off", workload.make_drop, 2),
    "make_drop_sampled": Variant("CreateCall + DropCall, 10% sampled", "sampled", workload.make_drop, 2),
    "make_drop_all": Variant("CreateCall + DropCall, all sampled", "all", workload.make_drop, 2),
    "renegotiate": Variant("RenegotiateCall", "off", workload.renegotiate, 1),
    "get": Variant("GetCall", "off", workload.get, 1),
}


@dataclass
class Series:
    """One variant over the rounds: RPCs/s and the server's CPU µs per RPC, one of each per round."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

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


async def run(seconds: float = ROUND_SECONDS, rounds: int = ROUNDS) -> dict[str, Series]:
    results = {name: Series() for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="callqos-bench-") as tmp:
        started = servers(Path(tmp))
        async with contextlib.AsyncExitStack() as stack:
            for server in started.values():
                await stack.enter_async_context(server)
            order = list(VARIANTS)
            for round_ in range(rounds):
                # Rotated each round: a traced server's exporter may still be encoding its backlog
                # while the next variant is measured.
                for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
                    variant = VARIANTS[name]
                    server = started[variant.server]
                    measured = await variant.load(server.target, seconds, process_cpu_seconds(server.pid))
                    results[name].rates.append(measured.rate * variant.rpcs_per_op)
                    if measured.probe_per_op is not None:
                        results[name].cpu_us.append(1e6 * measured.probe_per_op / variant.rpcs_per_op)
    return results


def _per_round(results: dict[str, Series], name: str, base: str) -> list[float]:
    return [rate / baseline for rate, baseline in zip(results[name].rates, results[base].rates, strict=True)]


def rows(results: dict[str, Series]) -> list[Row]:
    """The targets this benchmark measures, each the median of its per-round figures."""
    judged = []
    for key in ("make_drop", "make_drop_sampled", "renegotiate", "get"):
        ratios = _per_round(results, key, "echo")
        judged.append(Row(key, statistics.median(ratios), min(ratios), max(ratios)))
    for key, traced in (("tracing_sampled", "make_drop_sampled"), ("tracing_all", "make_drop_all")):
        overheads = [1 - ratio for ratio in _per_round(results, traced, "make_drop")]
        judged.append(Row(key, statistics.median(overheads), min(overheads), max(overheads)))
    return judged


def table(results: dict[str, Series]) -> str:
    echo = results["echo"]
    lines = [
        f"{CONCURRENCY} RPCs in flight; servers and load generator on the same {os.cpu_count()}-core machine; "
        f"median of {len(echo.rates)} alternating rounds",
        f"{'':<40}{'RPC/s':>8}  {'ratio to echo':<22}{'server CPU per RPC':>20}",
    ]
    for name, variant in VARIANTS.items():
        series = results[name]
        ratios = _per_round(results, name, "echo")
        spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        cpu = f"{series.cpu_us_per_rpc:.0f} µs ({series.cpu_us_per_rpc / echo.cpu_us_per_rpc:.1f}x echo)"
        lines.append(f"{variant.label:<40}{series.rate:>8.0f}  {spread:<22}{cpu:>20}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=ROUND_SECONDS, help="measurement window per variant and round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--results", type=Path, help="append the judged rows to this file (JSON lines)")
    args = parser.parse_args()
    results = asyncio.run(run(args.seconds, args.rounds))
    print(table(results))
    print(report(rows(results), args.results))


if __name__ == "__main__":
    main()
