"""A grpc.aio proxy that forwards the callqos API to a real server and injects exactly one fault
that lives at the API level (validation, idempotency, events, error codes) — faults a provider
plugin cannot produce because the server does that work.

    python -m callqos.conformance.broken.proxy --fault reorders-events --upstream 127.0.0.1:50051 \
        --listen 127.0.0.1:0 --port-file /tmp/port
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from callqos.v1 import callqos_service_pb2 as svc, callqos_service_pb2_grpc as svc_grpc

UNARY = ("CreateCall", "GetCall", "ListCalls", "RenegotiateCall", "DropCall", "GetProvider", "ListProviders",
         "ListLinks", "UpdateLink")
FAULTS = ("none", "accepts-invalid-peak", "double-reserves-request-id", "never-emits-events", "reorders-events",
          "wrong-error-codes")
FORWARDED_HEADERS = ("x-callqos-principal",)


class Proxy(svc_grpc.CallQosServiceServicer):
    def __init__(self, upstream: grpc.aio.Channel, fault: str) -> None:
        self.up = svc_grpc.CallQosServiceStub(upstream)
        self.fault = fault

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in context.invocation_metadata() or () if k in FORWARDED_HEADERS)

    async def _abort(self, context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError) -> None:
        code, trailing = error.code(), tuple(error.trailing_metadata() or ())
        if self.fault == "wrong-error-codes" and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            code = grpc.StatusCode.INTERNAL  # the fault: a refusal reported as a server failure
        await context.abort(code, error.details() or "", trailing_metadata=trailing)

    async def _forward(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if method == "CreateCall":
            request = self._tamper_create(request)
        try:
            return await getattr(self.up, method)(request, metadata=self._metadata(context), timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            await self._abort(context, error)

    def _tamper_create(self, request: svc.CreateCallRequest) -> svc.CreateCallRequest:
        if self.fault == "double-reserves-request-id":
            request.request_id = ""  # every retry becomes a new call
        if self.fault == "accepts-invalid-peak":
            for direction in (request.call.requested_qos.sending, request.call.requested_qos.receiving):
                if (direction.HasField("peak_bandwidth_bytes_per_second") and direction.HasField("token_rate_bytes_per_second")
                        and direction.peak_bandwidth_bytes_per_second < direction.token_rate_bytes_per_second):
                    direction.ClearField("peak_bandwidth_bytes_per_second")  # "repairs" it instead of refusing
        return request

    async def WatchEvents(self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[svc.WatchEventsResponse]:
        if self.fault == "never-emits-events":
            await asyncio.Event().wait()
        stream = self.up.WatchEvents(request, metadata=self._metadata(context))
        held: svc.WatchEventsResponse | None = None
        try:
            while True:
                try:
                    # A held event is flushed if nothing follows it soon.
                    message = await asyncio.wait_for(stream.read(), 0.5) if held is not None else await stream.read()
                except TimeoutError:
                    yield held
                    held = None
                    continue
                if message is grpc.aio.EOF:
                    break
                if self.fault != "reorders-events":
                    yield message
                elif held is None:
                    held = message
                else:
                    yield message  # the fault: the later event first
                    yield held
                    held = None
        except grpc.aio.AioRpcError as error:
            await self._abort(context, error)
        finally:
            stream.cancel()


def _bind(name: str) -> Any:
    async def method(self: Proxy, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._forward(name, request, context)

    method.__name__ = name
    return method


for _name in UNARY:
    setattr(Proxy, _name, _bind(_name))


async def serve(fault: str, upstream: str, listen: str, port_file: Path | None) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    svc_grpc.add_CallQosServiceServicer_to_server(Proxy(channel, fault), server)
    port = server.add_insecure_port(listen)
    await server.start()
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callqos.conformance.broken.proxy")
    parser.add_argument("--fault", choices=FAULTS, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of a real callqos server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.fault, args.upstream, args.listen, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
