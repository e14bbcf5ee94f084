// The retry and resume policy all four callqos clients share: src/service_config.json, a copy of
// clients/service_config.json (`make generate` copies it, `make check-generated` fails when it
// drifts; clients/README.md explains each choice). connect-es has no gRPC service config, so
// this module applies its serviceConfig part with an interceptor that retries as gRPC would
// (gRFC A6), and turns its watchResume part into the EventWatcher's default ResumePolicy.
import { clone, isMessage, type DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import {
  AnswerCallRequestSchema,
  CreateCallRequestSchema,
  CreateLineRequestSchema,
  ExtendCallRequestSchema,
  RejectCallRequestSchema,
  RenegotiateCallRequestSchema,
} from "./gen/callqos/v1/callqos_service_pb.js";
import { GrpcCode } from "./gen/callqos/v1/errors_pb.js";
import policyFile from "./service_config.json" with { type: "json" };

/** The policy file as shipped; `serviceConfig` is in gRPC service config (gRFC A6) form. */
export const POLICY_FILE: typeof policyFile = policyFile;

/** A gRFC A6 retry policy, with durations in milliseconds and codes as connect `Code`s. */
export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  retryableCodes: ReadonlySet<Code>;
}

/** How `watch()` reopens a broken stream; the defaults are the file's watchResume part. */
export interface ResumePolicy {
  /** The most the first wait can be; each failure multiplies the bound, up to maxBackoffMs. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  /** A stream that stayed open this long before failing counts as having worked. */
  healthyAfterMs: number;
  /** Give up, throwing the last error, once failures have gone on this long; 0: never. */
  giveUpAfterMs: number;
  /** The codes after which reopening the stream may help (a watch only reads: never harmful). */
  resumableCodes: ReadonlySet<Code>;
}

/** "0.1s" (protobuf JSON duration, as service configs write them) in milliseconds. */
export function durationMs(duration: string): number {
  const match = /^(\d+(?:\.\d+)?)s$/.exec(duration);
  if (!match) {
    throw new Error(`service_config.json: not a duration: ${duration}`);
  }
  return Number(match[1]) * 1000;
}

/** A gRPC code name ("UNAVAILABLE") as a connect Code: errors.proto's GrpcCode has gRPC's numbers. */
export function codeNamed(name: string): Code {
  const number = (GrpcCode as unknown as Record<string, number | undefined>)[name];
  if (number === undefined || number === 0) {
    throw new Error(`service_config.json: not a gRPC status code: ${name}`);
  }
  return number as Code;
}

/** The retry policy of each method the service config names, by "Service/Method". */
export const RETRY_POLICIES: ReadonlyMap<string, RetryPolicy> = new Map(
  policyFile.serviceConfig.methodConfig.flatMap((config) => {
    const p = config.retryPolicy;
    const policy: RetryPolicy = {
      maxAttempts: Math.min(p.maxAttempts, 5), // gRPC caps maxAttempts at 5 too
      initialBackoffMs: durationMs(p.initialBackoff),
      maxBackoffMs: durationMs(p.maxBackoff),
      backoffMultiplier: p.backoffMultiplier,
      retryableCodes: new Set(p.retryableStatusCodes.map(codeNamed)),
    };
    return config.name.map((n) => [`${n.service}/${n.method}`, policy] as const);
  }),
);

/** The resume rule in the file. */
export function defaultResumePolicy(): ResumePolicy {
  const r = policyFile.watchResume;
  return {
    initialBackoffMs: durationMs(r.initialBackoff),
    maxBackoffMs: durationMs(r.maxBackoff),
    backoffMultiplier: r.backoffMultiplier,
    healthyAfterMs: durationMs(r.healthyAfter),
    giveUpAfterMs: durationMs(r.giveUpAfter),
    resumableCodes: new Set(r.resumableStatusCodes.map(codeNamed)),
  };
}

/**
 * The gRPC code of a failure as gRPC itself would report it. connect-node ends a call locally,
 * with no status from the server, when the connection under it dies: CANCELED when its HTTP/2
 * session went away, ABORTED when the socket read ECONNRESET. gRPC reports both as UNAVAILABLE,
 * and so does this, unless the caller's own signal (an abort or the deadline) ended the call.
 */
export function statusOf(err: ConnectError, signal?: AbortSignal): Code {
  if ((err.code === Code.Canceled || err.code === Code.Aborted) && !err.isWireError && !signal?.aborted) {
    return Code.Unavailable;
  }
  return err.code;
}

/**
 * Retries unary calls per RETRY_POLICIES, as a gRPC channel with this service config would:
 * at most maxAttempts attempts, after a failure with a retryable code, waiting a random time
 * below initialBackoff × multiplier^(n-1) (capped at maxBackoff), never past the call's deadline
 * or abort. Streams are left alone (watch() resumes on its own).
 */
export function retryInterceptor(policies: ReadonlyMap<string, RetryPolicy> = RETRY_POLICIES): Interceptor {
  return (next) => async (req) => {
    const policy = policies.get(`${req.service.typeName}/${req.method.name}`);
    if (req.stream || !policy) {
      return next(req);
    }
    const deadline = grpcTimeoutMs(req.header);
    const started = Date.now();
    let bound = policy.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (err) {
        const failure = ConnectError.from(err);
        if (attempt >= policy.maxAttempts || !policy.retryableCodes.has(statusOf(failure, req.signal))) {
          throw err;
        }
      }
      await sleep(Math.random() * bound, req.signal);
      bound = Math.min(bound * policy.backoffMultiplier, policy.maxBackoffMs);
      if (deadline !== undefined) {
        // The next attempt tells the server what is left of the caller's deadline.
        req.header.set("grpc-timeout", `${Math.max(1, Math.ceil(deadline - (Date.now() - started)))}m`);
      }
    }
  };
}

/**
 * Gives every CreateCall, RenegotiateCall, ExtendCall, CreateLine, AnswerCall and RejectCall a request_id
 * (AIP-155) when the caller set none, so that retrying them is safe: a retry whose first attempt did reach the server gets that
 * attempt's outcome back. Runs before retryInterceptor, so every attempt carries the same id.
 * The caller's message is not changed; a copy is sent.
 */
export function requestIdInterceptor(): Interceptor {
  return (next) => async (req) => {
    if (!req.stream) {
      for (const schema of IDEMPOTENT_BY_REQUEST_ID) {
        const message: unknown = req.message;
        if (isMessage(message, schema) && !(message as unknown as { requestId: string }).requestId) {
          const copy = clone(schema, message);
          (copy as unknown as { requestId: string }).requestId = randomUUID();
          return next({ ...req, message: copy as unknown as typeof req.message });
        }
      }
    }
    return next(req);
  };
}

/** The requests a request_id makes safe to retry (clients/README.md), each given one if unset. */
const IDEMPOTENT_BY_REQUEST_ID: readonly DescMessage[] = [
  CreateCallRequestSchema,
  RenegotiateCallRequestSchema,
  ExtendCallRequestSchema,
  CreateLineRequestSchema,
  AnswerCallRequestSchema,
  RejectCallRequestSchema,
];

/** The grpc-timeout header in milliseconds, if the call has a deadline. */
function grpcTimeoutMs(header: Headers): number | undefined {
  const match = /^(\d+)([HMSmun])$/.exec(header.get("grpc-timeout") ?? "");
  if (!match) {
    return undefined;
  }
  const perUnit: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };
  return Number(match[1]) * perUnit[match[2]];
}

/** Waits `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(ConnectError.from(signal.reason));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
