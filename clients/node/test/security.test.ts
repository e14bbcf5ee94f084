// The client over mTLS with bearer tokens, against a server of its own that requires both, with
// certificates and tokens made for it by the server's test kit.
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { CallQosClient, CallQosError, ControlledLoad, fileToken, type CallQosClientOptions } from "../src/index.js";
import { startSecureServer, type SecureServer } from "./server.js";

let server: SecureServer;
const clients: CallQosClient[] = [];
before(async () => {
  server = await startSecureServer();
});
after(async () => {
  clients.forEach((c) => c.close());
  await server.stop();
});

function client(options: Partial<CallQosClientOptions>): CallQosClient {
  const c = new CallQosClient({ address: server.address, ...options });
  clients.push(c);
  return c;
}

function mtls(): { ca: Buffer; cert: Buffer; key: Buffer } {
  const f = server.files;
  return { ca: readFileSync(f.ca), cert: readFileSync(f.client_cert), key: readFileSync(f.client_key) };
}

const request = { call: { destination: "sip:bob@example.com", requestedQos: ControlledLoad(1000n) } };

test("mTLS with a token from a file that is rotated", async () => {
  const tokenFile = join(mkdtempSync(join(tmpdir(), "callqos-token-")), "token");
  copyFileSync(server.files.alice_token, tokenFile);
  const c = client({ tls: mtls(), token: fileToken(tokenFile) });
  const call = await c.createCall(request);
  assert.equal(call.owner, "alice");
  assert.equal(call.tenant, "acme");
  copyFileSync(server.files.bob_token, tokenFile + ".new");
  renameSync(tokenFile + ".new", tokenFile); // the token is renewed: the next request carries it
  await assert.rejects(c.dropCall(call.name), (err: unknown) => {
    assert.ok(err instanceof CallQosError);
    assert.equal(err.code, Code.PermissionDenied);
    assert.equal(err.reason, "NOT_OWNER");
    return true;
  });
});

test("the client certificate alone names the caller; a bad token is UNAUTHENTICATED", async () => {
  const byCert = await client({ tls: mtls() }).createCall(request);
  assert.equal(byCert.owner, "spiffe://callqos.test/client");
  await assert.rejects(client({ tls: mtls(), token: "not-a-jwt" }).createCall(request), (err: unknown) => {
    assert.ok(err instanceof CallQosError);
    assert.equal(err.code, Code.Unauthenticated);
    assert.equal(err.reason, "UNAUTHENTICATED");
    return true;
  });
});

test("without a client certificate the handshake fails", async () => {
  const c = client({ tls: { ca: mtls().ca }, token: () => readFileSync(server.files.alice_token, "utf8") });
  await assert.rejects(c.createCall(request, { timeoutMs: 3000 }), (err: unknown) => {
    assert.ok(err instanceof CallQosError);
    // connect-node reports the refused handshake as the stream it never got (canceled or unavailable).
    assert.ok([Code.Unavailable, Code.Canceled, Code.Internal, Code.Unknown].includes(err.code), `code ${err.code}`);
    return true;
  });
});

test("a token never goes in the clear beyond loopback", () => {
  assert.throws(() => new CallQosClient({ address: "callqos.example.com:50051", token: "t" }), /in the clear/);
});
