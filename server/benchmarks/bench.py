"""`make bench` (first of two): callqos throughput against a bare grpc.aio echo server measured in
the same run.

Each server runs in its own process (as in production) with the load generator in this one, so
the ratios compare like with like on the same noisy machine at the same moment. Printed:
- echo: bare grpc.aio unary RPCs/s (the baseline);
- make+drop: CreateCall + DropCall cycles/s against the default server (SQLite file storage,
  reference provider), and its ratio in RPCs to the echo baseline;
- renegotiate: RenegotiateCall/s (alternating up and down on connected calls), and its ratio;
- remote provider: CreateCall + DropCall with the reference provider out of process (served by
  `callqos-provider serve reference`, which the server launches and talks to over a Unix socket,
  callqos.provider.v1) against the same provider in process, measured in alternating rounds in
  the same run, with the CPU per cycle of the server (plus the provider process, out of process).
  Goal: out of process at least 0.7 of in process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
from pathlib import Path

import grpc
import workload
from workload import CONCURRENCY, Measured, measure

from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ECHO_METHOD = "/bench.Echo/Echo"


# -- the baseline server ----------------------------------------------------------------------
async def _echo_server(listen: str, port_file: Path) -> None:
    """A bare grpc.aio server with one unary method that returns its request: no interceptors,
    no health or reflection service, nothing stored."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 -- once, before the load starts
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# -- load -------------------------------------------------------------------------------------
async def bench_echo(target: str, seconds: float) -> Measured:
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(ECHO_METHOD)
        payload = workload.qos(1000).SerializeToString()

        async def one(_: int) -> int:
            await echo(payload)
            return 1

        return await measure(one, seconds)


async def bench_renegotiate(target: str, seconds: float) -> Measured:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = [
            (
                await stub.CreateCall(
                    svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=workload.qos(1000)))
                )
            ).name
            for _ in range(CONCURRENCY)
        ]
        flip = [False] * CONCURRENCY

        async def renegotiate(index: int) -> int:
            flip[index] = not flip[index]
            await stub.RenegotiateCall(
                svc.RenegotiateCallRequest(name=calls[index], qos=workload.qos(2000 if flip[index] else 1000))
            )
            return 1

        return await measure(renegotiate, seconds)


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


# -- the run ----------------------------------------------------------------------------------
async def run(seconds: float) -> dict[str, float]:
    results: dict[str, float] = {}
    # The echo server speaks no grpc.health.v1 (it is the bare baseline): its port file says it is up.
    echo = ServerProcess(program=workload.script("bench.py", "--echo-server"), health_check=False)
    server = ServerProcess(storage="sqlite", log_level="warning")  # the default server, as `make run` serves
    async with echo, server:
        results["echo_rpcs_per_s"] = (await bench_echo(echo.target, seconds)).rate
        results["make_drop_cycles_per_s"] = (await workload.make_drop(server.target, seconds)).rate
        results["renegotiations_per_s"] = (await bench_renegotiate(server.target, seconds)).rate
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
    parser.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(_echo_server(args.listen, args.port_file))
        return
    print(report(asyncio.run(run(args.seconds))))
    print()
    print(report_remote(asyncio.run(run_remote(args.seconds))))


if __name__ == "__main__":
    main()
