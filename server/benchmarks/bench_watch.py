"""`make bench` (and `make bench-watch` alone): WatchEvents at scale, measured from outside the
server, with load-generator processes of its own, on the default callqos server and on a bare
grpc.aio fan-out server (`programs.py fanout`: the same method, streams held open, one message
encoded once and sent to all of them, nothing else) measured in the same run: the floor that
grpc.aio itself sets on this machine, as the echo server is for unary RPCs.

1. Delivery: `--watchers` streams (1,000) are opened, spread over `--processes` load-generator
   processes, each stream on one of that process's connections (at most STREAMS_PER_CONNECTION
   per connection, one principal per connection). Once every stream is open, this process
   renegotiates one connected call `--events` times at `--rate` per second: each renegotiation is
   one QoS event, which every watcher receives. A watcher's delivery time of an event is when its
   process read the message (the wall clock) less the event's `create_time` (the server's wall
   clock when it made the event, before committing it): same machine, same clock. Printed: p50
   and p99 over every (watcher, event) delivery, and the server's RSS growth per open stream.
2. Opening at once: `--open-at-once` streams (10,000) are opened at the same moment, every
   process starting all of its streams without waiting for any; counted: how many opened (the
   server sent the start-sequence header) and how the others failed (gRPC status). Then a few
   events go to all of them (p50/p99 printed, not judged) and their RSS per stream is printed.

The load generators are watchgen/ (Go, built here with `go build`; its module cache is the Go
client's) where Go is installed, else this script (`--generator-kind python`): reading a message
costs a Python grpc.aio client more CPU than the server spends sending it, and on a shared 2-core
machine that CPU is taken from the server being measured (both are printed: CPU per delivery).
The Python generator reads raw bytes and parses nothing until the measurement is over. Every
phase is bounded in time; every address is loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import programs
from targets import Row, report
from workload import process_cpu_seconds, qos

from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import PRINCIPAL_HEADER, START_SEQUENCE_HEADER

HERE = Path(__file__).resolve().parent
WATCH_METHOD = "/callqos.v1.CallQosService/WatchEvents"
# Below the server's max_concurrent_streams (256), so that no stream waits for a free one.
STREAMS_PER_CONNECTION = 200
OPEN_TIMEOUT_SECONDS = 120.0
DRAIN_SECONDS = 30.0  # after the last event, how long a watcher may take to receive everything
SETTLE_SECONDS = 1.0  # before reading the server's RSS
ROUNDS = 3
SERVERS = {"bare": "bare grpc.aio fan-out (baseline)", "callqos": "callqos (SQLite, tracing off)"}


# -- the load generator (a process of its own) ----------------------------------------------
@dataclass
class Stream:
    received: list[tuple[int, bytes]] = field(default_factory=list)  # (wall clock ns, raw message)
    failed: str = ""  # the status code's name when it did not open


async def _watch(channel: grpc.aio.Channel, principal: str, stream: Stream, events: int, opened: asyncio.Event) -> None:
    call = channel.unary_stream(WATCH_METHOD)(
        svc.WatchEventsRequest().SerializeToString(), metadata=((PRINCIPAL_HEADER, principal),)
    )
    try:
        metadata = await call.initial_metadata()
        if not any(key == START_SEQUENCE_HEADER for key, _ in metadata or ()):
            stream.failed = (await call.code()).name
            return
        opened.set()
        if not events:
            await asyncio.Event().wait()  # held open until cancelled
        async for raw in call:
            stream.received.append((time.time_ns(), raw))
            if len(stream.received) >= events:
                break
    except grpc.aio.AioRpcError as error:
        stream.failed = stream.failed or error.code().name
    finally:
        call.cancel()


async def generate(target: str, index: int, watchers: int, events: int, deadline_seconds: float) -> None:
    """Open `watchers` streams at once; report on stdout when all have opened or failed; then read
    `events` events on each (or stop at the deadline) and report the delivery times."""
    connections = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-watchers // STREAMS_PER_CONNECTION))
    ]
    streams = [Stream() for _ in range(watchers)]
    opened = [asyncio.Event() for _ in range(watchers)]
    started = time.monotonic()
    tasks = [
        asyncio.create_task(
            _watch(
                connections[i // STREAMS_PER_CONNECTION],
                f"watcher-{index}-{i // STREAMS_PER_CONNECTION}",
                streams[i],
                events,
                opened[i],
            )
        )
        for i in range(watchers)
    ]

    async def settled(i: int) -> None:
        waiting = asyncio.create_task(opened[i].wait())
        await asyncio.wait((waiting, tasks[i]), return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(settled(i) for i in range(watchers))), OPEN_TIMEOUT_SECONDS)
    failures = Counter(
        stream.failed or "DEADLINE_EXCEEDED" for i, stream in enumerate(streams) if not opened[i].is_set()
    )
    _say(
        ready=True,
        opened=sum(event.is_set() for event in opened),
        failed=dict(failures),
        seconds=time.monotonic() - started,
    )
    cpu_before = time.process_time()
    if events:
        await asyncio.wait(tasks, timeout=deadline_seconds)
    cpu_seconds = time.process_time() - cpu_before
    delays: list[float] = []
    missing = 0
    for stream in streams:
        if stream.failed:
            continue
        missing += events - len(stream.received)
        for received_ns, raw in stream.received:
            event = svc.WatchEventsResponse.FromString(raw).event
            delays.append((received_ns - event.create_time.ToNanoseconds()) / 1e6)
    _say(done=True, delays_ms=delays, missing=missing, cpu_seconds=cpu_seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for connection in connections:
        await connection.close()


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- the run ----------------------------------------------------------------------------------
def server_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Phase:
    watchers: int
    opened: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    open_seconds: float = 0.0
    delays_ms: list[float] = field(default_factory=list)
    missing: int = 0
    rss_per_watcher_kib: float = 0.0
    server_cpu_seconds: float = 0.0  # while the events were sent and read
    generator_cpu_seconds: float = 0.0

    def per_delivery_us(self, cpu_seconds: float) -> float:
        return 1e6 * cpu_seconds / max(len(self.delays_ms), 1)

    def percentile(self, fraction: float) -> float:
        if not self.delays_ms:
            return float("nan")
        ordered = sorted(self.delays_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def build_go_generator(directory: Path) -> Path | None:
    """watchgen/ (the Go load generator) built into `directory`; None without a Go toolchain."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = directory / "watchgen"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=HERE / "watchgen", check=True)
    return binary


