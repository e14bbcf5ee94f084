"""What the server records: provider and store child spans, and the service's metrics.

One `Instruments` per running server, built from the tracer and meter providers it was given
(tests pass SDK providers with in-memory exporters; `serve` passes the ones `setup` built from the
OTEL_* variables). Span attributes are only computed when the span is recording, and metrics only
when a meter provider that exports was given, so the default (nothing exported) costs little.

Metrics (OpenTelemetry names; the Prometheus endpoint shows `.` as `_`, counters with `_total`,
units as suffixes):
- rpc.server.call.duration (s): RPC duration, by method and status (in seconds, the Prometheus
  and stable-semconv convention; its attributes follow OTEL_SEMCONV_STABILITY_OPT_IN)
- callqos.provider.duration (s): provider calls, by provider, operation and outcome
- callqos.admissions: admit decisions, by provider, service type, outcome and reason
- callqos.renegotiations: renegotiations, by provider, outcome and reason
- callqos.incoming_calls: calls offered on lines and how each offer ended, by provider and
  outcome (offered, answered, refused, rejected, no_answer, canceled, failed)
- callqos.leases.expired: calls ended because their lease ran out, by provider
- callqos.calls.active: connected calls, by provider and service type
- callqos.link.capacity / callqos.link.reserved (By/s): per link (and direction), for
  providers that administer links
- callqos.watch.streams: open WatchEvents streams
- callqos.event_loop.lag (s): how late the event loop ran a timer
- callqos.build.info: 1, with the server's version (and the Python implementation) as attributes
- callqos.releases.pending: releases owed to providers and not yet confirmed (CALL-6)
- callqos.ledger.repairs: reconciliation outcomes, by provider and outcome (PROV-19)
(and on the Prometheus endpoint, the standard process_* and python_info metrics)
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from callqos.server.providers.base import AdmissionRequest, Grant, Refusal, RefusalKind
from callqos.server.qos import reserved_rate
from callqos.server.telemetry.semconv import Semconv, rpc_attributes, status_attributes
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2

SCOPE = "callqos.server"
ST = flowspec_pb2.ServiceType
QosSpec = flowspec_pb2.QosSpec
DIRECTIONS = ("sending", "receiving")
# Our RPCs take well under a millisecond; the SDK's default buckets start at 5 (ms).
DURATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# The label of a call's service type is the more demanding of its two directions.
_DEMAND = (
    ST.SERVICE_TYPE_NETWORK_CONTROL,
    ST.SERVICE_TYPE_GUARANTEED,
    ST.SERVICE_TYPE_CONTROLLED_LOAD,
    ST.SERVICE_TYPE_QUALITATIVE,
    ST.SERVICE_TYPE_BEST_EFFORT,
    ST.SERVICE_TYPE_NO_TRAFFIC,
)
_REFUSAL_REASON = {RefusalKind.ADMISSION: "QOS_UNAVAILABLE", RefusalKind.POLICY: "QOS_POLICY_FAILURE"}


def _version() -> str:
    try:
        return metadata.version("callqos-server")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "unknown"


# Span attributes are int64 in OTLP; a rate may be any uint64 (issue 11: every derived quantity
# is bounded). Larger values are recorded as the int64 maximum rather than failing the export.
INT64_MAX = 2**63 - 1


def _int64(value: int) -> int:
    return min(value, INT64_MAX)


def _type_name(kind: int) -> str:
    return ST.Name(kind).removeprefix("SERVICE_TYPE_") if kind in ST.values() else str(kind)


def service_type(qos: QosSpec) -> str:
    kinds = {qos.sending.service_type, qos.receiving.service_type}
    for kind in _DEMAND:
        if kind in kinds:
            return _type_name(kind)
    return _type_name(qos.sending.service_type)


class ProviderSpan:
    """The span of one provider call, told what the provider decided."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.outcome = "ok"

    def decided(self, result: object) -> None:
        if isinstance(result, Grant):
            self.outcome = "granted"
        elif isinstance(result, Refusal):
            self.outcome = "refused"
        if not self.span.is_recording():
            return
        # One set_attributes call: each call takes the span's lock and cleans what it is given.
        attributes: dict[str, str | int] = {"callqos.outcome": self.outcome}
        if isinstance(result, Grant):
            for direction in DIRECTIONS:
                attributes[f"callqos.{direction}.granted_bytes_per_second"] = _int64(
                    reserved_rate(getattr(result.qos, direction))
                )
        elif isinstance(result, Refusal):
            # A refusal is an outcome, not an error: the span status stays unset.
            attributes["callqos.reason"] = _REFUSAL_REASON[result.kind]
            attributes["callqos.refusal.kind"] = result.kind.value
            attributes["callqos.refusal.message"] = result.message
            if result.counter_offer is not None:
                for direction in DIRECTIONS:
                    rate = reserved_rate(getattr(result.counter_offer, direction))
                    attributes[f"callqos.{direction}.counter_offer_bytes_per_second"] = _int64(rate)
        self.span.set_attributes(attributes)


