// W3C trace context for the client: a client span per RPC whose traceparent header goes to
// the server, so the server's span joins the caller's trace.
import type { Interceptor } from "@connectrpc/connect";
import {
  context,
  SpanKind,
  SpanStatusCode,
  trace,
  type TextMapSetter,
  type TracerProvider,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

const propagator = new W3CTraceContextPropagator();
const headerSetter: TextMapSetter<Headers> = {
  set: (headers, key, value) => headers.set(key, value),
};

/**
 * An interceptor that starts a CLIENT span named `callqos.v1.CallQosService/Method` (a child
 * of the active span, if a context manager is registered) and sends its W3C `traceparent`
 * (and `tracestate`). A stream's span ends when the response headers arrive. Without a
 * provider it uses the global one (`trace.getTracerProvider()`).
 */
export function tracingInterceptor(provider?: TracerProvider): Interceptor {
  const tracer = (provider ?? trace.getTracerProvider()).getTracer("@callqos/client");
  return (next) => async (req) => {
    const service = req.service.typeName;
    const span = tracer.startSpan(
      `${service}/${req.method.name}`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          "rpc.system": "grpc",
          "rpc.service": service,
          "rpc.method": req.method.name,
        },
      },
      context.active(),
    );
    propagator.inject(trace.setSpan(context.active(), span), req.header, headerSetter);
    try {
      return await next(req);
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
      throw err;
    } finally {
      span.end();
    }
  };
}
