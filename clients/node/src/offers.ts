import { Call_State, type Call } from "./gen/callqos/v1/call_pb.js";
import { QosEventType } from "./gen/callqos/v1/event_pb.js";
import type { CallQosClient } from "./client.js";
import { decodeError } from "./errors.js";
import { START_SEQUENCE_HEADER, type EventWatcher, type WatchOptions } from "./watch.js";

/**
 * The calls offered on one line, each still OFFERING, to answer or reject: a watch of the line's
 * CALL_OFFERED events that reads each call, skipping one that stopped ringing before it was read.
 * Begun without a cursor it first reads where a watch "from now" starts, then lists the calls
 * already ringing (oldest first), then follows new offers from that point, so none is missed and
 * none yielded twice. `lastSequence` is the cursor to resume from.
 */
export class OfferWatcher implements AsyncIterable<Call> {
  private watcher: EventWatcher | undefined;

  constructor(
    private readonly client: CallQosClient,
    private readonly line: string,
    private after: bigint | undefined,
    private readonly options: WatchOptions = {},
  ) {}

  /** The sequence of the last offer event read (or the cursor it started from). */
  get lastSequence(): bigint | undefined {
    return this.watcher?.lastSequence ?? this.after;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Call> {
    const listed = new Set<string>();
    if (this.after === undefined) {
      this.after = await this.startSequence();
      for (const call of await this.ringing()) {
        listed.add(call.name);
        yield call;
      }
    }
    this.watcher = this.client.watch(
      { afterSequence: this.after, line: this.line, types: [QosEventType.CALL_OFFERED] },
      this.options,
    );
    for await (const event of this.watcher) {
      if (listed.delete(event.call)) {
        continue; // listed already: an offer has one such event
      }
      const call = await this.client.getCall(event.call);
      if (call.state === Call_State.OFFERING) {
        yield call;
      }
    }
  }

  /** Where a watch of the line "from now" starts (its x-callqos-start-sequence). */
  private async startSequence(): Promise<bigint> {
    const stream = new AbortController();
    let start: string | null = null;
    try {
      const responses = this.client.raw.watchEvents(
        { line: this.line },
        {
          signal: stream.signal,
          onHeader: (headers) => {
            start = headers.get(START_SEQUENCE_HEADER);
            stream.abort();
          },
        },
      );
      for await (const _ of responses) {
        break;
      }
    } catch (err) {
      if (start === null) {
        throw decodeError(err);
      }
    } finally {
      stream.abort();
    }
    if (start === null || !/^\d+$/.test(start)) {
      throw new Error(`the server sent no ${START_SEQUENCE_HEADER}`);
    }
    return BigInt(start);
  }

  /** The calls offering on the line now, oldest first. */
  private async ringing(): Promise<Call[]> {
    const calls: Call[] = [];
    let pageToken = "";
    do {
      const page = await this.client.listCalls({ filter: `state = OFFERING AND line = "${this.line}"`, pageToken });
      calls.push(...page.calls);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return calls.reverse();
  }
}
