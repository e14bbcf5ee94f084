"""The server programs the benchmarks start, each as its own process through `ServerProcess`
(`python programs.py echo|fanout|callqos ...`): the bare grpc.aio baselines (an echo for unary
RPCs, a fan-out for watch streams), and the callqos server with the embedded default telemetry or
with tracing at a given sampling ratio.

"Tracing on" means spans handed to a BatchSpanProcessor whose exporter encodes each batch to OTLP
protobuf and discards the bytes: the SDK and serialization work of a real OTLP exporter, without
the network (there is no collector to send to here). The exporter writes what it saw (spans,
attributes, its thread's CPU time) as JSON to `--stats-file` at shutdown. With `--no-export` the
sampled spans are recorded as before and then dropped by a span processor that does nothing:
what recording costs without what exporting costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from callqos.server import app, logs, validation
from callqos.server import config as config_module
from callqos.server.providers import AdmissionRequest, Grant
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.store.base import PendingRelease
from callqos.server.store.sqlite import SqliteStore
from callqos.server.telemetry import Telemetry, setup
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import START_SEQUENCE_HEADER

HERE = Path(__file__).resolve().parent
ECHO_METHOD = "/bench.Echo/Echo"
PUBLISH_METHOD = "/bench.Fanout/Publish"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The head-sampling ratio deploy/k8s/deployment.yaml configures (a test keeps the two equal).
PRODUCTION_SAMPLING = 0.1
# The service level the floor's decisions are asked at (what a CreateCall without one gets).
LEVEL = call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED


def command(*arguments: str) -> list[str]:
    """The command running this module with `arguments` (a `ServerProcess` program)."""
    return [sys.executable, str(HERE / "programs.py"), *arguments]


def echo_program() -> list[str]:
    return command("echo")


def fanout_program() -> list[str]:
    return command("fanout")


def floor_program(decide: bool = False) -> list[str]:
    """The floor server (FloorServicer); `decide`: with validation and the reference provider."""
    return command("floor", *(["--decide"] if decide else []))


def callqos_program(sampling: float | None = None, stats_file: Path | None = None, export: bool = True) -> list[str]:
    """The callqos server as `callqos serve` runs it (configuration from CALLQOS_CONFIG and the
    flags), with the embedded default telemetry (`sampling` None: nothing recorded) or tracing
    `sampling` of the traces (`export` False: recorded, then dropped)."""
    arguments = ["callqos"]
    if sampling is not None:
        arguments += ["--sampling", str(sampling)]
    if stats_file is not None:
        arguments += ["--stats-file", str(stats_file)]
    if not export:
        arguments.append("--no-export")
    return command(*arguments)


# -- the baseline -------------------------------------------------------------------------------
async def _echo(listen: str, port_file: Path) -> None:
    """A bare grpc.aio server with one unary method that returns its request: no interceptors, no
    health or reflection service, nothing stored, the default asyncio event loop."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    await _serve_until_sigterm(server, listen, port_file)


async def _serve_until_sigterm(server: grpc.aio.Server, listen: str, port_file: Path) -> None:
    """Listen on `listen`, tell the port in `port_file` (what `ServerProcess` waits for), serve
    until SIGTERM."""
    port = server.add_insecure_port(listen)
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 -- once, before the load starts
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


async def _fanout(listen: str, port_file: Path) -> None:
    """The watchers' baseline: a bare grpc.aio server with callqos's WatchEvents method name that
    holds every stream open, and PUBLISH_METHOD, which sends one WatchEventsResponse (encoded once,
    its event stamped with the time) to every open stream. No hub, no store, no interceptors."""
    streams: set[asyncio.Queue[bytes]] = set()

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await context.send_initial_metadata(((START_SEQUENCE_HEADER, "0"),))
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        streams.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            streams.discard(queue)

    async def publish(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        event = event_pb2.QosEvent()
        event.create_time.FromNanoseconds(time.time_ns())
        frame = svc.WatchEventsResponse(event=event).SerializeToString()
        for queue in streams:
            queue.put_nowait(frame)
        return b""

    service, _, method = PUBLISH_METHOD.strip("/").partition("/")
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 1 << 20)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "callqos.v1.CallQosService", {"WatchEvents": grpc.unary_stream_rpc_method_handler(watch)}
            ),
            grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(publish)}),
        )
    )
    await _serve_until_sigterm(server, listen, port_file)


