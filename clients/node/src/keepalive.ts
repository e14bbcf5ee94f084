// Keeping a leased call alive while the application holds it.
import { Code } from "@connectrpc/connect";
import type { Call } from "./gen/callqos/v1/call_pb.js";
import { CallQosError } from "./errors.js";

/** The shortest pause between two renewals, however short the lease. */
const MIN_INTERVAL_MS = 50;

/** A kept-alive call lost its lease: the server said LEASE_EXPIRED, the call ended otherwise,
 * or no renewal got through before the lease ended. `cause` is the error that showed it. */
export class LeaseLostError extends Error {
  declare readonly cause: CallQosError | Error;

  constructor(
    readonly call: string,
    why: string,
    cause: CallQosError | Error,
  ) {
    super(`${call} lost its lease: ${why}: ${cause.message}`, { cause });
    this.name = "LeaseLostError";
  }
}

export interface KeepAliveOptions {
  /** Renew this often (milliseconds); default: a third of the call's lease. */
  intervalMs?: number;
  /** Drop the call when the keep-alive closes (default true); false leaves it to its lease. */
  drop?: boolean;
  /** Told once, when the lease is lost. */
  onLost?: (error: LeaseLostError) => void;
}

/** What KeepAlive needs of a CallQosClient. */
export interface Renewing {
  extendCall(req: { name: string }, options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<Call>;
  dropCall(name: string): Promise<Call>;
}

function durationMs(d: { seconds: bigint; nanos: number } | undefined): number {
  return d === undefined ? 0 : Number(d.seconds) * 1000 + d.nanos / 1e6;
}

/** A renewal that failed this way may succeed if tried again before the lease ends. */
function transient(err: unknown): boolean {
  if (!(err instanceof CallQosError)) {
    return false;
  }
  // ABORTED without ErrorInfo is connect-node's local report of a reset connection.
  return err.code === Code.Unavailable || err.code === Code.DeadlineExceeded || (err.code === Code.Aborted && !err.reason);
}

/**
 * Renews a leased call's lease every third of it, from a timer, until `close()`; then drops the
 * call (unless `drop: false`). A lost lease shows as `error`, the `lost` promise, `signal`
 * (aborted with the LeaseLostError as its reason), `onLost`, and `close()` rejecting with it.
 * Whether the lease has ended without a renewal getting through is judged by the local clock,
 * from when the last successful renewal was sent. Made by `CallQosClient.keepAlive`; see also
 * `CallQosClient.withKeepAlive`.
 */
export class KeepAlive {
  /** The call as the last renewal returned it. */
  call: Call;
  renewals = 0;
  error?: LeaseLostError;
  /** Resolves with the LeaseLostError when the lease is lost (never otherwise). */
  readonly lost: Promise<LeaseLostError>;
  private readonly controller = new AbortController();
  private readonly intervalMs: number;
  private readonly drop: boolean;
  private deadline: number;
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private closed = false;
  private resolveLost!: (error: LeaseLostError) => void;

  constructor(
    private readonly client: Renewing,
    call: Call,
    private readonly options: KeepAliveOptions = {},
  ) {
    const leaseMs = durationMs(call.leaseDuration);
    if (!leaseMs) {
      throw new Error(`${call.name} has no lease to keep alive (set call.leaseDuration)`);
    }
    this.call = call;
    this.intervalMs = Math.max(MIN_INTERVAL_MS, options.intervalMs ?? leaseMs / 3);
    this.drop = options.drop ?? true;
    const expiresMs = call.leaseExpireTime
      ? Number(call.leaseExpireTime.seconds) * 1000 + call.leaseExpireTime.nanos / 1e6
      : 0;
    this.deadline = performance.now() + Math.min(Math.max(expiresMs - Date.now(), 0), leaseMs);
    this.lost = new Promise((resolve) => (this.resolveLost = resolve));
    this.schedule(this.intervalMs);
  }

  /** Aborted when the lease is lost (its reason is the LeaseLostError) or the keep-alive closes. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(() => {
      this.running = this.renew();
    }, ms);
  }

  private async renew(): Promise<void> {
    const sent = performance.now();
    try {
      const call = await this.client.extendCall(
        { name: this.call.name },
        { timeoutMs: Math.ceil(Math.max(MIN_INTERVAL_MS, this.deadline - sent)), signal: this.controller.signal },
      );
      this.call = call;
      this.renewals += 1;
      this.deadline = sent + durationMs(call.leaseDuration);
      if (!this.closed) {
        this.schedule(this.intervalMs);
      }
    } catch (err) {
      if (this.closed) {
        return;
      }
      const cause = err instanceof Error ? err : new Error(String(err));
      if (!transient(err)) {
        this.lose("the lease could not be renewed", cause);
        return;
      }
      const remaining = this.deadline - performance.now();
      if (remaining <= 0) {
        this.lose("no renewal got through before the lease ended", cause);
        return;
      }
      this.schedule(Math.max(MIN_INTERVAL_MS, Math.min(this.intervalMs, remaining / 4)));
    }
  }

  private lose(why: string, cause: Error): void {
    this.error = new LeaseLostError(this.call.name, why, cause);
    this.options.onLost?.(this.error);
    this.resolveLost(this.error);
    this.controller.abort(this.error);
  }

  /** Stops renewing and drops the call (unless `drop: false`); rejects with the LeaseLostError
   * if the lease was lost. Calling it again does nothing more. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      clearTimeout(this.timer);
      if (!this.controller.signal.aborted) {
        this.controller.abort(new Error("keep-alive closed"));
      }
      await this.running;
      if (this.drop) {
        try {
          this.call = await this.client.dropCall(this.call.name);
        } catch {
          // unreachable now: the call ends with its lease anyway
        }
      }
    }
    if (this.error) {
      throw this.error;
    }
  }
}
