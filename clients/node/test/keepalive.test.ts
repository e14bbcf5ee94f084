// Leases from the TypeScript client against the real server: extendCall, and the keep-alive that
// keeps a call alive while the application holds it, drops it when closed, and surfaces a lost
// lease. Leases are real seconds (the least a lease may be is 1 s).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  CallQosClient,
  CallQosError,
  Call_State,
  ControlledLoad,
  DisconnectReason,
  LeaseLostError,
  type Call,
} from "../src/index.js";
import { startServer, type TestServer } from "./server.js";

let server: TestServer;
let client: CallQosClient;
before(async () => {
  server = await startServer();
  client = new CallQosClient({ address: server.address, principal: "alice" });
});
after(async () => {
  client.close();
  await server.stop();
});

async function leased(seconds: bigint): Promise<Call> {
  return client.createCall({
    call: { destination: "sip:lease@example.com", requestedQos: ControlledLoad(1_000n), leaseDuration: { seconds } },
  });
}

async function reasonOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof CallQosError, String(err));
    return err.reason;
  }
  return "";
}

test("extendCall renews the lease and keeps the etag", async () => {
  const call = await leased(30n);
  const renewed = await client.extendCall({ name: call.name, leaseDuration: { seconds: 90n } });
  assert.equal(renewed.leaseDuration?.seconds, 90n);
  assert.equal(renewed.etag, call.etag);
  assert.ok(renewed.leaseExpireTime!.seconds > call.leaseExpireTime!.seconds);
  assert.equal(await reasonOf(client.extendCall({ name: call.name, leaseDuration: { nanos: 500_000_000 } })), "INVALID_REQUEST");
  await client.dropCall(call.name);
  const plain = await client.createCall({ call: { destination: "sip:plain@example.com" } });
  assert.equal(await reasonOf(client.extendCall({ name: plain.name })), "CALL_NOT_LEASED");
  assert.throws(() => client.keepAlive(plain), /no lease/);
  await client.dropCall(plain.name);
});

test("withKeepAlive keeps the call while the body runs, then drops it", async () => {
  // A 3 s lease renewed every second: each renewal has two seconds to get through, enough on a
  // busy machine; the call is held for more than two leases.
  const call = await leased(3n);
  const renewals = await client.withKeepAlive(call, async (lease) => {
    await sleep(7000);
    assert.equal(lease.error, undefined);
    assert.equal((await client.getCall(call.name)).state, Call_State.CONNECTED);
    return lease.renewals;
  });
  assert.ok(renewals >= 5, `${renewals} renewals`);
  assert.equal((await client.getCall(call.name)).disconnectReason, DisconnectReason.NORMAL);
});

test("a lost lease aborts the signal, resolves lost and makes close() throw", async () => {
  const call = await leased(3n);
  const seen: LeaseLostError[] = [];
  const lease = client.keepAlive(call, { intervalMs: 100, onLost: (e) => seen.push(e) });
  await client.dropCall(call.name);
  const error = await Promise.race([lease.lost, sleep(5000).then(() => undefined)]);
  assert.ok(error instanceof LeaseLostError, "the loss was not noticed");
  assert.equal(error.call, call.name);
  assert.equal((error.cause as CallQosError).reason, "CALL_NOT_CONNECTED");
  assert.ok(lease.signal.aborted && lease.signal.reason === error);
  assert.deepEqual(seen, [error]);
  await assert.rejects(lease.close(), LeaseLostError);
});

test("without drop, the call runs out its lease after close()", async () => {
  const call = await leased(3n);
  const lease = client.keepAlive(call, { drop: false });
  await sleep(1500);
  await lease.close();
  assert.equal((await client.getCall(call.name)).state, Call_State.CONNECTED);
  const deadline = Date.now() + 15_000;
  for (;;) {
    const now = await client.getCall(call.name);
    if (now.state === Call_State.DISCONNECTED) {
      assert.equal(now.disconnectReason, DisconnectReason.LEASE_EXPIRED);
      break;
    }
    assert.ok(Date.now() < deadline, "the lease never ran out");
    await sleep(50);
  }
  assert.equal(await reasonOf(client.extendCall({ name: call.name })), "LEASE_EXPIRED");
});