# -- the floor: the least a durable CallQosService does -----------------------------------------
class FloorServicer(svc_grpc.CallQosServiceServicer):
    """CreateCall, DropCall, RenegotiateCall and GetCall doing only what no durable implementation
    of them can skip: take the request, make the call and its event, commit them to SQLite through
    callqos's own store (the same group commit, the same three commits per make+drop cycle: the
    call, the drop with the release it owes, the owed release forgotten), answer the call. No
    validation, no provider, no interceptor, no telemetry, no authorisation, no idempotency, no
    concurrency control. What it reaches, against the bare echo of the same run, is the ceiling
    any Python implementation of this API on grpc.aio and SQLite reaches on this machine.

    With `provider` (the reference provider, in process), it also does what the API promises
    beyond durability: validates each request as callqos does (`callqos.server.validation`) and
    has the provider decide (admit, renegotiate, release). That is the least callqos itself could
    do: its ratio is the closest any row can come (`bench.py`, README "Performance")."""

    def __init__(self, store: SqliteStore, provider: ReferenceProvider | None = None) -> None:
        self.store = store
        self.provider = provider
        self.caps = provider.capabilities() if provider is not None else None
        self.made = 0

    def _event(self, call: call_pb2.Call, kind: event_pb2.QosEventType) -> event_pb2.QosEvent:
        return event_pb2.QosEvent(
            type=kind, call=call.name, tenant=call.tenant, provider=call.provider, current_qos=call.granted_qos
        )

    async def _decided(self, call: call_pb2.Call, current: flowspec_pb2.QosSpec | None) -> flowspec_pb2.QosSpec:
        """What the provider grants the call (the floor's load always fits)."""
        if self.provider is None:
            return call.requested_qos
        asked = AdmissionRequest(call.name, call.destination, LEVEL, call.requested_qos, call.owner, current=current)
        decision = await (self.provider.admit(asked) if current is None else self.provider.renegotiate(asked))
        assert isinstance(decision, Grant), decision
        return decision.qos

    async def CreateCall(self, request: svc.CreateCallRequest, context: Any) -> call_pb2.Call:
        if self.provider is not None:
            validation.create(request, self.caps, self.provider.validate_provider_specific)
        self.made += 1
        call = call_pb2.Call()
        call.CopyFrom(request.call)
        call.name = f"calls/f{self.made}"
        call.provider, call.owner, call.tenant = "providers/reference", "anonymous", "default"
        call.state = call_pb2.Call.State.STATE_CONNECTED
        call.granted_qos.CopyFrom(await self._decided(call, None))
        call.create_time.GetCurrentTime()
        await self.store.commit(call, [self._event(call, event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED)])
        return call

    async def DropCall(self, request: svc.DropCallRequest, context: Any) -> call_pb2.Call:
        if self.provider is not None:
            validation.drop(request)
        call = await self.store.get_call(request.name)
        assert call is not None
        call.state = call_pb2.Call.State.STATE_DISCONNECTED
        owe = PendingRelease(call.name, call.provider)
        await self.store.commit(
            call, [self._event(call, event_pb2.QosEventType.QOS_EVENT_TYPE_CALL_DISCONNECTED)], owe=owe
        )
        if self.provider is not None:
            await self.provider.release(call.name)
        await self.store.forget_release(call.name)
        return call

    async def RenegotiateCall(self, request: svc.RenegotiateCallRequest, context: Any) -> call_pb2.Call:
        if self.provider is not None:
            validation.renegotiation(request, self.caps, self.provider.validate_provider_specific)
        call = await self.store.get_call(request.name)
        assert call is not None
        current = flowspec_pb2.QosSpec()
        current.CopyFrom(call.granted_qos)
        call.requested_qos.CopyFrom(request.qos)
        call.granted_qos.CopyFrom(await self._decided(call, current))
        await self.store.commit(call, [self._event(call, event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_CHANGED)])
        return call

    async def GetCall(self, request: svc.GetCallRequest, context: Any) -> call_pb2.Call:
        if self.provider is not None:
            validation.call_name(request.name)
        call = await self.store.get_call(request.name)
        assert call is not None
        return call


