"""Telemetry set-up from the standard OpenTelemetry environment variables.

- OTEL_TRACES_EXPORTER: otlp, console, none (comma-separated; default none, see below)
- OTEL_METRICS_EXPORTER: otlp, console, prometheus, none (default none)
- OTEL_EXPORTER_OTLP_PROTOCOL (or the _TRACES_/_METRICS_ variant): grpc (default) or
  http/protobuf; the exporters read OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, ... themselves
- OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (service.name defaults to "callqos")
- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (read by the SDK; default parentbased_always_on)
- OTEL_EXPORTER_PROMETHEUS_HOST / _PORT: where OTEL_METRICS_EXPORTER=prometheus serves /metrics
  (default localhost:9464); the server's `metrics_listen` setting also switches it on
- OTEL_SEMCONV_STABILITY_OPT_IN: rpc or rpc/dup (see `semconv`)
- OTEL_SDK_DISABLED=true: no SDK at all
- OTEL_PYTHON_GRPC_EXCLUDED_SERVICES: comma-separated gRPC services not traced (e.g.
  grpc.health.v1.Health, so probes do not flood the trace store); the name the contrib
  instrumentation uses

The embedded default differs from the SDK's (which exports OTLP): nothing is exported. Spans are
then started with an always-off sampler and no processor: nothing is recorded, but every RPC still
gets a trace id (or keeps the caller's), which QoS events and logs carry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from callqos.server.telemetry.instruments import Instruments
from callqos.server.telemetry.semconv import Semconv

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "callqos"
TRACES_EXPORTERS = ("otlp", "console", "none")
METRICS_EXPORTERS = ("otlp", "console", "prometheus", "none")
PROTOCOLS = ("grpc", "http/protobuf")


class TelemetryConfigError(ValueError):
    """An OTEL_* variable has a value this server does not support; the message names it."""


@dataclass
class Telemetry:
    """The tracer and meter providers a server records through, and what to close at the end."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    semconv: Semconv = field(default_factory=Semconv)
    excluded_services: frozenset[str] = frozenset()
    # The bound Prometheus /metrics port, when that endpoint is on.
    prometheus_port: int | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def instruments(self) -> Instruments:
        return Instruments(self.tracer_provider, self.meter_provider, self.semconv)

    def install_global(self) -> None:
        """Make these the process's providers, so a provider plugin's own spans
        (`trace.get_tracer(...)`) join the server's traces and exporters."""
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def shutdown(self) -> None:
        """Flush and stop exporters (last step of a graceful stop) and close the scrape endpoint."""
        for close in reversed(self._closers):
            try:
                close()
            except Exception:
                log.exception("telemetry shutdown step failed")
        self._closers.clear()


def _names(env: Mapping[str, str], variable: str, allowed: tuple[str, ...]) -> list[str]:
    names = [name.strip().lower() for name in env.get(variable, "none").split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise TelemetryConfigError(f"{variable}: unsupported {', '.join(unknown)} (use {', '.join(allowed)})")
    return [name for name in names if name != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r} (use {', '.join(PROTOCOLS)})"
        )
    return protocol


def _resource() -> Resource:
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _span_processor(name: str, env: Mapping[str, str]) -> SpanProcessor:
    if name == "console":
        # Printed as each span ends, so `OTEL_TRACES_EXPORTER=console make run` shows traces live.
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if _protocol(env, "TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return BatchSpanProcessor(OTLPSpanExporter())


def _metric_reader(name: str, env: Mapping[str, str]) -> MetricReader:
    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if _protocol(env, "METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _prometheus_address(env: Mapping[str, str], listen: str, wanted: bool) -> tuple[str, int] | None:
    if listen:
        host, _, port = listen.rpartition(":")
        return host.strip("[]"), int(port)
    if wanted:
        return env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"), int(
            env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
        )
    return None


def from_environment(metrics_listen: str = "", env: Mapping[str, str] | None = None) -> Telemetry:
    """Providers as the OTEL_* variables ask. `metrics_listen` (HOST:PORT, from the server's
    configuration) switches the Prometheus endpoint on whatever OTEL_METRICS_EXPORTER says."""
    env = os.environ if env is None else env
    semconv = Semconv.from_env(env)
    excluded = frozenset(s.strip() for s in env.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "").split(",") if s.strip())
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), semconv, excluded)
    resource = _resource()
    telemetry = Telemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), semconv, excluded)

    processors = [_span_processor(name, env) for name in _names(env, "OTEL_TRACES_EXPORTER", TRACES_EXPORTERS)]
    # No exporter: always-off sampling still hands out trace ids, for QoS events and logs.
    tracer_provider = TracerProvider(resource=resource, sampler=None if processors else ALWAYS_OFF)
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    telemetry.tracer_provider = tracer_provider
    telemetry._closers.append(tracer_provider.shutdown)

    metric_names = _names(env, "OTEL_METRICS_EXPORTER", METRICS_EXPORTERS)
    readers = [_metric_reader(name, env) for name in metric_names if name != "prometheus"]
    address = _prometheus_address(env, metrics_listen, "prometheus" in metric_names)
    if address is not None:
        readers.append(_start_prometheus(telemetry, *address))
    if readers:
        meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        telemetry.meter_provider = meter_provider
        # Closers run in reverse: the meter provider (final collection) before the HTTP endpoint.
        telemetry._closers.append(meter_provider.shutdown)
    return telemetry


def _start_prometheus(telemetry: Telemetry, host: str, port: int) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

    # A registry of our own, not prometheus_client's global one: two servers in one process
    # (tests) must not collide, and only these metrics are served — with the standard process_*
    # (CPU, memory, open files, start time) and python_info a scraper expects of any process.
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    reader = PrometheusMetricReader(registry=registry)
    http_server, thread = start_http_server(port, addr=host, registry=registry)
    telemetry.prometheus_port = int(http_server.server_port)

    def close() -> None:
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)

    telemetry._closers.append(close)
    log.info("prometheus metrics endpoint on", extra={"address": f"{host}:{telemetry.prometheus_port}"})
    return reader
