import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  CallQosService,
  WatchEventsRequestSchema,
  type WatchEventsRequest,
} from "./gen/callqos/v1/callqos_service_pb.js";
import type { QosEvent } from "./gen/callqos/v1/event_pb.js";
import { decodeError } from "./errors.js";
import { defaultResumePolicy, sleep, statusOf, type ResumePolicy } from "./policy.js";

export interface WatchOptions {
  /** Ends the watch (the iteration then just stops). */
  signal?: AbortSignal;
  /** Changes to the resume rule (defaultResumePolicy(), from clients/service_config.json). */
  resume?: Partial<ResumePolicy>;
}

/** The WatchEvents response header that holds the sequence the stream starts after. */
export const START_SEQUENCE_HEADER = "x-callqos-start-sequence";

/**
 * Follows WatchEvents across reconnects: remembers the last sequence it delivered and reopens
 * the stream after it, so nothing is lost or repeated. A watch begun without a cursor takes the
 * one the server sends in the x-callqos-start-sequence header, so it resumes without loss even
 * when the stream breaks before its first event.
 *
 * The rule is the one all callqos clients follow (ResumePolicy): reopen after a failure with a
 * resumable code (UNAVAILABLE, CANCELLED, a connection reset), or when the server ends the
 * stream; wait a full-jitter exponential backoff; throw the last error once failures have gone
 * on for giveUpAfterMs. Any other error (e.g. CURSOR_EXPIRED) is thrown at once.
 */
export class EventWatcher implements AsyncIterable<QosEvent> {
  /** The sequence of the last event delivered (or the starting cursor). */
  lastSequence: bigint | undefined;
  /** The resume rule this watcher follows. */
  readonly resume: ResumePolicy;
  private readonly req: WatchEventsRequest;

  constructor(
    private readonly raw: Client<typeof CallQosService>,
    req: MessageInitShape<typeof WatchEventsRequestSchema>,
    private readonly options: WatchOptions = {},
  ) {
    this.req = create(WatchEventsRequestSchema, req);
    this.lastSequence = this.req.afterSequence;
    this.resume = { ...defaultResumePolicy(), ...options.resume };
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<QosEvent> {
    const { signal } = this.options;
    const policy = this.resume;
    let bound = policy.initialBackoffMs;
    let failingSince: number | undefined;
    while (!signal?.aborted) {
      const req = create(WatchEventsRequestSchema, { ...this.req, afterSequence: this.lastSequence });
      let failure: ConnectError;
      const opened = Date.now();
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
          failingSince = undefined;
          bound = policy.initialBackoffMs;
          yield event;
        }
        // A watch never ends by itself: the server went away. Resumed as UNAVAILABLE is.
        failure = new ConnectError("the server ended the watch stream", Code.Unavailable);
      } catch (err) {
        failure = ConnectError.from(err);
      } finally {
        signal?.removeEventListener("abort", abortStream);
        stream.abort();
      }
      if (signal?.aborted) {
        return;
      }
      if (!policy.resumableCodes.has(statusOf(failure))) {
        throw decodeError(failure);
      }
      const now = Date.now();
      if (now - opened >= policy.healthyAfterMs) {
        failingSince = undefined;
        bound = policy.initialBackoffMs;
      }
      failingSince ??= now;
      if (policy.giveUpAfterMs > 0 && now - failingSince > policy.giveUpAfterMs) {
        throw decodeError(failure);
      }
      // Full jitter keeps a crowd of watchers from reconnecting in lockstep.
      const wait = Math.random() * bound;
      bound = Math.min(bound * policy.backoffMultiplier, policy.maxBackoffMs);
      try {
        await sleep(wait, signal);
      } catch {
        return; // the caller's signal: the iteration just stops
      }
    }
  }
}
