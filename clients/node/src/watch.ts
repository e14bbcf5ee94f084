import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  CallQosService,
  WatchEventsRequestSchema,
  type WatchEventsRequest,
} from "./gen/callqos/v1/callqos_service_pb.js";
import type { QosEvent } from "./gen/callqos/v1/event_pb.js";
import { decodeError } from "./errors.js";

export interface WatchOptions {
  /** Ends the watch (the iteration then just stops). */
  signal?: AbortSignal;
  /** Reconnects in a row, without an event in between, before giving up (default 10). */
  maxReconnects?: number;
  /** First wait before reconnecting, doubled up to 2 s (default 50 ms). */
  backoffMs?: number;
}

/** The WatchEvents response header that holds the sequence the stream starts after. */
export const START_SEQUENCE_HEADER = "x-callqos-start-sequence";

/**
 * Follows WatchEvents across reconnects: remembers the last sequence it delivered and reopens
 * the stream after it, so nothing is lost or repeated. A watch begun without a cursor takes the
 * one the server sends in the x-callqos-start-sequence header, so it resumes without loss even
 * when the stream breaks before its first event.
 */
export class EventWatcher implements AsyncIterable<QosEvent> {
  /** The sequence of the last event delivered (or the starting cursor). */
  lastSequence: bigint | undefined;
  private readonly req: WatchEventsRequest;

  constructor(
    private readonly raw: Client<typeof CallQosService>,
    req: MessageInitShape<typeof WatchEventsRequestSchema>,
    private readonly options: WatchOptions = {},
  ) {
    this.req = create(WatchEventsRequestSchema, req);
    this.lastSequence = this.req.afterSequence;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<QosEvent> {
    const { signal, maxReconnects = 10, backoffMs = 50 } = this.options;
    let failures = 0;
    let wait = backoffMs;
    while (!signal?.aborted) {
      const req = create(WatchEventsRequestSchema, { ...this.req, afterSequence: this.lastSequence });
      let failure: ConnectError | undefined;
      // connect's stream iterable has no return(): abort the stream ourselves when the consumer
      // stops (break/return run the finally below) or the caller's signal fires.
      const stream = new AbortController();
      const abortStream = () => stream.abort();
      signal?.addEventListener("abort", abortStream);
      try {
        const onHeader = (headers: Headers) => {
          const start = headers.get(START_SEQUENCE_HEADER);
          if (this.lastSequence === undefined && start !== null && /^\d+$/.test(start)) {
            this.lastSequence = BigInt(start);
          }
        };
        for await (const { event } of this.raw.watchEvents(req, { signal: stream.signal, onHeader })) {
          if (!event || (this.lastSequence !== undefined && event.sequence <= this.lastSequence)) {
            continue; // already delivered before a reconnect
          }
          this.lastSequence = event.sequence;
          failures = 0;
          yield event;
        }
      } catch (err) {
        failure = ConnectError.from(err);
      } finally {
        signal?.removeEventListener("abort", abortStream);
        stream.abort();
      }
      if (signal?.aborted) {
        return;
      }
      if ((failure && !reconnectable(failure)) || failures >= maxReconnects) {
        throw decodeError(failure ?? new ConnectError("event stream ended", Code.Unavailable));
      }
      if (failures++ === 0) {
        wait = backoffMs;
      }
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(2 * wait, 2000);
    }
  }
}

/**
 * The stream ended or broke in a way a new stream may not: UNAVAILABLE, or a stream that
 * connect-node ended locally, with no status from the server, because the connection under it
 * died: CANCELED when its HTTP/2 session went away, ABORTED when the socket read ECONNRESET
 * (connect-node maps a reset to ABORTED). The caller's own abort is checked before this.
 */
function reconnectable(err: ConnectError): boolean {
  if (err.code === Code.Unavailable) {
    return true;
  }
  return (err.code === Code.Canceled || err.code === Code.Aborted) && !isWireError(err);
}

function isWireError(err: ConnectError): boolean {
  return err.isWireError;
}
