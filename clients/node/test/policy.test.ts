// The retry and resume policy all callqos clients share (clients/service_config.json), as this
// client applies it; and each error reason's gRPC code (the grpc_code option in errors.proto).
// The retry checks go through a fault-injecting front for the real server, which counts the
// attempts that really went over the wire.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, type Http2Server, type ServerHttp2Session } from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { clone, hasOption, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  CallQosClient,
  CallQosError,
  CallQosService,
  ControlledLoad,
  DOMAIN,
  ErrorReason,
  ErrorReasonSchema,
  GrpcCodeSchema,
  PRINCIPAL_HEADER,
  QosUnavailableError,
  ServiceLevel,
  codeOf,
  defaultResumePolicy,
  grpc_code,
  type CreateCallRequest,
  type RenegotiateCallRequest,
} from "../src/index.js";
import { startServer, type TestServer } from "./server.js";

const LINK_CAPACITY = 1_250_000n;
const SHARED_POLICY = "../service_config.json";

interface Fault {
  code: Code;
  times: number;
  /** After forwarding: the server acted, but its answer is lost. */
  after?: boolean;
}

/** A loopback gRPC server in front of the real one that fails the attempts its faults say. */
async function startFront(upstream: string) {
  const upstreamSessions = new Http2SessionManager(`http://${upstream}`);
  const up = createClient(
    CallQosService,
    createGrpcTransport({ baseUrl: `http://${upstream}`, sessionManager: upstreamSessions }),
  );
  const faults = new Map<string, Fault>();
  const attempts = new Map<string, unknown[]>();
  const record = (method: string, req: unknown): Fault | undefined => {
    attempts.set(method, [...(attempts.get(method) ?? []), req]);
    const fault = faults.get(method);
    if (!fault || fault.times === 0) {
      return undefined;
    }
    fault.times--;
    return fault;
  };
  async function forward<I extends DescMessage, T>(
    method: string,
    schema: I,
    req: MessageShape<I>,
    ctx: HandlerContext,
    call: (options: CallOptions) => Promise<T>,
  ): Promise<T> {
    const fault = record(method, clone(schema, req));
    if (fault && !fault.after) {
      throw new ConnectError(`fault injected before ${method} reached the server`, fault.code);
    }
    const principal = ctx.requestHeader.get(PRINCIPAL_HEADER);
    // The server's errors pass through as they are, details and all.
    const res = await call({ headers: principal ? { [PRINCIPAL_HEADER]: principal } : {} });
    if (fault) {
      throw new ConnectError(`fault injected after ${method} reached the server`, fault.code);
    }
    return res;
  }
  const M = CallQosService.method;
  const impl: Partial<ServiceImpl<typeof CallQosService>> = {
    getCall: (req, ctx) => forward("GetCall", M.getCall.input, req, ctx, (o) => up.getCall(req, o)),
    listCalls: (req, ctx) => forward("ListCalls", M.listCalls.input, req, ctx, (o) => up.listCalls(req, o)),
    createCall: (req, ctx) => forward("CreateCall", M.createCall.input, req, ctx, (o) => up.createCall(req, o)),
    renegotiateCall: (req, ctx) =>
      forward("RenegotiateCall", M.renegotiateCall.input, req, ctx, (o) => up.renegotiateCall(req, o)),
    dropCall: (req, ctx) => forward("DropCall", M.dropCall.input, req, ctx, (o) => up.dropCall(req, o)),
    listProviders: (req, ctx) =>
      forward("ListProviders", M.listProviders.input, req, ctx, (o) => up.listProviders(req, o)),
    // A server that stays down.
    async *watchEvents(req) {
      record("WatchEvents", req);
      throw new ConnectError("fault injected: the server stays down", Code.Unavailable);
    },
  };
  const server: Http2Server = createServer(connectNodeAdapter({ routes: (r) => r.service(CallQosService, impl) }));
  const sessions = new Set<ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    fail: (method: string, fault: Fault) => faults.set(method, { ...fault }),
    attempts: (method: string) => attempts.get(method) ?? [],
    close: () => {
      upstreamSessions.abort();
      sessions.forEach((session) => session.destroy());
      return new Promise((res) => server.close(res));
    },
  };
}

let server: TestServer;
let front: Awaited<ReturnType<typeof startFront>>;
const clients: CallQosClient[] = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  clients.forEach((c) => c.close());
  await server.stop();
});

function client(address: string): CallQosClient {
  const c = new CallQosClient({ address, principal: "alice" });
  clients.push(c);
  return c;
}

const sharedPolicy = () => JSON.parse(readFileSync(SHARED_POLICY, "utf8"));
const maxAttempts = (): number => sharedPolicy().serviceConfig.methodConfig[0].retryPolicy.maxAttempts;

describe("the policy file", () => {
  test("the bundled copy is the shared file, and the resume defaults are its watchResume", () => {
    assert.deepEqual(JSON.parse(readFileSync("src/service_config.json", "utf8")), sharedPolicy());
    const r = sharedPolicy().watchResume;
    const seconds = (d: string) => Number(d.replace(/s$/, "")) * 1000;
    assert.deepEqual(defaultResumePolicy(), {
      initialBackoffMs: seconds(r.initialBackoff),
      maxBackoffMs: seconds(r.maxBackoff),
      backoffMultiplier: r.backoffMultiplier,
      healthyAfterMs: seconds(r.healthyAfter),
      giveUpAfterMs: seconds(r.giveUpAfter),
      resumableCodes: new Set([Code.Unavailable, Code.Canceled]),
    });
    assert.deepEqual(r.resumableStatusCodes, ["UNAVAILABLE", "CANCELLED"]);
    assert.deepEqual(sharedPolicy().serviceConfig.methodConfig[0].retryPolicy.retryableStatusCodes, ["UNAVAILABLE"]);
  });
});

