// The callqos API in one walk: ask for more QoS than the link has, get refused with a
// counter-offer, take it, renegotiate down, drop the call, then replay its events.
//
//   node dist/examples/quickstart.js                  # CALLQOS_TARGET, else CALLQOS_LISTEN, else 127.0.0.1:50051
//   node dist/examples/quickstart.js 127.0.0.1:50051
import { pathToFileURL } from "node:url";
import {
  CallQosClient,
  ControlledLoad,
  QosEventType,
  QosUnavailableError,
  ServiceLevel,
  defaultTarget,
} from "../src/index.js";

export async function run(address: string, log: (line: string) => void = console.log): Promise<void> {
  const client = new CallQosClient({ address, principal: "quickstart" });
  try {
    // 1. 2,000,000 bytes/s is more than the reference link's 1,250,000: refused at NEEDED.
    const call = {
      destination: "sip:alice@example.com",
      serviceLevel: ServiceLevel.NEEDED,
      requestedQos: ControlledLoad(2_000_000),
    };
    let offer;
    try {
      await client.createCall({ call });
      throw new Error("expected a QoS refusal");
    } catch (err) {
      if (!(err instanceof QosUnavailableError)) {
        throw err;
      }
      offer = err.counterOffer;
      log(`refused: ${err.reason} (${err.call}); counter-offer: ${offer?.sending?.tokenRateBytesPerSecond} bytes/s`);
    }

    // 2. Take the counter-offer.
    let granted = await client.createCall({ call: { ...call, requestedQos: offer } });
    log(`connected: ${granted.name} at ${granted.grantedQos?.sending?.tokenRateBytesPerSecond} bytes/s`);

    // 3. Renegotiate down to 500,000 bytes/s.
    granted = await client.renegotiateCall({
      name: granted.name,
      qos: ControlledLoad(500_000),
      etag: granted.etag,
    });
    log(`renegotiated: ${granted.grantedQos?.sending?.tokenRateBytesPerSecond} bytes/s`);

    // 4. Drop it.
    await client.dropCall(granted.name);
    log(`dropped: ${granted.name}`);

    // 5. Replay the call's events from the start of the log (afterSequence 0n); the watcher
    // resumes from the last sequence if the stream breaks meanwhile.
    for await (const event of client.watch({ afterSequence: 0n, call: granted.name })) {
      log(`event ${event.sequence}: ${QosEventType[event.type]} ${event.currentQos?.sending?.tokenRateBytesPerSecond ?? 0} bytes/s`);
      if (event.type === QosEventType.CALL_DISCONNECTED) {
        return;
      }
    }
  } finally {
    client.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await run(process.argv[2] ?? defaultTarget());
}
