"""`make bench` (first of two): callqos throughput against a bare grpc.aio echo server measured in
the same run.

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


if __name__ == "__main__":
    main()
