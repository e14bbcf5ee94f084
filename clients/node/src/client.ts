// A small client for callqos.v1.CallQosService over gRPC (connect-node's gRPC transport).
import { readFileSync, statSync } from "node:fs";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { TracerProvider } from "@opentelemetry/api";
import type { Call } from "./gen/callqos/v1/call_pb.js";
import type { Line } from "./gen/callqos/v1/line_pb.js";
import {
  CallQosService,
  type AnswerCallRequestSchema,
  type CreateCallRequestSchema,
  type CreateLineRequestSchema,
  type ExtendCallRequestSchema,
  type ListLinesRequestSchema,
  type ListLinesResponse,
  type ListCallsRequestSchema,
  type ListCallsResponse,
  type ListProvidersRequestSchema,
  type ListProvidersResponse,
  type RenegotiateCallRequestSchema,
  type WatchEventsRequestSchema,
} from "./gen/callqos/v1/callqos_service_pb.js";
import { decodeError } from "./errors.js";
import { requestIdInterceptor, retryInterceptor } from "./policy.js";
import { tracingInterceptor } from "./tracing.js";
import { OfferWatcher } from "./offers.js";
import { EventWatcher, type WatchOptions } from "./watch.js";
import { KeepAlive, type KeepAliveOptions } from "./keepalive.js";

/** The request metadata that names the caller; only a call's owner may change or drop it. */
export const PRINCIPAL_HEADER = "x-callqos-principal";

/** The request metadata carrying a bearer token, `Bearer <JWT>`. */
export const AUTHORIZATION_HEADER = "authorization";

/**
 * The bearer token to send now, asked before every request, so it can refresh whenever it
 * likes (see `fileToken`).
 */
export type TokenSource = () => string | Promise<string>;

/** A token kept in a file, read again whenever the file changes (a rotated token). */
export function fileToken(path: string): TokenSource {
  let seen = "";
  let token = "";
  return () => {
    const info = statSync(path);
    const signature = `${info.mtimeMs}:${info.size}:${info.ino}`;
    if (signature !== seen) {
      token = readFileSync(path, "utf8").trim();
      seen = signature;
    }
    return token;
  };
}

/** TLS: the CA certificates that sign the server's (the system's when absent), and the client's
 * own certificate and key for mTLS — PEM, as strings or Buffers. */
export interface TlsOptions {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

function isLoopback(url: URL): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

/** The deadline of a unary call made without `timeoutMs` (milliseconds). */
export const DEFAULT_TIMEOUT_MS = 10_000;

export interface CallQosClientOptions {
  /** `host:port` (plaintext, e.g. "127.0.0.1:50051") or a URL ("https://callqos.example"). */
  address: string;
  /** Sent as x-callqos-principal on every request. */
  principal?: string;
  /** Deadline for unary calls that pass no timeoutMs; 0 for none. */
  timeoutMs?: number;
  /** Client spans with W3C trace context: true for the global tracer provider, or a provider. */
  tracing?: boolean | TracerProvider;
  /** More interceptors, run inside the principal, tracing and retry ones (once per attempt). */
  interceptors?: Interceptor[];
  /** Connect over TLS (the address becomes https://); with `cert` and `key`, mTLS. */
  tls?: TlsOptions;
  /** A bearer token for every request: a string, or a source asked before every request.
   * Only over TLS, or to a loopback address. */
  token?: string | TokenSource;
}

/**
 * The wrapped client: default deadlines, the principal header, errors decoded into
 * CallQosError / QosUnavailableError, optional tracing, the retry policy all callqos clients
 * share (UNAVAILABLE retried on the methods safe to repeat; every create and renegotiation
 * carries a request_id), and `watch`, an async iterable of events that resumes from the last
 * sequence across reconnects. `raw` is the generated client on the same transport, with the
 * same interceptors.
 */
export class CallQosClient {
  readonly raw: Client<typeof CallQosService>;
  readonly transport: Transport;
  private readonly sessions: Http2SessionManager;
  private readonly timeoutMs: number;

  constructor(options: CallQosClientOptions) {
    const baseUrl = /^[a-z]+:\/\//.test(options.address)
      ? options.address
      : `${options.tls ? "https" : "http"}://${options.address}`;
    const interceptors: Interceptor[] = [];
    if (options.token !== undefined) {
      if (new URL(baseUrl).protocol !== "https:" && !isLoopback(new URL(baseUrl))) {
        throw new Error(`a bearer token would cross the network to ${options.address} in the clear: use tls`);
      }
      const source: TokenSource = typeof options.token === "string" ? () => options.token as string : options.token;
      interceptors.push((next) => async (req) => {
        req.header.set(AUTHORIZATION_HEADER, `Bearer ${await source()}`);
        return next(req);
      });
    }
    if (options.tracing) {
      interceptors.push(tracingInterceptor(options.tracing === true ? undefined : options.tracing));
    }
    if (options.principal) {
      const principal = options.principal;
      interceptors.push((next) => (req) => {
        req.header.set(PRINCIPAL_HEADER, principal);
        return next(req);
      });
    }
    // The shared retry policy (clients/service_config.json), and the request_id that makes
    // retrying a create or renegotiation safe, added before the first attempt.
    interceptors.push(requestIdInterceptor(), retryInterceptor());
    interceptors.push(...(options.interceptors ?? []));
    this.sessions = new Http2SessionManager(baseUrl, undefined, options.tls ? { ...options.tls } : undefined);
    this.transport = createGrpcTransport({ baseUrl, interceptors, sessionManager: this.sessions });
    this.raw = createClient(CallQosService, this.transport);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** Closes the HTTP/2 connection (and any open stream). */
  close(): void {
    this.sessions.abort();
  }

  private async unary<T>(rpc: (options: CallOptions) => Promise<T>, options?: CallOptions): Promise<T> {
    try {
      return await rpc({ timeoutMs: this.timeoutMs || undefined, ...options });
    } catch (err) {
      throw decodeError(err);
    }
  }

  /**
   * Makes a call. A refused QoS at NEEDED throws QosUnavailableError with the counter-offer.
   * Without a requestId, one is generated, so the call is retried safely on UNAVAILABLE.
   */
  createCall(req: MessageInitShape<typeof CreateCallRequestSchema>, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.createCall(req, o), options);
  }

