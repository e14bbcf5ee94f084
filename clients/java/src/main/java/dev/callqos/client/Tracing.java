package dev.callqos.client;

import io.grpc.ClientInterceptor;
import io.opentelemetry.api.OpenTelemetry;
import io.opentelemetry.api.logs.LoggerProvider;
import io.opentelemetry.api.metrics.MeterProvider;
import io.opentelemetry.api.trace.TracerProvider;
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator;
import io.opentelemetry.context.propagation.ContextPropagators;
import io.opentelemetry.instrumentation.grpc.v1_6.GrpcTelemetry;

/**
 * The client's OpenTelemetry tracing, from opentelemetry-java-instrumentation's gRPC library
 * (opentelemetry-grpc-1.6): one CLIENT span per RPC, named {@code callqos.v1.CallQosService/Method},
 * a child of the current span, with the rpc.* attributes and status ERROR when the RPC fails; its
 * context goes to the server in the request metadata (W3C {@code traceparent}), so the server's
 * span joins the caller's trace.
 *
 * <p>Only {@link CallQosClient} refers to this class, and only when its builder was given an
 * OpenTelemetry: a client built without one loads no OpenTelemetry class, which is why the
 * OpenTelemetry dependencies can be optional.
 */
final class Tracing {
  private Tracing() {}

  static ClientInterceptor clientInterceptor(OpenTelemetry openTelemetry) {
    return GrpcTelemetry.builder(withW3cFallback(openTelemetry))
        // No span event per message: a WatchEvents stream would get one per QoS event.
        .setEmitMessageEvents(false)
        .build()
        .createClientInterceptor();
  }

  /**
   * {@code openTelemetry}, or, if it has no propagator (OpenTelemetrySdk's default, easily
   * forgotten), the same with W3C trace context, as the Go and TypeScript clients always send:
   * without a propagator the client would trace but the server could not join the trace.
   */
  static OpenTelemetry withW3cFallback(OpenTelemetry openTelemetry) {
    if (!openTelemetry.getPropagators().getTextMapPropagator().fields().isEmpty()) {
      return openTelemetry;
    }
    ContextPropagators w3c = ContextPropagators.create(W3CTraceContextPropagator.getInstance());
    return new OpenTelemetry() {
      @Override
      public TracerProvider getTracerProvider() {
        return openTelemetry.getTracerProvider();
      }

      @Override
      public MeterProvider getMeterProvider() {
        return openTelemetry.getMeterProvider();
      }

      @Override
      public LoggerProvider getLogsBridge() {
        return openTelemetry.getLogsBridge();
      }

      @Override
      public ContextPropagators getPropagators() {
        return w3c;
      }
    };
  }
}
