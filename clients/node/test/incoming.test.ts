import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import {
  CallQosClient,
  CallQosError,
  Call_State,
  ControlledLoad,
  DisconnectReason,
  Line_State,
  QosUnavailableError,
  ServiceLevel,
  ServiceType,
  type Call,
  type Line,
} from "../src/index.js";
import { startServer, type TestServer } from "./server.js";

let server: TestServer;
const clients: CallQosClient[] = [];
before(async () => {
  server = await startServer();
});
after(async () => {
  clients.forEach((c) => c.close());
  await server.stop();
});

function client(principal: string): CallQosClient {
  const c = new CallQosClient({ address: server.address, principal });
  clients.push(c);
  return c;
}

async function openLine(bob: CallQosClient): Promise<Line> {
  return bob.createLine({ line: { address: `sip:${randomUUID().slice(0, 12)}@example.test` } });
}

async function ring(carol: CallQosClient, line: Line, level: ServiceLevel, rate: bigint): Promise<Call> {
  const call = await carol.createCall({
    call: { destination: line.address, serviceLevel: level, requestedQos: ControlledLoad(rate) },
  });
  assert.equal(call.state, Call_State.RINGBACK);
  return call;
}

test("a line's offers are answered with less, refused at NEEDED, and rejected", async () => {
  const bob = client("bob");
  const carol = client("carol");
  const line = await openLine(bob);
  assert.equal(line.owner, "bob");
  assert.equal(line.state, Line_State.OPEN);
  await assert.rejects(carol.createLine({ line: { address: line.address } }), (err: unknown) => {
    return err instanceof CallQosError && err.reason === "ADDRESS_IN_USE";
  });

  const early = await ring(carol, line, ServiceLevel.IF_AVAILABLE, 40_000n);
  const offers = bob.offers(line.name);
  const seen: Call[] = [];
  let later: Call | undefined;
  for await (const call of offers) {
    seen.push(call);
    if (seen.length === 2) {
      break;
    }
    later = await ring(carol, line, ServiceLevel.NEEDED, 40_000n);
  }
  assert.deepEqual(
    seen.map((c) => c.name),
    [early.peer, later?.peer],
  );
  assert.equal(seen[0].requestedQos?.receiving?.tokenRateBytesPerSecond, 40_000n, "the offer is mirrored");
  assert.notEqual(offers.lastSequence, undefined);

  const less = {
    sending: { serviceType: ServiceType.NO_CHANGE },
    receiving: { serviceType: ServiceType.CONTROLLED_LOAD, tokenRateBytesPerSecond: 25_000n },
  };
  const answered = await bob.answerCall({ name: early.peer, qos: less });
  assert.equal(answered.state, Call_State.CONNECTED);
  const mine = await carol.getCall(early.name);
  assert.equal(mine.grantedQos?.sending?.tokenRateBytesPerSecond, 25_000n);
  assert.equal(mine.requestedQos?.sending?.tokenRateBytesPerSecond, 40_000n);

  await assert.rejects(bob.answerCall({ name: later!.peer, qos: less }), (err: unknown) => {
    return err instanceof QosUnavailableError && err.counterOffer !== undefined;
  });
  const third = await ring(carol, line, ServiceLevel.NEEDED, 1000n);
  const rejected = await bob.rejectCall(third.peer);
  assert.equal(rejected.disconnectReason, DisconnectReason.REJECTED);
  await assert.rejects(bob.answerCall({ name: third.peer }), (err: unknown) => {
    return err instanceof CallQosError && err.reason === "CALL_NOT_OFFERING";
  });
  await bob.dropCall(early.peer);
  const closed = await bob.closeLine(line.name);
  assert.equal(closed.state, Line_State.CLOSED);
  const listed = await bob.listLines({ filter: `address = "${line.address}"` });
  assert.deepEqual(
    listed.lines.map((l) => l.name),
    [line.name],
  );
});

test("an offers stream resumes from its cursor and skips calls no longer ringing", async () => {
  const bob = client("bob");
  const carol = client("carol");
  const line = await openLine(bob);
  await ring(carol, line, ServiceLevel.NEEDED, 1000n);
  const first = bob.offers(line.name);
  for await (const _ of first) {
    break;
  }
  const cursor = first.lastSequence;
  assert.notEqual(cursor, undefined);
  const gone = await ring(carol, line, ServiceLevel.NEEDED, 1000n);
  await bob.rejectCall(gone.peer);
  const ringing = await ring(carol, line, ServiceLevel.NEEDED, 1000n);
  for await (const call of bob.offers(line.name, cursor)) {
    assert.equal(call.name, ringing.peer);
    break;
  }
  await bob.closeLine(line.name);
});
