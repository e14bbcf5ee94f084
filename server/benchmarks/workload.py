"""What the benchmarks drive and how they measure it: CONCURRENCY loops of work, bounded in time,
counted after a warm-up; the server process's CPU per operation; and the RPCs measured (echo,
CreateCall + DropCall, RenegotiateCall, GetCall). The bench_*.py scripts import this module; none
imports another.

The benchmarks are scripts (run by `make bench`), not part of the shipped server package: each
server they measure is started as its own process by `callqos.server.testing.ServerProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from programs import ECHO_METHOD

from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

CONCURRENCY = 16
WARMUP_SECONDS = 1.0
HERE = Path(__file__).resolve().parent


def script(name: str, *arguments: str) -> list[str]:
    """The command running benchmark script `name` of this directory (e.g. as a server program)."""
    return [sys.executable, str(HERE / name), *arguments]


@dataclass(frozen=True)
class Measured:
    rate: float  # operations per second over the measurement window
    probe_per_op: float | None = None  # what the probe's reading grew by, per operation
    own_cpu_per_op: float = 0.0  # CPU seconds this process (the load generator) spent per operation


async def measure(
    work: Callable[[int], Awaitable[int]], seconds: float, probe: Callable[[], float] | None = None
) -> Measured:
    """Run `work(worker)` in CONCURRENCY loops; each returns how many operations it did. Measures
    operations per second over `seconds` after a warm-up, and, given a `probe` (a counter such as
    a process's CPU seconds), how much it grew per operation over the same window."""
    counts = [0] * CONCURRENCY
    measuring = False
    deadline = time.monotonic() + WARMUP_SECONDS + seconds

    async def worker(index: int) -> None:
        while time.monotonic() < deadline:
            done = await work(index)
            if measuring:
                counts[index] += done

    tasks = [asyncio.create_task(worker(i)) for i in range(CONCURRENCY)]
    await asyncio.sleep(WARMUP_SECONDS)
    measuring = True
    probed = probe() if probe else 0.0
    own = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    own = time.process_time() - own
    operations = sum(counts)
    per_op = (probe() - probed) / operations if probe and operations else None
    return Measured(operations / elapsed, per_op, own / operations if operations else 0.0)


def rotated(order: list[str], round_: int) -> list[str]:
    """`order` started `round_` places further each round, so that no variant always follows the
    same one (a traced server's exporter may still be encoding its backlog while the next variant
    is measured)."""
    shift = round_ % len(order)
    return order[shift:] + order[:shift]


def process_cpu_seconds(pid: int) -> Callable[[], float]:
    """A probe: CPU seconds (user + system, all threads) process `pid` has used so far (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)

    return read


def process_tree_cpu_seconds(pid: int) -> Callable[[], float]:
    """A probe: CPU seconds process `pid` and its children have used so far: its own, what its
    children that ended used (reaped by it), and what those still running have used (Linux).
    For PostgreSQL: the postmaster and its backends."""
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(each: int) -> list[str]:
        return Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()

    def read() -> float:
        fields = stat(pid)
        total = sum(int(fields[index]) for index in (11, 12, 13, 14))  # utime, stime, cutime, cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    child = stat(int(entry.name))
                except (FileNotFoundError, ProcessLookupError):
                    continue  # ended meanwhile: its time is in the parent's cutime by now
                if int(child[1]) == pid:  # its ppid (field 4)
                    total += int(child[11]) + int(child[12])
        return total / ticks

    return read


def qos(rate: int) -> flowspec_pb2.QosSpec:
    """CONTROLLED_LOAD sending at `rate` bytes/s, best effort receiving."""
    ST = flowspec_pb2.ServiceType
    return flowspec_pb2.QosSpec(
        sending=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_CONTROLLED_LOAD, token_rate_bytes_per_second=rate),
        receiving=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
    )


async def make_drop(target: str | Sequence[str], seconds: float, probe: Callable[[], float] | None = None) -> Measured:
    """CreateCall + DropCall cycles per second (and `probe` growth per cycle). Given several
    targets (replicas), the loops are spread over them evenly, as a load balancer would."""
    targets = [target] if isinstance(target, str) else list(target)
    async with contextlib.AsyncExitStack() as stack:
        stubs = [
            svc_grpc.CallQosServiceStub(await stack.enter_async_context(grpc.aio.insecure_channel(each)))  # type: ignore[no-untyped-call]
            for each in targets
        ]
        request = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=qos(1000)))

        async def cycle(worker: int) -> int:
            stub = stubs[worker % len(stubs)]
            call = await stub.CreateCall(request)
            await stub.DropCall(svc.DropCallRequest(name=call.name))
            return 1

        return await measure(cycle, seconds, probe)


async def echo(target: str, seconds: float, probe: Callable[[], float] | None = None) -> Measured:
    """Unary RPCs per second against the bare echo server (the request: a serialized QosSpec)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(ECHO_METHOD)
        payload = qos(1000).SerializeToString()

        async def one(_: int) -> int:
            await call(payload)
            return 1

        return await measure(one, seconds, probe)


async def _connected_calls(stub: svc_grpc.CallQosServiceStub) -> list[str]:
    """CONCURRENCY connected calls (one per load loop), made for the benchmark."""
    names = []
    for _ in range(CONCURRENCY):
        request = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=qos(1000)))
        names.append((await stub.CreateCall(request)).name)
    return names


async def renegotiate(target: str, seconds: float, probe: Callable[[], float] | None = None) -> Measured:
    """RenegotiateCall per second, each load loop alternating its own call between two rates."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = await _connected_calls(stub)
        flip = [False] * CONCURRENCY

        async def one(index: int) -> int:
            flip[index] = not flip[index]
            await stub.RenegotiateCall(
                svc.RenegotiateCallRequest(name=calls[index], qos=qos(2000 if flip[index] else 1000))
            )
            return 1

        measured = await measure(one, seconds, probe)
        for name in calls:
            await stub.DropCall(svc.DropCallRequest(name=name))
        return measured


async def get(target: str, seconds: float, probe: Callable[[], float] | None = None) -> Measured:
    """GetCall per second, each load loop reading its own connected call."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = await _connected_calls(stub)
        requests = [svc.GetCallRequest(name=name) for name in calls]

        async def one(index: int) -> int:
            await stub.GetCall(requests[index])
            return 1

        measured = await measure(one, seconds, probe)
        for name in calls:
            await stub.DropCall(svc.DropCallRequest(name=name))
        return measured