describe("retries", () => {
  before(async () => {
    front = await startFront(server.address);
  });
  after(() => front.close());

  test("a read failing with UNAVAILABLE succeeds on a retry", async () => {
    front.fail("ListProviders", { code: Code.Unavailable, times: maxAttempts() - 1 });
    const res = await client(front.address).listProviders();
    assert.ok(res.providers.length > 0);
    assert.equal(front.attempts("ListProviders").length, maxAttempts());
  });

  test("retries stop after maxAttempts", async () => {
    front.fail("GetCall", { code: Code.Unavailable, times: maxAttempts() + 3 });
    const err = await client(front.address).getCall("calls/anything").then(
      () => assert.fail("expected UNAVAILABLE"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof CallQosError && err.code === Code.Unavailable, `${err}`);
    assert.equal(front.attempts("GetCall").length, maxAttempts());
  });

  test("a create whose answer was lost is retried with the same request_id, making one call", async () => {
    const c = client(front.address);
    front.fail("CreateCall", { code: Code.Unavailable, times: 1, after: true });
    const req = { call: { destination: "sip:retried@example.com", requestedQos: ControlledLoad(1000n) } };
    const call = await c.createCall(req);
    const sent = front.attempts("CreateCall") as CreateCallRequest[];
    assert.equal(sent.length, 2);
    assert.ok(sent[0].requestId);
    assert.equal(sent[1].requestId, sent[0].requestId);
    const { calls } = await c.listCalls({ pageSize: 500 });
    const made = calls.filter((x) => x.destination === "sip:retried@example.com");
    assert.deepEqual(made.map((x) => x.name), [call.name]);
    await c.dropCall(call.name);
  });

  test("a renegotiation is retried with the same request_id", async () => {
    const c = client(front.address);
    const call = await c.createCall({
      call: { destination: "sip:renegotiated@example.com", requestedQos: ControlledLoad(1000n) },
    });
    front.fail("RenegotiateCall", { code: Code.Unavailable, times: 1, after: true });
    const changed = await c.renegotiateCall({ name: call.name, qos: ControlledLoad(2000n) });
    assert.equal(changed.grantedQos?.sending?.tokenRateBytesPerSecond, 2000n);
    const sent = front.attempts("RenegotiateCall") as RenegotiateCallRequest[];
    assert.equal(sent.length, 2);
    assert.ok(sent[0].requestId && sent[1].requestId === sent[0].requestId);
    await c.dropCall(call.name);
  });

  test("a QoS refusal is not retried", async () => {
    const before = front.attempts("CreateCall").length;
    const err = await client(front.address)
      .createCall({
        call: {
          destination: "sip:refused@example.com",
          serviceLevel: ServiceLevel.NEEDED,
          requestedQos: ControlledLoad(2n * LINK_CAPACITY),
        },
      })
      .then(
        () => assert.fail("expected a refusal"),
        (e: unknown) => e,
      );
    assert.ok(err instanceof QosUnavailableError && err.code === Code.ResourceExhausted, `${err}`);
    assert.equal(front.attempts("CreateCall").length - before, 1);
  });

  test("the watch gives up once failures have gone on for giveUpAfterMs", async () => {
    const started = Date.now();
    const watcher = client(front.address).watch(
      { afterSequence: 0n },
      { resume: { giveUpAfterMs: 1000, maxBackoffMs: 200 } },
    );
    const err = await (async () => {
      for await (const ev of watcher) {
        assert.fail(`an event from a server that is down: ${ev.sequence}`);
      }
    })().then(
      () => assert.fail("the watch ended without an error"),
      (e: unknown) => e,
    );
    const took = Date.now() - started;
    assert.ok(err instanceof CallQosError && err.code === Code.Unavailable, `${err}`);
    assert.ok(took >= 1000 && took < 10_000, `gave up after ${took} ms, want just over 1000`);
    assert.ok(front.attempts("WatchEvents").length >= 3, `${front.attempts("WatchEvents").length} attempts`);
  });
});

describe("reason codes", () => {
  test("every ErrorReason has a grpc_code option, and codeOf returns it", () => {
    for (const value of ErrorReasonSchema.values) {
      if (value.number === 0) {
        assert.equal(codeOf(value.number), Code.Unknown);
        continue;
      }
      assert.ok(hasOption(value, grpc_code), `${value.name} has no (callqos.v1.grpc_code) option in errors.proto`);
      assert.notEqual(codeOf(value.number), Code.Unknown, value.name);
    }
    assert.equal(codeOf(ErrorReason.QOS_UNAVAILABLE), Code.ResourceExhausted);
    assert.equal(codeOf(ErrorReason.QOS_POLICY_FAILURE), Code.PermissionDenied);
  });

  test("GrpcCode has gRPC's names and numbers", () => {
    for (const value of GrpcCodeSchema.values) {
      if (value.number !== 0) {
        const connectName = Code[value.number as Code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
        assert.equal(value.localName === "CANCELLED" ? "CANCELED" : value.localName, connectName);
      }
    }
    assert.equal(GrpcCodeSchema.values.length, 17);
  });

  test("what the real server sends matches the option", async () => {
    const err = await client(server.address).getCall("calls/no-such-call").then(
      () => assert.fail("expected NOT_FOUND"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof CallQosError, `${err}`);
    assert.equal(err.reason, "CALL_NOT_FOUND");
    assert.equal(err.info?.domain, DOMAIN);
    assert.equal(err.code, codeOf(ErrorReason.CALL_NOT_FOUND));
  });
});
