"""One server span per RPC (RPC semantic conventions), W3C context from the caller's metadata,
and the RPC duration histogram.

Why in-house rather than opentelemetry-instrumentation-grpc's `aio_server_interceptor`:
- its aio streaming wrapper does `async for` over the handler, so handlers written in the
  `await context.write()` style — grpcio-health-checking's `Watch` among them — fail
  (opentelemetry-python-contrib#3066, grpc/grpc#28728); this wraps both styles;
- it emits only the pre-1.37 RPC attributes and ignores OTEL_SEMCONV_STABILITY_OPT_IN, and it
  records no metrics; this does both;
- it measured +133 µs of server CPU per RPC here against +75 µs for a minimal hand-written one
  (measured when this was chosen; `make bench` measures what tracing costs now), and tracing is
  the largest single cost of this service.
It is installed only when something observes RPCs (`observes_rpcs`: spans, metrics, the debug
line per RPC). In the embedded default nothing does, and each CallQosService handler makes its
RPC's trace current itself (`enter_rpc_trace`), reading the caller's trace context only if
something asks for the trace id.
The ServicerContext is passed through untouched, so `abort_with_status` trailers (our rich
errors in `grpc-status-details-bin`) reach the client as they are (contrib#2065 was the
wrapped-context variant of that bug); a test checks it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from callqos.server.telemetry.instruments import Instruments, UntracedSpan, untraced_span
from callqos.server.telemetry.semconv import SERVER_ERROR_CODES, peer_attributes, rpc_attributes, status_attributes

Metadata = Sequence[tuple[str, str | bytes]]
log = logging.getLogger("callqos.server.rpc")


class _MetadataGetter(Getter[Metadata]):
    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()
_NO_PARENT = otel_context.Context()


def _extract(metadata: Metadata | None, keys: frozenset[str]) -> otel_context.Context:
    """The caller's trace context from an RPC's metadata (an empty context when it sent none of
    the propagator's `keys`)."""
    if not metadata or not any(key in keys for key, _ in metadata):
        return _NO_PARENT
    return propagate.extract(metadata, getter=_GETTER)


def _propagation_keys() -> frozenset[str]:
    """The metadata keys the configured propagator reads (W3C traceparent, tracestate, baggage by
    default; OTEL_PROPAGATORS may change them)."""
    return frozenset(propagate.get_global_textmap().fields)


def _callers_trace_id(parent: otel_context.Context) -> int:
    """The trace id of the caller's context `parent` (0 when it has none: a new trace)."""
    return 0 if parent is _NO_PARENT else trace.get_current_span(parent).get_span_context().trace_id


def _unrecorded(parent: otel_context.Context) -> trace.Span:
    """A span that records nothing, in the caller's trace (`parent`) or else in a new one."""
    return untraced_span(_callers_trace_id(parent))


def observes_rpcs(instruments: Instruments) -> bool:
    """Whether RPCs need the interceptor: something records them (spans, the duration metric, the
    debug line per RPC, as the log level stands when the server starts). When nothing does (the
    embedded default), the server installs none, and each handler makes its RPC's trace current
    itself with `enter_rpc_trace`: the interceptor's coroutine and per-RPC work cost a GetCall
    about 5 % of its server CPU even when it records nothing (README "Performance")."""
    return instruments.tracing_enabled or instruments.metrics_enabled or log.isEnabledFor(logging.DEBUG)


class _CallersTrace(UntracedSpan):
    """The unrecorded span of an RPC that no interceptor observes: in the caller's trace (the W3C
    context in the RPC's metadata) or a new one, like the interceptor's unrecorded span, but
    reading the metadata only when something first asks for its ids (a QoS event, a log line,
    the audit, a call to an out-of-process provider), which most RPCs (a GetCall) never do."""

    def __init__(self, servicer_context: grpc.aio.ServicerContext) -> None:
        super().__init__()
        self._rpc: grpc.aio.ServicerContext | None = servicer_context

    def _chosen_trace_id(self) -> int:
        rpc, self._rpc = self._rpc, None  # asked once; the span may outlive the RPC
        return _callers_trace_id(_extract(rpc.invocation_metadata() if rpc else None, _propagation_keys()))


def enter_rpc_trace(servicer_context: grpc.aio.ServicerContext) -> object:
    """Make the RPC's trace current in a handler that no interceptor observes (`observes_rpcs`
    false); returns the token for `otel_context.detach`."""
    return otel_context.attach(trace.set_span_in_context(_CallersTrace(servicer_context)))


class _Rpc:
    """One RPC being traced: its span, the context to run the handler in, and how it ended."""

    __slots__ = ("context", "instruments", "method", "service", "span", "started")

    def __init__(
        self, interceptor: TelemetryInterceptor, service: str, method: str, servicer_context: grpc.aio.ServicerContext
    ) -> None:
        self.instruments = interceptor.instruments
        self.service, self.method = service, method
        self.started = time.perf_counter()
        parent = interceptor.extract(servicer_context.invocation_metadata())
        if not self.instruments.tracing_enabled:
            # Nothing is recorded, but the RPC still runs in a trace: the caller's, or a new id,
            # so that QoS events and log lines carry a trace id. Far cheaper than an SDK span.
            self.span: trace.Span = _unrecorded(parent)
            self.context = trace.set_span_in_context(self.span)
            return
        self.span = self.instruments.tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=interceptor.static_attributes(service, method),
        )
        if self.span.is_recording():
            self.span.set_attributes(peer_attributes(self.instruments.semconv, servicer_context.peer()))
        self.context = trace.set_span_in_context(self.span, parent)

    def run(self) -> object:
        """Make the span current; returns the token for `leave`. Attached and detached within one
        step of the handler, never across a `yield`: an async generator closed by the garbage
        collector runs in another contextvars Context, where resetting a token from the first one
        fails (grpc/grpc#42295)."""
        return otel_context.attach(self.context)

    @staticmethod
    def leave(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def end(self, code: grpc.StatusCode, details: str | None, error: BaseException | None = None) -> None:
        semconv = self.instruments.semconv
        if self.span.is_recording():
            self.span.set_attributes(status_attributes(semconv, code))
            if code in SERVER_ERROR_CODES:
                if error is not None and not isinstance(error, grpc.aio.AbortError):
                    self.span.record_exception(error)
                self.span.set_status(Status(StatusCode.ERROR, details or code.name))
        self.span.end()
        seconds = time.perf_counter() - self.started
        self.instruments.record_rpc(self.service, self.method, code, seconds)
        if log.isEnabledFor(logging.DEBUG):  # one line per RPC, at debug (in the RPC's trace)
            token = otel_context.attach(self.context)
            try:
                log.debug(
                    "rpc",
                    extra={"method": f"{self.service}/{self.method}", "code": code.name, "seconds": round(seconds, 6)},
                )
            finally:
                otel_context.detach(token)


def _ended(context: grpc.aio.ServicerContext, error: BaseException | None) -> tuple[grpc.StatusCode, str | None]:
    """The status the RPC ends with, as grpc.aio will send it."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
        return grpc.StatusCode.CANCELLED, None
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code, context.details()
    if error is None:
        return grpc.StatusCode.OK, None
    # A raised exception that is not an abort leaves as UNKNOWN.
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"


Behaviour = Callable[..., Any]


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, instruments: Instruments, excluded_services: frozenset[str] = frozenset()) -> None:
        self.instruments = instruments
        self.excluded_services = excluded_services
        self._static: dict[tuple[str, str], dict[str, str]] = {}
        # method → (grpc's handler, our wrapped copy). grpc hands out the same handler object for
        # every call of a method, and the wrappers read everything per-call from the servicer
        # context, so one wrapped handler per method serves every call (rather than a new
        # closure and namedtuple per RPC).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # An RPC that sent none of the propagator's keys starts a new trace without running the
        # extractors.
        self._propagation_keys = _propagation_keys()

    def static_attributes(self, service: str, method: str) -> dict[str, str]:
        key = (service, method)
        attributes = self._static.get(key)
        if attributes is None:
            attributes = self._static[key] = rpc_attributes(self.instruments.semconv, service, method)
        return attributes

    def extract(self, metadata: Metadata | None) -> otel_context.Context:
        """The caller's trace context from the RPC's metadata (an empty context when it sent none)."""
        return _extract(metadata, self._propagation_keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        full_method: str = handler_call_details.method
        cached = self._wrapped.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full_method)
        self._wrapped[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, _, method = full_method.lstrip("/").rpartition("/")
        if service in self.excluded_services:
            return handler
        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
        behaviour = getattr(handler, kind)
        if inspect.isasyncgenfunction(behaviour):
            wrapped = self._wrap_generator(behaviour, service, method)
        elif inspect.iscoroutinefunction(behaviour):
            wrapped = self._wrap_coroutine(behaviour, service, method)
        else:
            return handler  # a sync handler (migration thread pool): not ours to wrap
        return handler._replace(**{kind: wrapped})  # grpc's handlers are namedtuples

    def _wrap_coroutine(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        """Unary responses, and streams written with `await context.write()`."""

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rpc = _Rpc(self, service, method, context)
            token = rpc.run()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:  # recorded, then re-raised unchanged
                error = exc
                raise
            finally:
                rpc.leave(token)
                rpc.end(*_ended(context, error), error)

        return traced

    def _wrap_generator(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        """Streams written as async generators (WatchEvents)."""

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rpc = _Rpc(self, service, method, context)
            inner = behaviour(request, context)
            error: BaseException | None = None
            try:
                while True:
                    token = rpc.run()
                    try:
                        item = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        rpc.leave(token)
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                token = rpc.run()
                try:
                    await inner.aclose()  # when the stream was abandoned at a yield
                finally:
                    rpc.leave(token)
                    rpc.end(*_ended(context, error), error)

        return traced
