// W3C trace context for the client: a client span per RPC whose traceparent header goes to
// the server, so the server's span joins the caller's trace.
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  context,
  SpanKind,
  SpanStatusCode,
  trace,
  type Span,
  type TextMapSetter,
  type TracerProvider,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";

const propagator = new W3CTraceContextPropagator();
const headerSetter: TextMapSetter<Headers> = {
  set: (headers, key, value) => headers.set(key, value),
};

/** The numeric gRPC status of the RPC (connect's `Code` has gRPC's numbers; 0 is OK). */
const STATUS_CODE = "rpc.grpc.status_code";

/**
 * An interceptor that starts a CLIENT span named `callqos.v1.CallQosService/Method` (a child
 * of the active span, if a context manager is registered) and sends its W3C `traceparent`
 * (and `tracestate`). Without a provider it uses the global one (`trace.getTracerProvider()`).
 *
 * A unary call's span ends with the response. A stream's span ends when the stream does: when
 * its last message has been read (`rpc.grpc.status_code` 0), when reading it fails (status
 * ERROR, the exception recorded, and the gRPC code), or when the caller stops it early, by
 * `return()` on the message iterator or by aborting the call's signal (not an error: status
 * UNSET; code 1, CANCELLED, for an abort). A deadline is an error. connect's own iterables
 * have no `return()`, so a consumer that breaks out of a raw stream without aborting it leaves
 * the stream, and its span, open; `CallQosClient.watch` aborts the stream when its consumer stops.
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
    if (!req.stream) {
      try {
        const res = await next(req);
        span.setAttribute(STATUS_CODE, 0);
        return res;
      } catch (err) {
        failed(span, err);
        throw err;
      } finally {
        span.end();
      }
    }

    // A stream: the span ends once, on whichever comes first of the end of the messages, an
    // error reading them, return() on their iterator, or the call's signal aborting.
    let ended = false;
    const signal = req.signal;
    const end = (outcome: { err: unknown } | { code?: number }) => {
      if (ended) {
        return;
      }
      ended = true;
      signal.removeEventListener("abort", onAbort);
      if ("err" in outcome) {
        failed(span, outcome.err);
      } else if (outcome.code !== undefined) {
        span.setAttribute(STATUS_CODE, outcome.code);
      }
      span.end();
    };
    // The signal also aborts (after this interceptor has seen it) when the stream finishes
    // or fails, so by then the span has ended; before, it is the caller's abort or the deadline.
    function onAbort() {
      const reason = ConnectError.from(signal.reason, Code.Canceled);
      end(reason.code === Code.DeadlineExceeded ? { err: reason } : { code: Code.Canceled });
    }
    signal.addEventListener("abort", onAbort);
    if (signal.aborted) {
      onAbort();
    }
    let res;
    try {
      res = await next(req);
    } catch (err) {
      end({ err });
      throw err;
    }
    if (!res.stream) {
      end({ code: 0 }); // not seen with connect's transports
      return res;
    }
    const messages = res.message;
    return {
      ...res,
      message: {
        [Symbol.asyncIterator]() {
          const it = messages[Symbol.asyncIterator]();
          return {
            async next() {
              try {
                const r = await it.next();
                if (r.done) {
                  end({ code: 0 });
                }
                return r;
              } catch (err) {
                // An abort's own error follows onAbort, which has ended the span already.
                end({ err });
                throw err;
              }
            },
            async return(value?: unknown) {
              end({});
              await it.return?.();
              return { done: true as const, value };
            },
          };
        },
      },
    };
  };
}

function failed(span: Span, err: unknown): void {
  const error = ConnectError.from(err);
  span.setAttribute(STATUS_CODE, error.code);
  span.recordException(error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
}
