"""Traces and metrics of a real server on a loopback port, read back through the SDK's in-memory
exporters (issue 4): the span tree of make / refused make / renegotiate / failed renegotiate /
drop, trace context from the client, trace ids in QoS events, and metric values."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from security_testkit import AuditLines
from server_testkit import CAPACITY, details, make_request, qos, reason, rpc_error
from test_watch_events import collect

from callqos.server import app
from callqos.server.config import Config
from callqos.server.providers import AdmissionRequest, Decision, Grant
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.telemetry import Telemetry
from callqos.server.telemetry.semconv import Semconv
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import event_pb2

SERVICE = "callqos.v1.CallQosService"
LINK = "providers/reference/links/default"


class FailingRenegotiation(ReferenceProvider):
    """The reference provider, except that renegotiate crashes (a provider bug, not a refusal)
    and admit starts a span of its own, as a provider plugin may."""

    async def admit(self, request: AdmissionRequest) -> Decision:
        with trace.get_tracer("test.provider").start_as_current_span("plugin.own-work"):
            return await super().admit(request)

    async def renegotiate(self, request: AdmissionRequest) -> Grant:
        raise RuntimeError("link controller unreachable")


@dataclass
class Traced:
    running: app.Running
    stub: svc_grpc.CallQosServiceStub
    channel: grpc.aio.Channel
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    async def rpc(self, method: str) -> ReadableSpan:
        """The server span of the one `method` RPC. The client can hold its answer (or error status)
        a moment before the server's handler has ended its span, so wait for it, briefly."""
        name = f"{SERVICE}/{method}"
        for _ in range(200):  # at most about 2 s
            if any(s.name == name for s in self.finished()):
                break
            await asyncio.sleep(0.01)
        matching = [s for s in self.finished() if s.name == name]
        assert len(matching) == 1, [s.name for s in self.finished()]
        return matching[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.parent is not None and s.parent.span_id == parent.context.span_id]

    def metric(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of every data point of metric `name`."""
        data = self.metrics.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points += [(dict(p.attributes), p) for p in metric.data.data_points]
        return points


async def _traced(
    config: Config, semconv: Semconv, excluded: frozenset[str] = frozenset(), sampler: Sampler | None = None
) -> AsyncIterator[Traced]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    # The providers are handed to the server explicitly: the global ones are left alone.
    telemetry = Telemetry(tracer_provider, meter_provider, semconv, excluded)
    running = await app.start(config, telemetry=telemetry)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Traced(running, svc_grpc.CallQosServiceStub(channel), channel, spans, reader, tracer_provider)
    finally:
        await running.stop()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
async def traced(config: Config) -> AsyncIterator[Traced]:
    config.providers = {"reference": {}, "failing": {"plugin": f"{__name__}:FailingRenegotiation"}}
    async for value in _traced(config, Semconv()):
        yield value


def trace_id(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def names(spans: Sequence[ReadableSpan]) -> list[str]:
    return sorted(s.name for s in spans)


# -- span trees ---------------------------------------------------------------------------------
async def test_make_call_span_tree(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(100_000)))
    server = await traced.rpc("CreateCall")
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert server.status.status_code is StatusCode.UNSET
    assert {k: server.attributes[k] for k in ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")} == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "CreateCall",
        "rpc.grpc.status_code": 0,
    }
    assert server.attributes["net.peer.ip"] == "127.0.0.1"
    assert server.attributes["callqos.outcome"] == "granted"
    # The provider's decision is the one child span (a store commit decides nothing: no span).
    assert names(traced.children(server)) == ["callqos.provider.admit"]
    admit = next(s for s in traced.children(server) if s.name == "callqos.provider.admit")
    assert admit.status.status_code is StatusCode.UNSET
    attributes = dict(admit.attributes or {})
    assert attributes["callqos.provider"] == "providers/reference"
    assert attributes["callqos.call"] == call.name
    assert attributes["callqos.service_level"] == "NEEDED"
    assert attributes["callqos.service_type"] == "CONTROLLED_LOAD"
    assert attributes["callqos.sending.requested_bytes_per_second"] == 100_000
    assert attributes["callqos.sending.granted_bytes_per_second"] == 100_000
    assert attributes["callqos.receiving.granted_bytes_per_second"] == 0
    assert attributes["callqos.outcome"] == "granted"
    assert attributes["callqos.link"] == LINK
    assert attributes["callqos.link.sending.utilization"] == pytest.approx(100_000 / CAPACITY)


async def test_refused_make_shows_why_and_is_not_an_error(traced: Traced) -> None:
    error = await rpc_error(traced.stub.CreateCall(make_request(qos(CAPACITY + 1))))
    # The rich status (ErrorInfo + QosRefusal in grpc-status-details-bin) passes the interceptor.
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "QOS_UNAVAILABLE"
    assert details(error)["QosRefusal"].counter_offer.sending.token_rate_bytes_per_second == CAPACITY
    server = await traced.rpc("CreateCall")
    assert server.status.status_code is StatusCode.UNSET  # a refusal is an outcome
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert server.attributes["callqos.outcome"] == "refused"
    assert server.attributes["callqos.reason"] == "QOS_UNAVAILABLE"
    assert names(traced.children(server)) == ["callqos.provider.admit"]
    admit = next(s for s in traced.children(server) if s.name == "callqos.provider.admit")
    assert admit.status.status_code is StatusCode.UNSET
    assert admit.attributes["callqos.outcome"] == "refused"
    assert admit.attributes["callqos.reason"] == "QOS_UNAVAILABLE"
    assert admit.attributes["callqos.refusal.kind"] == "admission"
    assert f"needs {CAPACITY + 1} B/s" in str(admit.attributes["callqos.refusal.message"])
    assert admit.attributes["callqos.sending.requested_bytes_per_second"] == CAPACITY + 1
    assert admit.attributes["callqos.sending.counter_offer_bytes_per_second"] == CAPACITY
    assert admit.attributes["callqos.link.sending.utilization"] == 0.0


async def test_renegotiate_span_tree(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(100_000)))
    await traced.stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(300_000)))
    server = await traced.rpc("RenegotiateCall")
    assert server.attributes["callqos.outcome"] == "granted"
    assert names(traced.children(server)) == ["callqos.provider.renegotiate"]
    renegotiate = next(s for s in traced.children(server) if s.name == "callqos.provider.renegotiate")
    assert renegotiate.attributes["callqos.sending.requested_bytes_per_second"] == 300_000
    assert renegotiate.attributes["callqos.sending.granted_bytes_per_second"] == 300_000
    assert renegotiate.attributes["callqos.link.sending.reserved_bytes_per_second"] == 300_000


async def test_refused_renegotiation_keeps_the_call_and_says_why(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(100_000)))
    error = await rpc_error(
        traced.stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(CAPACITY * 2)))
    )
    assert reason(error) == "QOS_UNAVAILABLE"
    server = await traced.rpc("RenegotiateCall")
    assert server.status.status_code is StatusCode.UNSET
    assert (server.attributes["callqos.outcome"], server.attributes["callqos.reason"]) == ("refused", "QOS_UNAVAILABLE")
    renegotiate = next(s for s in traced.children(server) if s.name == "callqos.provider.renegotiate")
    assert renegotiate.attributes["callqos.outcome"] == "refused"
    assert renegotiate.attributes["callqos.link.sending.reserved_bytes_per_second"] == 100_000  # unchanged


async def test_failed_renegotiation_is_an_error_on_both_spans(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(100_000), provider="providers/failing"))
    error = await rpc_error(traced.stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(200_000))))
    assert error.code() is grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
    server = await traced.rpc("RenegotiateCall")
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes["callqos.outcome"], server.attributes["callqos.reason"]) == (
        "error",
        "PROVIDER_UNAVAILABLE",
    )
    renegotiate = next(s for s in traced.children(server) if s.name == "callqos.provider.renegotiate")
    assert renegotiate.status.status_code is StatusCode.ERROR
    assert renegotiate.status.description == "provider failing failed in renegotiate: RuntimeError"
    (exception,) = renegotiate.events
    assert exception.attributes["exception.type"] == "RuntimeError"
    assert exception.attributes["exception.message"] == "link controller unreachable"
    assert renegotiate.attributes["callqos.provider"] == "providers/failing"


async def test_drop_span_tree(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(100_000)))
    await traced.stub.DropCall(svc.DropCallRequest(name=call.name))
    server = await traced.rpc("DropCall")
    assert names(traced.children(server)) == ["callqos.provider.release"]
    release = next(s for s in traced.children(server) if s.name == "callqos.provider.release")
    assert release.attributes["callqos.call"] == call.name
    assert release.attributes["callqos.link.sending.reserved_bytes_per_second"] == 0


async def test_provider_spans_are_parents_of_the_plugins_own_spans(traced: Traced) -> None:
    # Plugins use the global tracer provider; point it at ours for this check only.
    tracer = traced.tracer_provider.get_tracer("test.provider")
    original = trace.get_tracer
    trace.get_tracer = lambda *a, **k: tracer  # type: ignore[assignment]
    try:
        await traced.stub.CreateCall(make_request(qos(1000), provider="providers/failing"))
    finally:
        trace.get_tracer = original  # type: ignore[assignment]
    admit = next(s for s in traced.children(await traced.rpc("CreateCall")) if s.name == "callqos.provider.admit")
    assert names(traced.children(admit)) == ["plugin.own-work"]


# -- propagation and trace ids --------------------------------------------------------------------
async def test_client_span_and_server_span_share_one_trace(traced: Traced) -> None:
    tracer = traced.tracer_provider.get_tracer("test.client")
    with tracer.start_as_current_span("client.make-call", kind=SpanKind.CLIENT) as client_span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # W3C traceparent, as the Python client sends it
        call = await traced.stub.CreateCall(make_request(qos(1000)), metadata=tuple(carrier.items()))
    server = await traced.rpc("CreateCall")
    assert server.context.trace_id == client_span.get_span_context().trace_id
    assert server.parent is not None and server.parent.span_id == client_span.get_span_context().span_id
    assert server.parent.is_remote
    (event,) = await collect(traced.stub, 1, after_sequence=0)
    assert event.call == call.name and event.trace_id == trace_id(server)


async def test_each_event_carries_the_trace_id_of_its_operation(traced: Traced) -> None:
    call = await traced.stub.CreateCall(make_request(qos(1000)))
    await traced.stub.DropCall(svc.DropCallRequest(name=call.name))
    granted, dropped = await collect(traced.stub, 2, after_sequence=0)
    assert granted.trace_id == trace_id(await traced.rpc("CreateCall"))
    assert dropped.trace_id == trace_id(await traced.rpc("DropCall"))
    assert granted.trace_id != dropped.trace_id


async def test_embedded_default_records_nothing_but_still_hands_out_trace_ids(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(variable, raising=False)
    running = await app.start(config)
    try:
        assert not running.providers.telemetry.metrics_enabled
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            await stub.CreateCall(make_request(qos(1000)))
            (event,) = await collect(stub, 1, after_sequence=0)
        assert len(event.trace_id) == 32 and int(event.trace_id, 16) != 0
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def _embedded_default(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[svc_grpc.CallQosServiceStub]:
    """A stub of the server started with the embedded default telemetry (no OTEL_* exporter set)."""
    for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(variable, raising=False)
    running = await app.start(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield svc_grpc.CallQosServiceStub(channel)
    finally:
        await running.stop()


async def test_embedded_default_gives_each_rpc_a_trace_of_its_own(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unrecorded spans draw their ids only when asked (`UntracedSpan`): still, the events of two
    RPCs carry two trace ids, and an RPC's events carry one."""
    async with _embedded_default(config, monkeypatch) as stub:
        first = await stub.CreateCall(make_request(qos(1000)))
        await stub.CreateCall(make_request(qos(1000)))
        await stub.DropCall(svc.DropCallRequest(name=first.name))
        events = await collect(stub, 3, after_sequence=0)
    assert all(len(event.trace_id) == 32 and int(event.trace_id, 16) for event in events)
    assert len({event.trace_id for event in events}) == 3


async def test_embedded_default_keeps_the_callers_trace_id(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with _embedded_default(config, monkeypatch) as stub:
        await stub.CreateCall(make_request(qos(1000)), metadata=(("traceparent", f"00-{caller}-00f067aa0ba902b7-01"),))
        (event,) = await collect(stub, 1, after_sequence=0)
    assert event.trace_id == caller


async def test_embedded_default_reads_the_callers_trace_where_it_is_needed(
    config: Config, monkeypatch: pytest.MonkeyPatch, audit_lines: AuditLines
) -> None:
    """With nothing recorded no interceptor runs; each handler puts its RPC in the caller's trace,
    read from the metadata only when something asks (the events, the audit); a malformed
    traceparent starts a new trace instead."""
    dropper = "0af7651916cd43dd8448eb211c80319c"
    async with _embedded_default(config, monkeypatch) as stub:
        made = await stub.CreateCall(make_request(qos(1000)), metadata=(("traceparent", "00-not-a-trace-01"),))
        await stub.DropCall(
            svc.DropCallRequest(name=made.name), metadata=(("traceparent", f"00-{dropper}-00f067aa0ba902b7-01"),)
        )
        made_event, dropped_event = await collect(stub, 2, after_sequence=0)
    assert len(made_event.trace_id) == 32 and int(made_event.trace_id, 16)  # a new trace
    assert dropped_event.trace_id == dropper
    assert audit_lines.where(method="DropCall", outcome="ok", trace_id=dropper)


async def _restart_onto_a_smaller_link(config: Config, traced: bool) -> tuple[list[Any], list[ReadableSpan]]:
    """Two calls of 500 kB/s on the default link, then a restart with 600 kB/s: the restore drops
    the newest. Returns the events the restart emitted and the spans it recorded."""
    config.storage = "sqlite"
    config.providers = {"reference": {}}
    async for first in _traced(config, Semconv()):
        for _ in range(2):
            await first.stub.CreateCall(make_request(qos(500_000)))
    config.providers = {"reference": {"links": [{"id": "default", "capacity_bytes_per_second": 600_000}]}}
    if not traced:
        running = await app.start(config)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                return await collect(svc_grpc.CallQosServiceStub(channel), 2, after_sequence=2), []
        finally:
            await running.stop()
    async for second in _traced(config, Semconv()):
        return await collect(second.stub, 2, after_sequence=2), second.finished()
    raise AssertionError("unreachable")


async def test_events_of_the_restore_at_start_up_carry_the_trace_of_a_restore_span(config: Config) -> None:
    events, spans = await _restart_onto_a_smaller_link(config, traced=True)
    (restore,) = [span for span in spans if span.name == "callqos.restore"]
    assert restore.parent is None and restore.attributes["callqos.calls"] == 2
    # The drop of the call that no longer fits is committed under it (a commit has no span of its own).
    assert [span.name for span in spans if span.parent and span.parent.span_id == restore.context.span_id] == []
    assert [event.type for event in events] == [
        event_pb2.QosEventType.QOS_EVENT_TYPE_NOQOS,
        event_pb2.QosEventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    ]
    assert {event.trace_id for event in events} == {trace_id(restore)}


async def test_events_of_the_restore_carry_a_trace_id_with_tracing_off(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(variable, raising=False)
    events, _ = await _restart_onto_a_smaller_link(config, traced=False)
    (trace_ids,) = ({event.trace_id for event in events},)
    assert len(trace_ids) == 1 and int(trace_ids.pop(), 16) != 0


# -- streaming through the interceptor ----------------------------------------------------------
async def test_watch_stream_span_ends_when_the_client_cancels(traced: Traced) -> None:
    await traced.stub.CreateCall(make_request(qos(1000)))
    await collect(traced.stub, 1, after_sequence=0)
    for _ in range(100):  # the server learns of the cancel asynchronously
        watch = [s for s in traced.finished() if s.name == f"{SERVICE}/WatchEvents"]
        if watch:
            break
        await asyncio.sleep(0.02)
    (span,) = watch
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.status.status_code is StatusCode.UNSET


async def test_write_style_stream_works_through_the_interceptor(traced: Traced) -> None:
    """grpcio-health-checking's Watch streams with `await context.write()` (contrib#3066)."""
    health = health_pb2_grpc.HealthStub(traced.channel)
    stream = health.Watch(health_pb2.HealthCheckRequest(service=""))
    async with asyncio.timeout(10):
        first = await stream.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    await health.Check(health_pb2.HealthCheckRequest(service=""))
    checks = [s for s in traced.finished() if s.name == "grpc.health.v1.Health/Check"]
    assert len(checks) == 1 and checks[0].attributes["rpc.grpc.status_code"] == 0


async def test_excluded_services_are_not_traced(config: Config) -> None:
    async for traced in _traced(config, Semconv(), frozenset({"grpc.health.v1.Health"})):
        await health_pb2_grpc.HealthStub(traced.channel).Check(health_pb2.HealthCheckRequest(service=""))
        await traced.stub.ListProviders(svc.ListProvidersRequest())
        assert names(traced.finished()) == [f"{SERVICE}/ListProviders"]


async def test_an_rpc_sampled_out_is_still_measured(config: Config) -> None:
    """Head sampling that keeps no trace records no span, yet every RPC's duration and status are
    still measured, and its events still carry the caller's trace id."""
    caller = "1f0e9b2cf3a84d5e8a7b6c5d4e3f2a1b"
    async for traced in _traced(config, Semconv(), sampler=ParentBased(TraceIdRatioBased(0.0))):
        await traced.stub.CreateCall(
            make_request(qos(1000)), metadata=(("traceparent", f"00-{caller}-00f067aa0ba902b7-00"),)
        )
        await rpc_error(traced.stub.GetCall(svc.GetCallRequest(name="calls/nope")))
        (event,) = await collect(traced.stub, 1, after_sequence=0)
        durations = {
            (attributes["rpc.method"], attributes["rpc.grpc.status_code"]): point.count
            for attributes, point in traced.metric("rpc.server.call.duration")
        }
        assert traced.finished() == []
    assert event.trace_id == caller
    assert durations[("CreateCall", 0)] == 1
    assert durations[("GetCall", grpc.StatusCode.NOT_FOUND.value[0])] == 1


async def test_stable_rpc_semconv_with_dup(config: Config) -> None:
    async for traced in _traced(config, Semconv(old=True, new=True)):
        await rpc_error(traced.stub.GetCall(svc.GetCallRequest(name="calls/nope")))
        span = await traced.rpc("GetCall")
        assert span.attributes["rpc.system.name"] == "grpc" and span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.method"] == f"{SERVICE}/GetCall"
        assert span.attributes["rpc.response.status_code"] == "NOT_FOUND"
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert span.attributes["network.peer.address"] == "127.0.0.1"
        (point,) = [
            (a, p) for a, p in traced.metric("rpc.server.call.duration") if a["rpc.method"] == f"{SERVICE}/GetCall"
        ]
        attributes, data = point
        assert data.count == 1
        # Both conventions' attributes on the one histogram in seconds.
        assert attributes["rpc.response.status_code"] == "NOT_FOUND" and attributes["rpc.grpc.status_code"] == 5
        assert traced.metric("rpc.server.duration") == []  # no second histogram in milliseconds


# -- metrics ------------------------------------------------------------------------------------
async def test_metric_values_after_a_known_sequence(traced: Traced) -> None:
    stub = traced.stub
    first = await stub.CreateCall(make_request(qos(100_000)))
    second = await stub.CreateCall(make_request(qos(200_000)))
    await rpc_error(stub.CreateCall(make_request(qos(CAPACITY))))  # 300k already reserved: refused
    await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=first.name, qos=qos(150_000)))
    await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=first.name, qos=qos(CAPACITY))))
    await stub.DropCall(svc.DropCallRequest(name=second.name))
    watch = stub.WatchEvents(svc.WatchEventsRequest())
    reading = asyncio.create_task(watch.read())  # the stream opens when the first read starts
    for _ in range(250):
        if traced.running.servicer.open_watchers:
            break
        await asyncio.sleep(0.02)

    def values(name: str, *keys: str) -> dict[tuple[Any, ...], Any]:
        return {tuple(a.get(k) for k in keys): p.value for a, p in traced.metric(name)}

    assert values(
        "callqos.admissions", "callqos.provider", "callqos.service_type", "callqos.outcome", "callqos.reason"
    ) == {
        ("providers/reference", "CONTROLLED_LOAD", "granted", None): 2,
        ("providers/reference", "CONTROLLED_LOAD", "refused", "QOS_UNAVAILABLE"): 1,
    }
    assert values("callqos.renegotiations", "callqos.provider", "callqos.outcome", "callqos.reason") == {
        ("providers/reference", "granted", None): 1,
        ("providers/reference", "refused", "QOS_UNAVAILABLE"): 1,
        # Present from the start, at 0: the series exist before the first renegotiation.
        ("providers/reference", "refused", None): 0,
        ("providers/reference", "error", None): 0,
        ("providers/failing", "granted", None): 0,
        ("providers/failing", "refused", None): 0,
        ("providers/failing", "error", None): 0,
    }
    assert values("callqos.calls.active", "callqos.provider", "callqos.service_type") == {
        ("providers/reference", "CONTROLLED_LOAD"): 1,
    }
    other = "providers/failing/links/default"  # the second provider's link, unused
    assert values("callqos.link.capacity", "callqos.link") == {(LINK,): CAPACITY, (other,): CAPACITY}
    assert values("callqos.link.reserved", "callqos.link", "callqos.direction") == {
        (LINK, "sending"): 150_000,
        (LINK, "receiving"): 0,
        (other, "sending"): 0,
        (other, "receiving"): 0,
    }
    assert values("callqos.watch.streams") == {(): 1}
    durations = {
        (a["rpc.method"], a["rpc.grpc.status_code"]): p.count for a, p in traced.metric("rpc.server.call.duration")
    }
    assert (
        durations[("CreateCall", 0)] == 2
        and durations[("CreateCall", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])] == 1
    )
    assert durations[("RenegotiateCall", 0)] == 1 and durations[("DropCall", 0)] == 1
    provider_calls = {
        (a["callqos.provider.operation"], a["callqos.outcome"]): p.count
        for a, p in traced.metric("callqos.provider.duration")
    }
    assert provider_calls[("admit", "granted")] == 2 and provider_calls[("admit", "refused")] == 1
    assert provider_calls[("renegotiate", "refused")] == 1 and provider_calls[("release", "ok")] == 1
    watch.cancel()
    reading.cancel()


