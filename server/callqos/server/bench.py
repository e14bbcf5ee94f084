"""`make bench`: callqos throughput against a bare grpc.aio echo server measured in the same run.

Each server runs in its own process (as in production) with the load generator in this one, so
the ratios compare like with like on the same noisy machine at the same moment. Printed:
- echo: bare grpc.aio unary RPCs/s (the baseline);
- make+drop: CreateCall + DropCall cycles/s against the default server (SQLite file storage,
  reference provider), and its ratio in RPCs to the echo baseline;
- renegotiate: RenegotiateCall/s (alternating up and down on connected calls), and its ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ECHO_METHOD = "/bench.Echo/Echo"
CONCURRENCY = 16
WARMUP_SECONDS = 1.0


# -- the baseline server ----------------------------------------------------------------------
async def _echo_server(port_file: Path) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 -- once, before the load starts
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# -- load -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    rate: float  # operations per second over the measurement window
    probe_per_op: float | None = None  # what the probe's reading grew by, per operation


async def _measure(
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
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    operations = sum(counts)
    per_op = (probe() - probed) / operations if probe and operations else None
    return Measured(operations / elapsed, per_op)


def process_cpu_seconds(pid: int) -> Callable[[], float]:
    """A probe: CPU seconds (user + system, all threads) process `pid` has used so far (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)

    return read


def _qos(rate: int) -> flowspec_pb2.QosSpec:
    ST = flowspec_pb2.ServiceType
    return flowspec_pb2.QosSpec(
        sending=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_CONTROLLED_LOAD, token_rate_bytes_per_second=rate),
        receiving=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
    )


async def bench_echo(target: str, seconds: float) -> Measured:
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(ECHO_METHOD)
        payload = _qos(1000).SerializeToString()

        async def one(_: int) -> int:
            await echo(payload)
            return 1

        return await _measure(one, seconds)


async def bench_make_drop(target: str, seconds: float, probe: Callable[[], float] | None = None) -> Measured:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        request = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=_qos(1000)))

        async def cycle(_: int) -> int:
            call = await stub.CreateCall(request)
            await stub.DropCall(svc.DropCallRequest(name=call.name))
            return 1

        return await _measure(cycle, seconds, probe)


async def bench_renegotiate(target: str, seconds: float) -> Measured:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        calls = [
            (
                await stub.CreateCall(
                    svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=_qos(1000)))
                )
            ).name
            for _ in range(CONCURRENCY)
        ]
        flip = [False] * CONCURRENCY

        async def renegotiate(index: int) -> int:
            flip[index] = not flip[index]
            await stub.RenegotiateCall(
                svc.RenegotiateCallRequest(name=calls[index], qos=_qos(2000 if flip[index] else 1000))
            )
            return 1

        return await _measure(renegotiate, seconds)


# -- processes ----------------------------------------------------------------------------------
class ServerProcess:
    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port_file = workdir / f"port-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [sys.executable, *args, "--port-file", str(self.port_file)],
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    async def target(self) -> str:
        for _ in range(400):
            if self.port_file.exists() and self.port_file.read_text().strip():
                return f"127.0.0.1:{self.port_file.read_text().strip()}"
            await asyncio.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def callqos_server(workdir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    data = workdir / f"data-{time.monotonic_ns()}"
    return ServerProcess(
        ["-m", "callqos.server", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--log-level", "warning"],
        workdir,
        env,
    )


async def run(seconds: float) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        echo = ServerProcess(["-m", "callqos.server.bench", "--echo-server"], workdir)
        server = callqos_server(workdir)
        try:
            echo_target, target = await echo.target(), await server.target()
            results["echo_rpcs_per_s"] = (await bench_echo(echo_target, seconds)).rate
            results["make_drop_cycles_per_s"] = (await bench_make_drop(target, seconds)).rate
            results["renegotiations_per_s"] = (await bench_renegotiate(target, seconds)).rate
        finally:
            echo.stop()
            server.stop()
    return results


def report(results: dict[str, float]) -> str:
    echo = results["echo_rpcs_per_s"]
    lines = [
        f"concurrency {CONCURRENCY}, server and load generator on the same {os.cpu_count()}-core machine",
        f"{'bare grpc.aio echo':<34}{echo:>10.0f} RPC/s   (baseline 1.00)",
        f"{'CreateCall + DropCall':<34}{results['make_drop_cycles_per_s']:>10.0f} cycles/s "
        f"(ratio {2 * results['make_drop_cycles_per_s'] / echo:.2f} of baseline RPC/s; 2 RPCs per cycle)",
        f"{'RenegotiateCall':<34}{results['renegotiations_per_s']:>10.0f} RPC/s   "
        f"(ratio {results['renegotiations_per_s'] / echo:.2f})",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per benchmark")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(_echo_server(args.port_file))
        return
    print(report(asyncio.run(run(args.seconds))))
    # Tracing overhead (issue 4): its own servers, off and on, measured in alternating rounds.
    from callqos.server import bench_tracing

    print(bench_tracing.report(asyncio.run(bench_tracing.run(min(args.seconds, bench_tracing.ROUND_SECONDS)))))


if __name__ == "__main__":
    main()
