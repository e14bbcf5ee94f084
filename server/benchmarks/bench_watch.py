"""`make bench` (and `make bench-watch` alone): WatchEvents at scale, measured from outside the
server, with load-generator processes of its own.

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

Watchers read raw bytes (no protobuf parsing until the measurement is over) so that the load
generator spends as little of the shared CPU as it can. Every phase is bounded in time; every
address is loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from targets import Row, report
from workload import qos

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
_RATES = itertools.count(1)


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
    if events:
        await asyncio.wait(tasks, timeout=deadline_seconds)
    delays: list[float] = []
    missing = 0
    for stream in streams:
        if stream.failed:
            continue
        missing += events - len(stream.received)
        for received_ns, raw in stream.received:
            event = svc.WatchEventsResponse.FromString(raw).event
            delays.append((received_ns - event.create_time.ToNanoseconds()) / 1e6)
    _say(done=True, delays_ms=delays, missing=missing)
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

    def percentile(self, fraction: float) -> float:
        if not self.delays_ms:
            return float("nan")
        ordered = sorted(self.delays_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _producer(target: str) -> tuple[grpc.aio.Channel, svc_grpc.CallQosServiceStub, str]:
    channel = grpc.aio.insecure_channel(target)
    stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
    call = await stub.CreateCall(
        svc.CreateCallRequest(call=call_pb2.Call(destination="sip:watched", requested_qos=qos(1000)))
    )
    return channel, stub, call.name


async def phase(
    server: ServerProcess,
    stub: svc_grpc.CallQosServiceStub,
    call: str,
    watchers: int,
    events: int,
    rate: float,
    processes: int,
) -> Phase:
    """Open `watchers` streams over `processes` load generators, then send `events` events at `rate`."""
    result = Phase(watchers)
    before = server_rss_kib(server.pid)
    shares = [watchers // processes + (1 if i < watchers % processes else 0) for i in range(processes)]
    deadline = events / rate + DRAIN_SECONDS
    generators = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "bench_watch.py"),
            "--generator",
            server.target,
            "--index",
            str(i),
            "--watchers",
            str(share),
            "--events",
            str(events),
            "--deadline",
            str(deadline),
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
        for _ in range(events):
            # A new rate each time (a renegotiation to the rate the call has changes nothing).
            await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call, qos=qos(1000 + next(_RATES))))
            await asyncio.sleep(1 / rate)
        for generator in generators:
            assert generator.stdout is not None
            done = json.loads(await asyncio.wait_for(generator.stdout.readline(), deadline + 30))
            result.delays_ms.extend(done["delays_ms"])
            result.missing += done["missing"]
        for generator in generators:
            await asyncio.wait_for(generator.wait(), 30)
    finally:
        for generator in generators:
            if generator.returncode is None:
                generator.kill()
                await generator.wait()
    return result


async def warm_up(server: ServerProcess, stub: svc_grpc.CallQosServiceStub, call: str) -> None:
    """One small phase first, so that the measured ones do not pay for first-time allocations."""
    await phase(server, stub, call, 50, 2, 20.0, 1)


async def run(watchers: int, events: int, rate: float, open_at_once: int, processes: int) -> tuple[Phase, Phase | None]:
    with tempfile.TemporaryDirectory(prefix="callqos-bench-watch-") as tmp:
        server = ServerProcess(
            Path(tmp),
            storage="sqlite",
            log_level="warning",
            max_watchers=max(watchers, open_at_once, 1000),
        )
        async with server:
            channel, stub, call = await _producer(server.target)
            try:
                await warm_up(server, stub, call)
                delivery = await phase(server, stub, call, watchers, events, rate, processes)
                at_once = await phase(server, stub, call, open_at_once, 3, 1.0, processes) if open_at_once else None
            finally:
                await channel.close()
    return delivery, at_once


def describe(delivery: Phase, at_once: Phase | None) -> str:
    lines = [
        f"{delivery.watchers:,} watchers: opened {delivery.opened:,} in {delivery.open_seconds:.1f}s; "
        f"{len(delivery.delays_ms):,} deliveries ({delivery.missing} missing): p50 {delivery.percentile(0.5):.1f} ms, "
        f"p99 {delivery.percentile(0.99):.1f} ms, max {max(delivery.delays_ms, default=float('nan')):.1f} ms; "
        f"server RSS {delivery.rss_per_watcher_kib:.1f} KiB per open watcher"
    ]
    if at_once is not None:
        failed = ", ".join(f"{code} {count}" for code, count in at_once.failed.most_common()) or "none failed"
        lines.append(
            f"{at_once.watchers:,} watchers opened at once: {at_once.opened:,} opened in {at_once.open_seconds:.1f}s "
            f"({failed}); one event to all: p50 {at_once.percentile(0.5):.0f} ms, "
            f"p99 {at_once.percentile(0.99):.0f} ms "
            f"({at_once.missing} missing); server RSS {at_once.rss_per_watcher_kib:.1f} KiB per open watcher"
        )
    return "\n".join(lines)


def rows(delivery: Phase, at_once: Phase | None) -> list[Row]:
    p99 = delivery.percentile(0.99)
    judged = [
        Row("watch_p99", p99, p99, p99, note=f"p50 {delivery.percentile(0.5):.1f} ms, {delivery.missing} missing"),
        Row("watch_memory", delivery.rss_per_watcher_kib, delivery.rss_per_watcher_kib, delivery.rss_per_watcher_kib),
    ]
    if at_once is not None:
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
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # `make bench`'s BENCH_ARGS: not used here
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help="append the judged rows to this file (JSON lines)")
    parser.add_argument("--generator", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        asyncio.run(generate(args.generator, args.index, args.watchers, args.events, args.deadline))
        return
    delivery, at_once = asyncio.run(run(args.watchers, args.events, args.rate, args.open_at_once, args.processes))
    print(describe(delivery, at_once))
    print(report(rows(delivery, at_once), args.results))


if __name__ == "__main__":
    main()