async def test_python_client_joins_the_callers_trace(traced: Traced) -> None:
    """The Python client injects W3C trace context per RPC: its caller's span and the server's
    span share one trace (the server span is the child of the caller's span)."""
    from callqos.client import AsyncClient

    tracer = traced.tracer_provider.get_tracer("test-client")
    async with AsyncClient(f"127.0.0.1:{traced.running.port}") as client:
        with tracer.start_as_current_span("application work") as outer:
            call = await client.make_call("sip:traced@example.test")
        await client.drop(call.name)
    server_span = await traced.rpc("CreateCall")
    assert server_span.context.trace_id == outer.get_span_context().trace_id
    assert server_span.parent is not None and server_span.parent.span_id == outer.get_span_context().span_id
    assert (await traced.rpc("DropCall")).context.trace_id != outer.get_span_context().trace_id


async def test_the_largest_rates_are_exported_saturated_not_dropped(traced: Traced) -> None:
    """A link at the largest uint64 capacity and a call reserving it: OTLP carries int64, so the
    spans and the link gauges record the int64 maximum, and both still encode (issue 11: every
    derived quantity is bounded — an exporter failing on a value would drop every span)."""
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    largest = 2**64 - 1
    stub = traced.stub
    await stub.UpdateLink(
        svc.UpdateLinkRequest(link={"name": "providers/reference/links/default", "capacity_bytes_per_second": largest})
    )
    await stub.CreateCall(make_request(qos(largest)))
    encode_spans(traced.finished())  # raises on an attribute beyond int64
    attributes = [dict(span.attributes or {}) for span in traced.finished()]
    assert max(a.get("callqos.link.capacity_bytes_per_second", 0) for a in attributes) == 2**63 - 1
    data = traced.metrics.get_metrics_data()
    assert data is not None
    encode_metrics(data)
    capacity = {attrs["callqos.link"]: point.value for attrs, point in traced.metric("callqos.link.capacity")}
    assert capacity["providers/reference/links/default"] == 2**63 - 1
