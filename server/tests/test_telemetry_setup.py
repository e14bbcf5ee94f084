"""Telemetry set-up from the standard OTEL_* variables (issue 4): which exporters, sampler and
service name each setting gives, the Prometheus endpoint, and the cheap embedded default."""

from __future__ import annotations

import asyncio
import urllib.request
from importlib import metadata

import grpc
import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from server_testkit import CAPACITY, make_request, qos, rpc_error

from callqos.server import app
from callqos.server.config import Config, ConfigError, load
from callqos.server.telemetry import Telemetry, TelemetryConfigError
from callqos.server.telemetry.semconv import Semconv
from callqos.server.telemetry.setup import from_environment
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


def processors(telemetry: Telemetry) -> list[object]:
    provider = telemetry.tracer_provider
    assert isinstance(provider, TracerProvider)
    return list(provider._active_span_processor._span_processors)  # no public accessor


def test_default_exports_nothing_and_samples_nothing() -> None:
    telemetry = from_environment(env={})
    try:
        assert processors(telemetry) == []
        assert telemetry.tracer_provider.sampler is ALWAYS_OFF  # type: ignore[attr-defined]
        assert isinstance(telemetry.meter_provider, metrics.NoOpMeterProvider)
        assert telemetry.prometheus_port is None
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "callqos"  # type: ignore[attr-defined]
        # Not recorded, but still a trace id for QoS events and logs.
        span = telemetry.tracer_provider.get_tracer("t").start_span("x")
        assert not span.is_recording() and span.get_span_context().is_valid
    finally:
        telemetry.shutdown()


def test_console_and_otlp_exporters_sampler_and_service_name() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "console,otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    with pytest.MonkeyPatch.context() as patch:
        # The SDK reads the sampler and the resource from os.environ itself.
        for key, value in {**env, "OTEL_SERVICE_NAME": "qos-east"}.items():
            patch.setenv(key, value)
        telemetry = from_environment(env=env)
    try:
        console, otlp = processors(telemetry)
        assert isinstance(console, SimpleSpanProcessor) and isinstance(console.span_exporter, ConsoleSpanExporter)
        assert isinstance(otlp, BatchSpanProcessor) and isinstance(otlp._batch_processor._exporter, HttpSpanExporter)
        sampler = telemetry.tracer_provider.sampler  # type: ignore[attr-defined]
        assert isinstance(sampler, ParentBased) and isinstance(sampler._root, TraceIdRatioBased)
        assert sampler._root.rate == 0.25
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "qos-east"  # type: ignore[attr-defined]
    finally:
        telemetry.shutdown()


def test_otlp_defaults_to_grpc_and_per_signal_protocol_wins() -> None:
    telemetry = from_environment(env={"OTEL_TRACES_EXPORTER": "otlp"})
    try:
        (otlp,) = processors(telemetry)
        assert isinstance(otlp._batch_processor._exporter, GrpcSpanExporter)  # type: ignore[attr-defined]
    finally:
        telemetry.shutdown()
    telemetry = from_environment(
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }
    )
    try:
        (otlp,) = processors(telemetry)
        assert isinstance(otlp._batch_processor._exporter, HttpSpanExporter)  # type: ignore[attr-defined]
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "statsd"}, "OTEL_METRICS_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_unsupported_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(TelemetryConfigError, match=named):
        from_environment(env=env)


def test_sdk_disabled() -> None:
    telemetry = from_environment(env={"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(telemetry.tracer_provider, trace.NoOpTracerProvider)
    assert isinstance(telemetry.meter_provider, metrics.NoOpMeterProvider)


def test_semconv_opt_in_and_excluded_services() -> None:
    assert Semconv.from_env({}) == Semconv(old=True, new=False)
    assert Semconv.from_env({"OTEL_SEMCONV_STABILITY_OPT_IN": "http,rpc"}) == Semconv(old=False, new=True)
    assert Semconv.from_env({"OTEL_SEMCONV_STABILITY_OPT_IN": "rpc, rpc/dup"}) == Semconv(old=True, new=True)
    telemetry = from_environment(env={"OTEL_PYTHON_GRPC_EXCLUDED_SERVICES": "grpc.health.v1.Health, x.Y"})
    assert telemetry.excluded_services == {"grpc.health.v1.Health", "x.Y"}
    telemetry.shutdown()


def test_metrics_listen_setting() -> None:
    assert load(env={"CALLQOS_METRICS_LISTEN": "0.0.0.0:9464"}).metrics_listen == "0.0.0.0:9464"
    with pytest.raises(ConfigError, match="metrics_listen"):
        load(env={"CALLQOS_METRICS_LISTEN": "9464"})


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


async def test_prometheus_endpoint_serves_the_service_metrics(config: Config) -> None:
    config.metrics_listen = "127.0.0.1:0"
    running = await app.start(config)  # owns its telemetry: stop() closes the endpoint
    try:
        port = running.telemetry.prometheus_port
        assert port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            await stub.CreateCall(make_request(qos(100_000)))
            await rpc_error(stub.CreateCall(make_request(qos(CAPACITY))))
        await asyncio.sleep(0.3)  # a few event-loop lag measurements (one per 0.1 s)
        text = await asyncio.to_thread(_scrape, port)
    finally:
        await running.stop()
    lines = text.splitlines()

    def sample(prefix: str, *labels: str) -> float:
        (line,) = [ln for ln in lines if ln.startswith(prefix + "{") and all(x in ln for x in labels)]
        return float(line.rsplit(" ", 1)[1])

    assert sample("callqos_admissions_total", 'callqos_outcome="granted"') == 1
    assert sample("callqos_admissions_total", 'callqos_outcome="refused"', 'callqos_reason="QOS_UNAVAILABLE"') == 1
    assert sample("callqos_link_reserved_bytes_per_second", 'callqos_direction="sending"') == 100_000
    assert sample("callqos_calls_active", 'callqos_service_type="CONTROLLED_LOAD"') == 1
    assert any(ln.startswith("rpc_server_call_duration_seconds_count{") for ln in lines)
    assert not any("milliseconds" in ln for ln in lines)
    # Before any renegotiation, the counter is there at 0.
    assert sample("callqos_renegotiations_total", "reference", 'callqos_outcome="granted"') == 0
    # The build and the process, as a scraper expects of any service.
    assert sample("callqos_build_info", f'version="{metadata.version("callqos-server")}"') == 1
    # The event loop's lag is measured all along (every 0.1 s), in seconds.
    (lag,) = [ln for ln in lines if ln.startswith("callqos_event_loop_lag_seconds_count")]
    assert float(lag.rsplit(" ", 1)[1]) >= 1
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert any(ln.startswith(name + " ") for ln in lines), name
    with pytest.raises(OSError):  # closed with the server
        await asyncio.to_thread(_scrape, port)