  /** Gets a call by name, `calls/{call}`. */
  getCall(name: string, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.getCall({ name }, o), options);
  }

  listCalls(req: MessageInitShape<typeof ListCallsRequestSchema>, options?: CallOptions): Promise<ListCallsResponse> {
    return this.unary((o) => this.raw.listCalls(req, o), options);
  }

  /** Changes a connected call's QoS; on QosUnavailableError the call keeps its previous QoS. */
  renegotiateCall(req: MessageInitShape<typeof RenegotiateCallRequestSchema>, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.renegotiateCall(req, o), options);
  }

  /** Drops a call and releases what it reserved. */
  dropCall(name: string, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.dropCall({ name }, o), options);
  }

  /**
   * Renews a call's lease (owner only): it then ends `req.leaseDuration` (unset: the call's own
   * lease) after now. Too late throws CallQosError LEASE_EXPIRED (the call is disconnected); a
   * call without a lease, CALL_NOT_LEASED. Without a requestId, one is generated, so a retried
   * renewal extends once.
   */
  extendCall(req: MessageInitShape<typeof ExtendCallRequestSchema>, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.extendCall(req, o), options);
  }

  /**
   * Keeps a leased call alive: renews its lease every third of it until `close()`, which then
   * drops the call (unless `drop: false`) and rejects with a LeaseLostError if the lease was lost.
   * Use it in try/finally, or `withKeepAlive`.
   */
  keepAlive(call: Call, options?: KeepAliveOptions): KeepAlive {
    return new KeepAlive(this, call, options);
  }

  /**
   * Runs `body` while `call` is kept alive (its `lease.signal` aborts if the lease is lost), then
   * closes the keep-alive: the call is dropped (unless `drop: false`), and a lost lease throws
   * LeaseLostError unless `body` threw first.
   */
  async withKeepAlive<T>(call: Call, body: (lease: KeepAlive) => Promise<T>, options?: KeepAliveOptions): Promise<T> {
    const lease = this.keepAlive(call, options);
    let result: T;
    try {
      result = await body(lease);
    } catch (err) {
      await lease.close().catch(() => undefined);
      throw err;
    }
    await lease.close();
    return result;
  }

  /**
   * Opens a line (lineOpen): calls made to `req.line.address` are offered to this client's
   * principal, its owner. Throws CallQosError ADDRESS_IN_USE while another line is open for it.
   */
  createLine(req: MessageInitShape<typeof CreateLineRequestSchema>, options?: CallOptions): Promise<Line> {
    return this.unary((o) => this.raw.createLine(req, o), options);
  }

  /** Gets a line by name, `lines/{line}`. */
  getLine(name: string, options?: CallOptions): Promise<Line> {
    return this.unary((o) => this.raw.getLine({ name }, o), options);
  }

  /** One page of lines, newest first (`filter` on state, address, owner). */
  listLines(req: MessageInitShape<typeof ListLinesRequestSchema> = {}, options?: CallOptions): Promise<ListLinesResponse> {
    return this.unary((o) => this.raw.listLines(req, o), options);
  }

  /** Closes a line (owner only): calls still ringing on it end NO_ANSWER. */
  closeLine(name: string, options?: CallOptions): Promise<Line> {
    return this.unary((o) => this.raw.closeLine({ name }, o), options);
  }

  /**
   * Answers an offered call (lineAnswer). `req.qos`, in the answering call's terms, may only lower
   * the offer; unset accepts it (a direction left out, or SERVICE_TYPE_NO_CHANGE, keeps it as offered). At
   * NEEDED an answer below the caller's request throws QosUnavailableError.
   */
  answerCall(req: MessageInitShape<typeof AnswerCallRequestSchema>, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.answerCall(req, o), options);
  }

  /** Rejects an offered call: both ends disconnect REJECTED. */
  rejectCall(name: string, options?: CallOptions): Promise<Call> {
    return this.unary((o) => this.raw.rejectCall({ name }, o), options);
  }

  /**
   * The calls offered on `line`, each still OFFERING, as an async iterable: those ringing now,
   * then each new one (or, with `afterSequence`, the offers after that event sequence). It
   * resumes across reconnects like `watch`, and skips a call that stopped ringing before it was
   * read.
   */
  offers(line: string, afterSequence?: bigint, options?: WatchOptions): OfferWatcher {
    return new OfferWatcher(this, line, afterSequence, options);
  }

  listProviders(
    req: MessageInitShape<typeof ListProvidersRequestSchema> = {},
    options?: CallOptions,
  ): Promise<ListProvidersResponse> {
    return this.unary((o) => this.raw.listProviders(req, o), options);
  }

  /**
   * Events matching `req`, in sequence order, each once, as an async iterable that reopens the
   * stream after the last delivered sequence when it breaks with UNAVAILABLE (or CANCELLED, or
   * a reset connection) or ends, until failures have gone on for `resume.giveUpAfterMs`.
   * `afterSequence: 0n` replays everything retained; unset means only new events.
   */
  watch(req: MessageInitShape<typeof WatchEventsRequestSchema> = {}, options?: WatchOptions): EventWatcher {
    return new EventWatcher(this.raw, req, options);
  }
}


