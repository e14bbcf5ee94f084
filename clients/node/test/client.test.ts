import assert from "node:assert/strict";
import { createServer as createHttp2Server, type IncomingHttpHeaders } from "node:http2";
import { createServer as createTcpServer, connect as tcpConnect, type AddressInfo, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { SpanStatusCode } from "@opentelemetry/api";
import { hrTimeToMilliseconds } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import {
  CallQosClient,
  CallQosError,
  Call_State,
  ControlledLoad,
  DisconnectReason,
  DOMAIN,
  ErrorReason,
  PRINCIPAL_HEADER,
  QosEventType,
  QosUnavailableError,
  ServiceLevel,
  ServiceType,
  reasonString,
  type Call,
  type CallQosClientOptions,
  type EventWatcher,
  type QosEvent,
} from "../src/index.js";
import { run as quickstart } from "../examples/quickstart.js";
import { startServer, type TestServer } from "./server.js";

const LINK_CAPACITY = 1_250_000n; // the reference provider's default link, each way

let server: TestServer;
const clients: CallQosClient[] = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  clients.forEach((c) => c.close());
  await server.stop();
});

function client(options: Partial<CallQosClientOptions> = {}): CallQosClient {
  const c = new CallQosClient({ address: server.address, principal: "alice", ...options });
  clients.push(c);
  return c;
}

async function connect(c: CallQosClient, rate: bigint): Promise<Call> {
  return c.createCall({
    call: { destination: "sip:bob@example.com", serviceLevel: ServiceLevel.NEEDED, requestedQos: ControlledLoad(rate) },
  });
}

const rate = (c: Call) => c.grantedQos?.sending?.tokenRateBytesPerSecond;