async def _floor(listen: str, port_file: Path, data_dir: Path, decide: bool) -> None:
    store = SqliteStore(data_dir / "floor.db")
    provider = ReferenceProvider({}) if decide else None
    server = grpc.aio.server()
    svc_grpc.add_CallQosServiceServicer_to_server(FloorServicer(store, provider), server)  # type: ignore[no-untyped-call]
    try:
        await _serve_until_sigterm(server, listen, port_file)
    finally:
        await store.close()


# -- callqos, traced or not ------------------------------------------------------------------
class EncodeAndDiscardExporter(SpanExporter):
    """Does an OTLP exporter's work up to the wire: encode the batch, then drop it. Counts what
    it saw and the export thread's CPU time, written as JSON to `stats_file` at shutdown."""

    def __init__(self, stats_file: Path | None = None) -> None:
        self.stats_file = stats_file
        self.spans = 0
        self.server_spans = 0
        self.attributes = 0
        self.encode_cpu_seconds = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # CPU time of this thread, not wall time: waiting for the GIL is not encoding.
        started = time.thread_time()
        encode_spans(spans).SerializeToString()
        self.encode_cpu_seconds += time.thread_time() - started
        self.spans += len(spans)
        self.server_spans += sum(1 for span in spans if span.kind == SpanKind.SERVER)
        self.attributes += sum(len(span.attributes or ()) for span in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self.stats_file is not None:
            self.stats_file.write_text(json.dumps(vars(self) | {"stats_file": None}))


def tracing_telemetry(ratio: float, stats_file: Path | None, export: bool = True) -> Telemetry:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    # SpanProcessor's own methods do nothing: each sampled span is recorded, then dropped.
    provider.add_span_processor(BatchSpanProcessor(EncodeAndDiscardExporter(stats_file)) if export else SpanProcessor())
    # Health checks (the start-up wait here; kubelet probes in deploy/k8s) stay out of traces, as
    # the deployment's OTEL_PYTHON_GRPC_EXCLUDED_SERVICES keeps them: only the measured RPCs count.
    return Telemetry(provider, metrics.NoOpMeterProvider(), excluded_services=frozenset({HEALTH_SERVICE}))


def _callqos(listen: str, port_file: Path, sampling: float | None, stats_file: Path | None, export: bool) -> None:
    config = config_module.load(flags={"listen": listen, "port_file": port_file})
    logs.configure(config.log_level)
    telemetry = setup.from_environment(env={}) if sampling is None else tracing_telemetry(sampling, stats_file, export)
    app.run(config, telemetry)


def _on_callqos_loop(server: Coroutine[Any, Any, None]) -> None:
    """Run `server` on the event loop callqos serves on (uvloop where installed)."""
    with asyncio.Runner(loop_factory=app.loop_factory("auto")) as runner:
        runner.run(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("program", choices=("echo", "fanout", "floor", "callqos"))
    parser.add_argument("--sampling", type=float)
    parser.add_argument("--stats-file", type=Path)
    parser.add_argument("--no-export", action="store_true", help="callqos: record the sampled spans, export none")
    parser.add_argument("--decide", action="store_true", help="floor: validate, and have the reference provider decide")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    if args.program == "echo":
        asyncio.run(_echo(args.listen, args.port_file))
    elif args.program == "floor":
        # What callqos could reach, not what the echo does.
        _on_callqos_loop(_floor(args.listen, args.port_file, args.port_file.parent, args.decide))
    elif args.program == "fanout":
        # The watchers' figures are floors, not ratios, and the floor is the fastest bare grpc.aio
        # this machine has.
        _on_callqos_loop(_fanout(args.listen, args.port_file))
    else:
        _callqos(args.listen, args.port_file, args.sampling, args.stats_file, not args.no_export)


if __name__ == "__main__":
    main()