class Instruments:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        semconv: Semconv | None = None,
    ) -> None:
        self.semconv = semconv or Semconv.from_env()
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = tracer_provider.get_tracer(SCOPE)
        # Nothing would record a span (no-op provider, or the SDK sampling nothing): skip creating
        # them at all — the embedded default must cost little. RPCs still get trace ids (see the
        # interceptor), so events and logs stay correlatable.
        self.tracing_enabled = records_spans(tracer_provider)
        # Without an exporting meter provider, skip even building the measurements' attributes.
        self.metrics_enabled = meter_provider is not None and not isinstance(meter_provider, metrics.NoOpMeterProvider)
        meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(SCOPE)
        self._rpc_duration_s = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of inbound RPCs",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self._provider_duration = meter.create_histogram(
            "callqos.provider.duration",
            unit="s",
            description="Duration of calls into QoS providers",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self._loop_lag = meter.create_histogram(
            "callqos.event_loop.lag",
            unit="s",
            description="How late the server's event loop ran a timer (blocking code delays every RPC)",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        self._admissions = meter.create_counter(
            "callqos.admissions", unit="{decision}", description="Admission decisions for new calls"
        )
        self._renegotiations = meter.create_counter(
            "callqos.renegotiations", unit="{renegotiation}", description="Renegotiations of a call's QoS"
        )
        self._incoming = meter.create_counter(
            "callqos.incoming_calls", unit="{call}", description="Calls offered on lines, and how each offer ended"
        )
        self._leases_expired = meter.create_counter(
            "callqos.leases.expired", unit="{call}", description="Calls ended because their lease ran out"
        )
        meter.create_observable_up_down_counter(
            "callqos.calls.active", [self._observe_calls], unit="{call}", description="Connected calls"
        )
        meter.create_observable_up_down_counter(
            "callqos.watch.streams", [self._observe_watchers], unit="{stream}", description="Open WatchEvents streams"
        )
        meter.create_observable_up_down_counter(
            "callqos.releases.pending",
            [self._observe_pending_releases],
            unit="{release}",
            description="Releases owed to providers that they have not confirmed yet",
        )
        self._repairs = meter.create_counter(
            "callqos.ledger.repairs",
            unit="{call}",
            description="Calls on which reconciliation found the provider and the store disagreeing, by outcome",
        )
        meter.create_observable_gauge(
            "callqos.link.capacity",
            [self._observe_capacity],
            unit="By/s",
            description="Capacity of a provider's link, each direction",
        )
        meter.create_observable_gauge(
            "callqos.link.reserved",
            [self._observe_reserved],
            unit="By/s",
            description="Rate reserved on a provider's link, by direction",
        )
        # Set by the server once its servicer (and its ledger) exist.
        self.open_watch_streams: Callable[[], int] = lambda: 0
        self.pending_releases: Callable[[], int] = lambda: 0
        self._active: dict[str, tuple[str, str]] = {}  # connected call → (provider, service type)
        self._active_counts: Counter[tuple[str, str]] = Counter()
        self._links: dict[str, provider_pb2.Link] = {}
        self._rpc_metric_attributes: dict[tuple[str, str, grpc.StatusCode], dict[str, str | int]] = {}
        self._build = {"version": _version(), "python": platform.python_implementation()}
        meter.create_observable_gauge(
            "callqos.build.info",
            [lambda options: [Observation(1, self._build)]],
            description="The running server's version (always 1)",
        )

    # -- RPCs (the interceptor) ---------------------------------------------------------------
    def record_rpc(self, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        if not self.metrics_enabled:
            return
        key = (service, method, code)
        attributes = self._rpc_metric_attributes.get(key)
        if attributes is None:
            attributes = self._rpc_metric_attributes[key] = {
                **rpc_attributes(self.semconv, service, method),
                **status_attributes(self.semconv, code),
            }
        self._rpc_duration_s.record(seconds, attributes)

    def providers_hosted(self, providers: Iterable[str]) -> None:
        """Start each provider's decision counters at 0, so that a dashboard sees the series (and a
        rate of 0) before the first renegotiation or refusal rather than no data."""
        if not self.metrics_enabled:
            return
        for provider in providers:
            for outcome in ("granted", "refused", "error"):
                self._renegotiations.add(0, {"callqos.provider": provider, "callqos.outcome": outcome})

    def record_loop_lag(self, seconds: float) -> None:
        if self.metrics_enabled:
            self._loop_lag.record(seconds)

    # -- providers ----------------------------------------------------------------------------
    def observes_provider_calls(self) -> bool:
        """Whether a provider call now would be recorded: metrics are on, or the RPC's span is
        sampled. When not (the default, and most RPCs under head sampling), the host skips
        `provider_call` entirely."""
        return self.metrics_enabled or (self.tracing_enabled and trace.get_current_span().is_recording())

    @contextlib.contextmanager
    def provider_call(
        self, provider: str, operation: str, request: AdmissionRequest | None = None, call: str = ""
    ) -> Iterator[ProviderSpan]:
        """A child span around one call into `provider` (`providers/{provider}`). Provider code
        runs inside it, so a provider's own spans are its children. Status ERROR only when the
        provider failed or timed out."""
        started = time.perf_counter()
        attributes: dict[str, str | int] = {"callqos.provider": provider, "callqos.provider.operation": operation}
        if request is not None:
            attributes.update(_request_attributes(request))
        elif call:
            attributes["callqos.call"] = call
        with self._span(f"callqos.provider.{operation}", attributes) as span:
            result = ProviderSpan(span)
            try:
                yield result
            except asyncio.CancelledError:
                result.outcome = "cancelled"  # the caller went away; not the provider's failure
                raise
            except Exception as exc:
                result.outcome = "error"
                # The host wraps the provider's exception in a ServiceError; record the original.
                span.record_exception(exc.__cause__ or exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.set_attribute("callqos.outcome", "error")
                raise
            finally:
                if self.metrics_enabled:
                    self._provider_duration.record(
                        time.perf_counter() - started,
                        {
                            "callqos.provider": provider,
                            "callqos.provider.operation": operation,
                            "callqos.outcome": result.outcome,
                        },
                    )

    def record_links(self, provider: str, links: Iterable[provider_pb2.Link]) -> None:
        """The links of `provider` (`providers/{provider}`) as they are now, for the link gauges.
        Observable-gauge callbacks are synchronous and may run on an exporter thread, so they
        cannot await the provider; they read this snapshot, which the provider host refreshes
        after every operation that may move reservations."""
        prefix = provider + "/"
        fresh = {name: link for name, link in self._links.items() if not name.startswith(prefix)}
        fresh.update((link.name, link) for link in links)
        self._links = fresh

    # -- call outcomes (CallManager) ----------------------------------------------------------
    def decision(self, operation: str, provider: str, qos: QosSpec, outcome: str, reason: str = "") -> None:
        """The outcome of an admit or renegotiate, on the RPC's span and in the counters."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("callqos.outcome", outcome)
            if reason:
                span.set_attribute("callqos.reason", reason)
        if not self.metrics_enabled:
            return
        attributes = {"callqos.provider": provider, "callqos.outcome": outcome}
        if reason:
            attributes["callqos.reason"] = reason
        if operation == "admit":
            self._admissions.add(1, {**attributes, "callqos.service_type": service_type(qos)})
        else:
            self._renegotiations.add(1, attributes)

    def incoming_call(self, outcome: str, provider: str) -> None:
        """A call was offered on a line (`offered`), or its offer ended: `answered`, `refused`
        (the answer or the provider fell short), `rejected`, `no_answer`, `canceled` (the caller
        gave up) or `failed` (the provider failed at answer)."""
        if self.metrics_enabled:
            self._incoming.add(1, {"callqos.provider": provider, "callqos.outcome": outcome})

    def lease_expired(self, provider: str) -> None:
        """A call (a pair counts once) ended because its lease ran out."""
        if self.metrics_enabled:
            self._leases_expired.add(1, {"callqos.provider": provider})

    def continued(
        self, traceparent: str, name: str, attributes: dict[str, str | int]
    ) -> contextlib.AbstractContextManager[Span]:
        """A current span that continues the trace `traceparent` (W3C) — that of the offer of a
        call, for its answer, rejection or ring-out, so a call's set-up is one trace — and links
        to the span current now (the AnswerCall RPC's, say). Without tracing: an unrecorded span
        in that trace, so the events it causes still carry the offer's trace id. An unusable
        `traceparent` leaves the current trace as it is."""
        parent = parse_traceparent(traceparent)
        if parent is None:
            return contextlib.nullcontext(trace.get_current_span())
        if not self.tracing_enabled:
            return _CurrentSpan(untraced_span(parent.trace_id))
        here = trace.get_current_span().get_span_context()
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            links=[trace.Link(here)] if here.is_valid else [],
            attributes=attributes,
        )
        return _CurrentSpan(span)

    def ledger_repair(self, provider: str, outcome: str) -> None:
        """One call reconciled (`outcome`: released, re-taken, changed, disconnected, failed, agreed)."""
        if self.metrics_enabled:
            self._repairs.add(1, {"callqos.provider": provider, "callqos.outcome": outcome})

    def background(self, name: str, attributes: dict[str, str | int]) -> contextlib.AbstractContextManager[Span]:
        """The current span for work no RPC caused — restoring calls at start-up, a change a
        provider reports on its own — so that its QoS events carry a trace id too: a root span
        named `name` when tracing records, else an unrecorded one with fresh ids. Work that runs
        inside an RPC's trace (a provider reporting changes while UpdateLink runs) stays in it."""
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            return contextlib.nullcontext(current)
        if self.tracing_enabled:
            span: Span = self.tracer.start_span(name, context=otel_context.Context(), attributes=attributes)
        else:
            span = untraced_span()
        return _CurrentSpan(span)

    def _span(self, name: str, attributes: dict[str, str | int]) -> contextlib.AbstractContextManager[Span]:
        """A current child span of the RPC's span — or nothing when tracing is off or the RPC's
        span was sampled out (a child of an unrecorded parent would not be recorded either, but
        would still cost an SDK span). Attributes go in at the start, in one cleaning pass."""
        if not self.tracing_enabled or not trace.get_current_span().is_recording():
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return _CurrentSpan(
            self.tracer.start_span(name, attributes=attributes, record_exception=False, set_status_on_exception=False)
        )

    def call_committed(self, call: call_pb2.Call) -> None:
        """Keep the connected-calls gauge in step with the store (called after each commit and
        for each connected call at start-up; idempotent per call)."""
        if not self.metrics_enabled:
            return
        connected = call.state == call_pb2.Call.State.STATE_CONNECTED
        new = (call.provider, service_type(call.granted_qos)) if connected else None
        old = self._active.get(call.name)
        if old == new:
            return
        if old is not None:
            self._active_counts[old] -= 1
        if new is None:
            self._active.pop(call.name, None)
        else:
            self._active[call.name] = new
            self._active_counts[new] += 1

    # -- observable callbacks (may run on an exporter's thread: read snapshots only) ------------
    def _observe_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"callqos.provider": provider, "callqos.service_type": kind})
            for (provider, kind), count in list(self._active_counts.items())
        ]

    def _observe_watchers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.open_watch_streams())]

    def _observe_pending_releases(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.pending_releases())]

    def _observe_capacity(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(_int64(link.capacity_bytes_per_second), {"callqos.link": name})
            for name, link in list(self._links.items())
        ]

    def _observe_reserved(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for name, link in list(self._links.items()):
            observations.append(
                Observation(
                    _int64(link.sending_reserved_bytes_per_second),
                    {"callqos.link": name, "callqos.direction": "sending"},
                )
            )
            observations.append(
                Observation(
                    _int64(link.receiving_reserved_bytes_per_second),
                    {"callqos.link": name, "callqos.direction": "receiving"},
                )
            )
        return observations


class _CurrentSpan:
    """`with`: make `span` current, end it on exit. A plain class rather than the SDK's
    generator-based `start_as_current_span`, which costs measurably at two child spans per RPC."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self.token)
        self.span.end()


class UntracedSpan(trace.NonRecordingSpan):
    """A span that records nothing but gives the work under it a trace id (`trace_id`, or a new
    one) for QoS events and logs: what runs instead of an SDK span when nothing would be recorded.
    Its ids are drawn when something first asks for them (an event, a log line, the audit), so
    that an RPC that writes none, a GetCall say, does not pay for them."""

    def __init__(self, trace_id: int = 0) -> None:
        self._trace_id = trace_id
        self._context: trace.SpanContext | None = None  # type: ignore[assignment]

    def _chosen_trace_id(self) -> int:
        """The trace this span stands in (0: a new one), asked once, when its ids are first needed."""
        return self._trace_id

    def get_span_context(self) -> trace.SpanContext:
        if self._context is None:
            self._context = trace.SpanContext(
                self._chosen_trace_id() or random.getrandbits(128), random.getrandbits(64), is_remote=False
            )
        return self._context

    def __repr__(self) -> str:
        return f"UntracedSpan({self.get_span_context()!r})"


def untraced_span(trace_id: int = 0) -> trace.NonRecordingSpan:
    """An `UntracedSpan` in the trace `trace_id` (0: a new trace)."""
    return UntracedSpan(trace_id)


def current_traceparent() -> str:
    """The W3C traceparent of the current span ('' outside a trace)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(text: str) -> trace.SpanContext | None:
    """The remote span context a W3C traceparent names (version 00), or None."""
    parts = text.split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))


def records_spans(provider: trace.TracerProvider) -> bool:
    """Whether `provider` can record any span: not the API's no-op, nor an SDK provider that
    samples nothing."""
    if isinstance(provider, trace.NoOpTracerProvider):
        return False
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    return getattr(provider, "sampler", None) is not ALWAYS_OFF


def _request_attributes(request: AdmissionRequest) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "callqos.call": request.call,
        "callqos.service_level": call_pb2.ServiceLevel.Name(request.level).removeprefix("SERVICE_LEVEL_"),
        "callqos.service_type": service_type(request.qos),
    }
    for direction in DIRECTIONS:
        spec = getattr(request.qos, direction)
        attributes[f"callqos.{direction}.service_type"] = _type_name(spec.service_type)
        attributes[f"callqos.{direction}.requested_bytes_per_second"] = _int64(reserved_rate(spec))
    return attributes
