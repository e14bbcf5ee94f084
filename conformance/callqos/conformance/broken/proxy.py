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

from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import ANONYMOUS_PRINCIPAL, PRINCIPAL_HEADER, START_SEQUENCE_HEADER

UNARY = (
    "CreateCall",
    "GetCall",
    "ListCalls",
    "RenegotiateCall",
    "DropCall",
    "GetProvider",
    "ListProviders",
    "ListLinks",
    "UpdateLink",
)
FAULTS = (
    "none",
    "accepts-invalid-peak",
    "double-reserves-request-id",
    "never-emits-events",
    "reorders-events",
    "wrong-error-codes",
    "drops-provider-specific",
    "ignores-etag",
    "ignores-renegotiation-request-id",
    "unknown-cursor-from-now",
    "wrong-start-sequence",
    "owner-only-events",
)
FORWARDED_HEADERS = (PRINCIPAL_HEADER,)


class Proxy(svc_grpc.CallQosServiceServicer):
    def __init__(self, upstream: grpc.aio.Channel, fault: str) -> None:
        self.up = svc_grpc.CallQosServiceStub(upstream)  # type: ignore[no-untyped-call]  # generated, untyped
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
        elif method == "RenegotiateCall":
            self._tamper_renegotiate(request)
        elif method == "DropCall" and self.fault == "ignores-etag":
            request.etag = ""
        try:
            return await getattr(self.up, method)(
                request, metadata=self._metadata(context), timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as error:
            await self._abort(context, error)

    def _tamper_create(self, request: svc.CreateCallRequest) -> svc.CreateCallRequest:
        if self.fault == "double-reserves-request-id":
            request.request_id = ""  # every retry becomes a new call
        if self.fault == "drops-provider-specific" and request.call.HasField("requested_qos"):
            request.call.requested_qos.ClearField("provider_specific")  # the fault: not passed through
        if self.fault == "accepts-invalid-peak":
            for direction in (request.call.requested_qos.sending, request.call.requested_qos.receiving):
                if (
                    direction.HasField("peak_bandwidth_bytes_per_second")
                    and direction.HasField("token_rate_bytes_per_second")
                    and direction.peak_bandwidth_bytes_per_second < direction.token_rate_bytes_per_second
                ):
                    direction.ClearField("peak_bandwidth_bytes_per_second")  # "repairs" it instead of refusing
        return request

    def _tamper_renegotiate(self, request: svc.RenegotiateCallRequest) -> None:
        if self.fault == "drops-provider-specific" and request.HasField("qos"):
            request.qos.ClearField("provider_specific")
        elif self.fault == "ignores-etag":
            request.etag = ""  # the fault: every change is unconditional
        elif self.fault == "ignores-renegotiation-request-id":
            request.request_id = ""  # the fault: every retry renegotiates again

    async def _open_watch(self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext) -> Any:
        """The upstream stream, its start-sequence header passed on (a refused stream sends none)."""
        stream = self.up.WatchEvents(request, metadata=self._metadata(context))
        start = dict(await stream.initial_metadata() or ()).get(START_SEQUENCE_HEADER)
        if start is None and self.fault == "unknown-cursor-from-now" and request.HasField("after_sequence"):
            stream.cancel()  # the fault: a refused cursor silently becomes "from now"
            request.ClearField("after_sequence")
            return await self._open_watch(request, context)
        if start is not None:
            await context.send_initial_metadata(
                ((START_SEQUENCE_HEADER, "0" if self.fault == "wrong-start-sequence" else start),)
            )
        return stream

    async def _owned(self, event: Any, context: grpc.aio.ServicerContext, owners: dict[str, str]) -> bool:
        """Whether the watcher owns the event's call (for the owner-only-events fault)."""
        if event.call not in owners:
            call = await self.up.GetCall(svc.GetCallRequest(name=event.call), metadata=self._metadata(context))
            owners[event.call] = call.owner
        return owners[event.call] == dict(self._metadata(context)).get(PRINCIPAL_HEADER, ANONYMOUS_PRINCIPAL)

    async def WatchEvents(
        self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.WatchEventsResponse]:
        if self.fault == "never-emits-events":
            await asyncio.Event().wait()
        stream = await self._open_watch(request, context)
        owners: dict[str, str] = {}
        held: svc.WatchEventsResponse | None = None
        try:
            while True:
                try:
                    # A held event is flushed if nothing follows it soon.
                    message = await asyncio.wait_for(stream.read(), 0.5) if held is not None else await stream.read()
                except TimeoutError:
                    assert held is not None  # only a held event is waited for with a timeout
                    yield held
                    held = None
                    continue
                if message is grpc.aio.EOF:
                    break
                if self.fault == "owner-only-events" and not await self._owned(message.event, context, owners):
                    continue  # the fault: monitors see nothing of calls they do not own
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
    svc_grpc.add_CallQosServiceServicer_to_server(Proxy(channel, fault), server)  # type: ignore[no-untyped-call]  # generated
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