async function rejection(p: Promise<unknown>): Promise<CallQosError> {
  const err = await p.then(
    () => assert.fail("expected the call to fail"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof CallQosError, `not a CallQosError: ${err}`);
  return err;
}

describe("calls", () => {
  test("create, get, drop", async () => {
    const c = client();
    const call = await connect(c, 100_000n);
    assert.equal(call.state, Call_State.CONNECTED);
    assert.equal(rate(call), 100_000n);
    assert.equal(call.owner, "alice");
    assert.deepEqual((await c.getCall(call.name)).grantedQos, call.grantedQos);
    const dropped = await c.dropCall(call.name);
    assert.equal(dropped.state, Call_State.DISCONNECTED);
    assert.equal(dropped.disconnectReason, DisconnectReason.NORMAL);
  });

  test("a refusal carries the counter-offer, and taking it succeeds", async () => {
    const c = client();
    const call = {
      destination: "sip:carol@example.com",
      serviceLevel: ServiceLevel.NEEDED,
      requestedQos: ControlledLoad(2n * LINK_CAPACITY),
    };
    const err = await rejection(c.createCall({ call }));
    assert.ok(err instanceof QosUnavailableError);
    assert.equal(err.code, Code.ResourceExhausted);
    assert.equal(err.reason, reasonString(ErrorReason.QOS_UNAVAILABLE));
    assert.equal(err.info?.domain, DOMAIN);
    assert.match(err.call, /^calls\//);
    const offered = err.counterOffer?.sending?.tokenRateBytesPerSecond ?? 0n;
    assert.ok(offered > 0n && offered <= LINK_CAPACITY, `counter-offer ${offered}`);
    const refused = await c.getCall(err.call);
    assert.equal(refused.disconnectReason, DisconnectReason.QOS_UNAVAILABLE);

    const granted = await c.createCall({ call: { ...call, requestedQos: err.counterOffer } });
    assert.equal(rate(granted), offered);
    await c.dropCall(granted.name);
  });

  test("renegotiate up and down; a refused one changes nothing; only the owner may", async () => {
    const c = client();
    let call = await connect(c, 200_000n);
    for (const r of [400_000n, 100_000n]) {
      call = await c.renegotiateCall({ name: call.name, qos: ControlledLoad(r), etag: call.etag });
      assert.equal(rate(call), r);
    }
    const err = await rejection(c.renegotiateCall({ name: call.name, qos: ControlledLoad(2n * LINK_CAPACITY) }));
    assert.ok(err instanceof QosUnavailableError);
    assert.equal(err.call, call.name);
    const after = await c.getCall(call.name);
    assert.equal(after.state, Call_State.CONNECTED);
    assert.deepEqual(after.grantedQos, call.grantedQos);

    const other = await rejection(
      client({ principal: "mallory" }).renegotiateCall({ name: call.name, qos: ControlledLoad(1000) }),
    );
    assert.equal(other.code, Code.PermissionDenied);
    assert.equal(other.reason, "NOT_OWNER");
    await c.dropCall(call.name);
  });

  test("an invalid request names the bad field", async () => {
    const qos = ControlledLoad(1000);
    qos.sending!.serviceType = ServiceType.UNSPECIFIED;
    const err = await rejection(client().createCall({ call: { destination: "sip:dave@example.com", requestedQos: qos } }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, "INVALID_REQUEST");
    assert.ok((err.badRequest?.fieldViolations.length ?? 0) > 0);
  });

  test("unary calls get the default deadline", async () => {
    const err = await rejection(client({ timeoutMs: 1 }).listProviders());
    assert.equal(err.code, Code.DeadlineExceeded);
    await client({ timeoutMs: 1 }).listProviders({}, { timeoutMs: 5_000 });
  });
});

/** Connects, renegotiates once and drops: QOS_GRANTED, QOS_CHANGED, CALL_DISCONNECTED. */
async function lifecycle(c: CallQosClient): Promise<string> {
  const call = await connect(c, 100_000n);
  await c.renegotiateCall({ name: call.name, qos: ControlledLoad(50_000) });
  await c.dropCall(call.name);
  return call.name;
}
const LIFECYCLE = [QosEventType.QOS_GRANTED, QosEventType.QOS_CHANGED, QosEventType.CALL_DISCONNECTED];

async function take(events: AsyncIterable<QosEvent>, n: number): Promise<QosEvent[]> {
  const got: QosEvent[] = [];
  for await (const ev of events) {
    if (got.push(ev) === n) {
      break;
    }
  }
  return got;
}

/**
 * Starts `watcher` and waits until its stream is open (it then has the start sequence). The
 * first event comes wrapped, since an async function cannot resolve to a bare promise.
 */
async function watchFirst(watcher: EventWatcher): Promise<{ first: Promise<QosEvent[]> }> {
  const first = take(watcher, 1);
  for (const deadline = Date.now() + 10_000; watcher.lastSequence === undefined; ) {
    assert.ok(Date.now() < deadline, "the watch stream did not open (no x-callqos-start-sequence header?)");
    await new Promise((r) => setTimeout(r, 10));
  }
  return { first };
}

/** A loopback TCP proxy whose connections can all be cut, to break streams. */
async function startProxy(target: string) {
  const [host, port] = target.split(":");
  const sockets = new Set<Socket>();
  let accepted = 0;
  const srv = createTcpServer((inbound) => {
    accepted++;
    const outbound = tcpConnect(Number(port), host);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((res) => srv.listen(0, "127.0.0.1", res));
  return {
    address: `127.0.0.1:${(srv.address() as AddressInfo).port}`,
    /** Cut every connection: closed (FIN), or reset (RST: the client reads ECONNRESET). */
    cut: (how: "close" | "reset" = "close") =>
      sockets.forEach((s) => (how === "reset" ? s.resetAndDestroy() : s.destroy())),
    connections: () => accepted,
    close: () => {
      sockets.forEach((s) => s.destroy());
      return new Promise((res) => srv.close(res));
    },
  };
}

describe("events", () => {
  test("replay from a cursor, then resume after any delivered sequence", async () => {
    const c = client();
    const name = await lifecycle(c);
    const watcher = c.watch({ afterSequence: 0n, call: name });
    const all = await take(watcher, 3);
    assert.deepEqual(all.map((e) => e.type), LIFECYCLE);
    assert.equal(watcher.lastSequence, all[2].sequence);
    const rest = await take(c.watch({ afterSequence: all[0].sequence, call: name }), 2);
    assert.deepEqual(rest, all.slice(1));
  });

  for (const how of ["close", "reset"] as const) {
    test(`the watcher reconnects after a cut (${how}) and continues after the last event`, async (t) => {
      const direct = client();
      const proxy = await startProxy(server.address);
      t.after(() => proxy.close());
      const proxied = client({ address: proxy.address });
      const call = await connect(direct, 100_000n);
      const got: QosEvent[] = [];
      for await (const ev of proxied.watch({ afterSequence: 0n, call: call.name })) {
        got.push(ev);
        if (got.length === 1) {
          proxy.cut(how); // the remaining events happen while the stream is down
          await direct.renegotiateCall({ name: call.name, qos: ControlledLoad(50_000) });
          await direct.dropCall(call.name);
        }
        if (got.length === 3) {
          break;
        }
      }
      assert.deepEqual(got.map((e) => e.type), LIFECYCLE);
      assert.ok(got[0].sequence < got[1].sequence && got[1].sequence < got[2].sequence);
      assert.ok(proxy.connections() >= 2, "the watch did not reconnect");
    });
  }

  test("without a cursor only new events come", async () => {
    const c = client();
    await lifecycle(c); // older events, which must not be delivered
    const { first } = await watchFirst(c.watch({}));
    const call = await connect(c, 1000n);
    const [ev] = await first;
    assert.equal(ev.call, call.name);
    assert.equal(ev.type, QosEventType.QOS_GRANTED);
    await c.dropCall(call.name);
  });

  test("a watch from now resumes without loss when cut before its first event", async (t) => {
    const direct = client();
    const proxy = await startProxy(server.address);
    t.after(() => proxy.close());
    const { first } = await watchFirst(client({ address: proxy.address }).watch({}));
    proxy.cut();
    const call = await connect(direct, 1000n); // while the watch is down or reconnecting
    const [ev] = await first;
    assert.equal(ev.call, call.name);
    assert.equal(ev.type, QosEventType.QOS_GRANTED);
    assert.ok(proxy.connections() >= 2, "the watch did not reconnect");
    await direct.dropCall(call.name);
  });
});

describe("tracing", () => {
  test("a traced client sends a W3C traceparent naming its span", async () => {
    // A loopback HTTP/2 server that records the request headers and answers UNIMPLEMENTED.
    const seen: IncomingHttpHeaders[] = [];
    const recorder = createHttp2Server((req, res) => {
      seen.push(req.headers);
      req.resume();
      res.writeHead(200, { "content-type": "application/grpc", "grpc-status": "12" });
      res.end();
    });
    await new Promise<void>((res) => recorder.listen(0, "127.0.0.1", res));
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const c = client({ address: `127.0.0.1:${(recorder.address() as AddressInfo).port}`, tracing: provider });
    const err = await rejection(c.getCall("calls/x"));
    assert.equal(err.code, Code.Unimplemented);
    c.close();
    recorder.close();

    assert.equal(seen.length, 1);
    assert.equal(seen[0][PRINCIPAL_HEADER], "alice");
    const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(String(seen[0].traceparent));
    assert.ok(m, `traceparent = ${seen[0].traceparent}`);
    const spans = exporter.getFinishedSpans();
    assert.equal(spans.length, 1);
    assert.equal(spans[0].name, "callqos.v1.CallQosService/GetCall");
    assert.equal(spans[0].spanContext().traceId, m[1]);
    assert.equal(spans[0].spanContext().spanId, m[2]);
  });

  test("the server's span joins the client's trace (events carry its trace id)", async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const c = client({ tracing: provider });
    const call = await connect(c, 1000n);
    const span = exporter.getFinishedSpans().find((s) => s.name === "callqos.v1.CallQosService/CreateCall");
    assert.ok(span, "no client span for CreateCall");
    const [granted] = await take(c.watch({ afterSequence: 0n, call: call.name }), 1);
    assert.equal(granted.type, QosEventType.QOS_GRANTED);
    assert.equal(granted.traceId, span.spanContext().traceId);
    await c.dropCall(call.name);
  });

  test("a WatchEvents span lasts while the stream is read and ends when the consumer stops", async () => {
    const { provider, spans } = recordingProvider();
    const c = client({ tracing: provider });
    const { first } = await watchFirst(c.watch({})); // the response headers have arrived
    const [watch] = spans("WatchEvents");
    assert.ok(watch, "no client span for WatchEvents");
    assert.ok(!watch.ended, "the WatchEvents span ended with the response headers");
    await sleep(150);
    const call = await connect(c, 1000n); // its event ends the watch: take() breaks after one
    const [ev] = await first;
    assert.equal(ev.call, call.name);
    assert.ok(watch.ended, "the WatchEvents span outlived the watch");
    assert.equal(spans("WatchEvents").length, 1, "the watch reconnected");
    const [create] = spans("CreateCall");
    const ms = (t: ReadableSpan["startTime"]) => hrTimeToMilliseconds(t);
    assert.ok(ms(watch.startTime) < ms(create.startTime) && ms(create.startTime) < ms(watch.endTime));
    assert.ok(ms(watch.endTime) - ms(watch.startTime) >= 150, `WatchEvents lasted ${ms(watch.duration)} ms`);
    // Stopping early is the consumer's choice, not an error; the stream was cancelled.
    assert.equal(watch.status.code, SpanStatusCode.UNSET);
    assert.equal(watch.attributes["rpc.grpc.status_code"], Code.Canceled);
    assert.deepEqual(watch.events, []);
    assert.equal(create.attributes["rpc.grpc.status_code"], 0);
    await c.dropCall(call.name);
  });

  test("a WatchEvents span the server refuses (malformed filter) ends with ERROR", async () => {
    const { provider, spans } = recordingProvider();
    const c = client({ tracing: provider });
    const err = await rejection(take(c.watch({ call: "not-a-call-name" }), 1));
    assert.equal(err.code, Code.InvalidArgument);
    const watches = spans("WatchEvents");
    assert.equal(watches.length, 1, "INVALID_ARGUMENT was retried");
    const [watch] = watches;
    assert.ok(watch.ended);
    assert.equal(watch.status.code, SpanStatusCode.ERROR);
    assert.match(watch.status.message ?? "", /invalid_argument/);
    assert.equal(watch.attributes["rpc.grpc.status_code"], Code.InvalidArgument);
    assert.equal(watch.events[0]?.name, "exception");
  });

  test("a stream the server ends with an error mid-way ends its span then, with ERROR", async (t) => {
    if (process.env.CALLQOS_TARGET) {
      t.skip("stops its own server, which CALLQOS_TARGET does not provide");
      return;
    }
    const own = await startServer();
    t.after(() => own.stop());
    const { provider, spans } = recordingProvider();
    const c = client({ address: own.address, tracing: provider });
    // The raw stream, one RPC attempt: a watch() would reconnect with a new span.
    let opened!: () => void;
    const headers = new Promise<void>((res) => (opened = res));
    const failure = (async () => {
      for await (const _ of c.raw.watchEvents({}, { onHeader: () => opened() })) {
        // no events: nothing happens on this server
      }
    })().then(
      () => assert.fail("the stream ended without an error"),
      (e: unknown) => ConnectError.from(e),
    );
    await headers;
    const [watch] = spans("WatchEvents");
    assert.ok(watch && !watch.ended, "the WatchEvents span ended with the response headers");
    await own.stop(); // ends every watch with UNAVAILABLE (SHUTTING_DOWN), after their headers
    const err = await failure;
    assert.equal(err.code, Code.Unavailable);
    assert.ok(watch.ended);
    assert.equal(watch.status.code, SpanStatusCode.ERROR);
    assert.match(watch.status.message ?? "", /shutting down/);
    assert.equal(watch.attributes["rpc.grpc.status_code"], Code.Unavailable);
    assert.equal(watch.events[0]?.name, "exception");
    assert.equal(spans("WatchEvents").length, 1);
  });
});

/**
 * A tracer provider whose spans can be looked at while they are open: `spans(method)` lists
 * the client spans of a method, in start order, open or ended.
 */
function recordingProvider() {
  const started: ReadableSpan[] = [];
  const recorder: SpanProcessor = {
    onStart: (span) => void started.push(span as unknown as ReadableSpan),
    onEnd: () => {},
    forceFlush: async () => {},
    shutdown: async () => {},
  };
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [recorder, new SimpleSpanProcessor(exporter)] });
  const spans = (method: string) => started.filter((s) => s.name === `callqos.v1.CallQosService/${method}`);
  return { provider, exporter, spans };
}

test("the README example runs", async () => {
  const lines: string[] = [];
  await quickstart(server.address, (l) => lines.push(l));
  const out = lines.join("\n");
  for (const want of ["refused: QOS_UNAVAILABLE", "connected:", "renegotiated: 500000", "QOS_GRANTED", "QOS_CHANGED", "CALL_DISCONNECTED"]) {
    assert.ok(out.includes(want), `output lacks ${want}:\n${out}`);
  }
});