def generator_command(
    kind: Path | None, target: str, index: int, watchers: int, events: int, deadline: float
) -> list[str]:
    """The command of one load generator: the Go one (`kind`, its binary) or this script's."""
    if kind is not None:
        return [
            str(kind),
            "-target",
            target,
            "-index",
            str(index),
            "-watchers",
            str(watchers),
            "-events",
            str(events),
            "-deadline",
            str(deadline),
            "-streams-per-connection",
            str(STREAMS_PER_CONNECTION),
        ]
    return [
        sys.executable,
        str(HERE / "bench_watch.py"),
        "--generator",
        target,
        "--index",
        str(index),
        "--watchers",
        str(watchers),
        "--events",
        str(events),
        "--deadline",
        str(deadline),
    ]


Trigger = Callable[[], Awaitable[object]]


async def phase(
    server: ServerProcess,
    kind: Path | None,
    trigger: Trigger,
    watchers: int,
    events: int,
    rate: float,
    processes: int,
) -> Phase:
    """Open `watchers` streams over `processes` load generators (`kind`: the Go binary, or None for
    Python ones), then make `events` events (`trigger` makes one) at `rate` per second."""
    result = Phase(watchers)
    before = server_rss_kib(server.pid)
    shares = [watchers // processes + (1 if i < watchers % processes else 0) for i in range(processes)]
    deadline = events / rate + DRAIN_SECONDS
    generators = [
        await asyncio.create_subprocess_exec(
            *generator_command(kind, server.target, i, share, events, deadline),
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 28,  # the delivery report is one line of every delivery time
        )
        for i, share in enumerate(shares)
        if share
    ]
    try:
        for generator in generators:
            assert generator.stdout is not None
            line = await asyncio.wait_for(generator.stdout.readline(), OPEN_TIMEOUT_SECONDS + 30)
            ready = json.loads(line)
            result.opened += ready["opened"]
            result.failed.update(ready["failed"])
            result.open_seconds = max(result.open_seconds, ready["seconds"])
        await asyncio.sleep(SETTLE_SECONDS)
        result.rss_per_watcher_kib = (server_rss_kib(server.pid) - before) / max(result.opened, 1)
        server_cpu = process_cpu_seconds(server.pid)
        cpu_before = server_cpu()
        for _ in range(events):
            await trigger()
            await asyncio.sleep(1 / rate)
        for generator in generators:
            assert generator.stdout is not None
            done = json.loads(await asyncio.wait_for(generator.stdout.readline(), deadline + 30))
            result.delays_ms.extend(done["delays_ms"])
            result.missing += done["missing"]
            result.generator_cpu_seconds += done["cpu_seconds"]
        result.server_cpu_seconds = server_cpu() - cpu_before
        for generator in generators:
            await asyncio.wait_for(generator.wait(), 30)
    finally:
        for generator in generators:
            if generator.returncode is None:
                generator.kill()
                await generator.wait()
    return result


@dataclass
class Measured:
    """One server's phases: the delivery phase once per round, and opening at once."""

    delivery: list[Phase] = field(default_factory=list)
    at_once: Phase | None = None

    def p99s(self) -> list[float]:
        return [each.percentile(0.99) for each in self.delivery]

    def memory(self) -> list[float]:
        """RSS growth per open stream in the first round, and when opening at once. Later rounds
        reuse the memory the first one's streams left to the allocator, so they show less."""
        return [phase.rss_per_watcher_kib for phase in (self.delivery[0], self.at_once) if phase is not None]


@contextlib.asynccontextmanager
async def event_trigger(server: ServerProcess, bare: bool) -> AsyncIterator[Trigger]:
    """How to make one event that every watcher receives: the bare server's Publish, or callqos's
    RenegotiateCall of a connected call (one QOS_CHANGED event), each time to a new rate."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        if bare:
            publish = channel.unary_unary(programs.PUBLISH_METHOD)
            yield lambda: publish(b"")
            return
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
        request = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:watched", requested_qos=qos(1000)))
        call = (await stub.CreateCall(request)).name
        rates = itertools.count(1001)
        yield lambda: stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call, qos=qos(next(rates))))


async def run(
    watchers: int,
    events: int,
    rate: float,
    open_at_once: int,
    processes: int,
    generator: str = "go",
    rounds: int = ROUNDS,
) -> dict[str, Measured]:
    """The bare grpc.aio fan-out ("bare") and the default callqos server ("callqos"), each with
    `rounds` delivery phases (alternating between the two servers) and one opening at once."""
    results = {name: Measured() for name in SERVERS}
    with tempfile.TemporaryDirectory(prefix="callqos-bench-watch-") as tmp:
        kind = build_go_generator(Path(tmp)) if generator == "go" else None
        servers = {
            "bare": ServerProcess(Path(tmp) / "bare", program=programs.fanout_program(), health_check=False),
            "callqos": ServerProcess(
                Path(tmp) / "callqos",
                program=programs.callqos_program(),
                storage="sqlite",
                log_level="warning",
                max_watchers=max(watchers, open_at_once, 1000),
            ),
        }
        async with contextlib.AsyncExitStack() as stack:
            triggers = {}
            for name, server in servers.items():
                await stack.enter_async_context(server)
                triggers[name] = await stack.enter_async_context(event_trigger(server, name == "bare"))
                # One small phase first, so that the measured ones do not pay for first allocations.
                await phase(server, kind, triggers[name], 50, 2, 20.0, 1)
            for _ in range(rounds):
                for name, server in servers.items():
                    results[name].delivery.append(
                        await phase(server, kind, triggers[name], watchers, events, rate, processes)
                    )
            if open_at_once:
                for name, server in servers.items():
                    results[name].at_once = await phase(server, kind, triggers[name], open_at_once, 3, 1.0, processes)
    return results


def _range(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):.1f} {unit} ({min(values):.1f}-{max(values):.1f})"


def describe(results: dict[str, Measured]) -> str:
    lines = []
    for name, measured in results.items():
        label = SERVERS[name]
        last = measured.delivery[-1]
        cpu_server = [each.per_delivery_us(each.server_cpu_seconds) for each in measured.delivery]
        cpu_generators = [each.per_delivery_us(each.generator_cpu_seconds) for each in measured.delivery]
        lines.append(
            f"{label}, {last.watchers:,} watchers, median over {len(measured.delivery)} rounds (range): "
            f"p50 {_range([each.percentile(0.5) for each in measured.delivery], 'ms')}, "
            f"p99 {_range(measured.p99s(), 'ms')}, "
            f"{sum(each.missing for each in measured.delivery)} missing; "
            f"RSS {measured.delivery[0].rss_per_watcher_kib:.1f} KiB per open stream; CPU per delivery: "
            f"server {statistics.median(cpu_server):.0f} µs, load generators {statistics.median(cpu_generators):.0f} µs"
        )
        at_once = measured.at_once
        if at_once is not None:
            failed = ", ".join(f"{code} {count}" for code, count in at_once.failed.most_common()) or "none failed"
            lines.append(
                f"{label}, {at_once.watchers:,} opened at once: {at_once.opened:,} opened in "
                f"{at_once.open_seconds:.1f}s ({failed}); an event to all: p50 {at_once.percentile(0.5):.0f} ms, "
                f"p99 {at_once.percentile(0.99):.0f} ms ({at_once.missing} missing); "
                f"RSS {at_once.rss_per_watcher_kib:.1f} KiB per open stream"
            )
    return "\n".join(lines)


def rows(results: dict[str, Measured]) -> list[Row]:
    callqos, bare = results["callqos"], results["bare"]
    p99s, memory = callqos.p99s(), callqos.memory()
    judged = [
        Row(
            "watch_p99",
            statistics.median(p99s),
            min(p99s),
            max(p99s),
            note=f"bare grpc.aio fan-out: {statistics.median(bare.p99s()):.1f} ms",
        ),
        Row(
            "watch_memory",
            statistics.median(memory),
            min(memory),
            max(memory),
            note=f"first round and opening at once; bare grpc.aio stream: {_range(bare.memory(), 'KiB')}",
        ),
    ]
    if callqos.at_once is not None:
        at_once = callqos.at_once
        failed = at_once.watchers - at_once.opened
        note = ", ".join(f"{code} {count}" for code, count in at_once.failed.most_common())
        judged.append(Row("watch_open_failed", failed, failed, failed, note=note))
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000, help="streams the delivery phase opens")
    parser.add_argument("--events", type=int, default=20, help="events sent to all of them")
    parser.add_argument("--rate", type=float, default=10.0, help="events per second")
    parser.add_argument("--open-at-once", type=int, default=10_000, help="streams opened at the same moment (0: skip)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="load-generator processes")
    parser.add_argument(
        "--generator-kind",
        choices=("go", "python"),
        default="go" if shutil.which("go") else "python",
        help="the load generators: watchgen/ (Go; the default where Go is installed) or this script",
    )
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # `make bench`'s BENCH_ARGS: not used here
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="delivery phases per server")
    parser.add_argument("--results", type=Path, help="append the judged rows to this file (JSON lines)")
    parser.add_argument("--generator", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        asyncio.run(generate(args.generator, args.index, args.watchers, args.events, args.deadline))
        return
    results = asyncio.run(
        run(args.watchers, args.events, args.rate, args.open_at_once, args.processes, args.generator_kind, args.rounds)
    )
    print(describe(results))
    print(report(rows(results), args.results))


if __name__ == "__main__":
    main()
