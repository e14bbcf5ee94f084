// Errors from the callqos service, with their google.rpc.Status details decoded.
//
// Every callqos error carries google.rpc.ErrorInfo (domain "callqos.dev") whose reason is an
// ErrorReason name ("QOS_UNAVAILABLE"); invalid requests add google.rpc.BadRequest, and QoS
// refusals add callqos.v1.QosRefusal with the provider's counter-offer.
import { getOption } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { QosRefusalSchema, type QosRefusal } from "./gen/callqos/v1/call_pb.js";
import { ErrorReason, ErrorReasonSchema, grpc_code } from "./gen/callqos/v1/errors_pb.js";
import type { QosSpec } from "./gen/callqos/v1/flowspec_pb.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  type BadRequest,
  type ErrorInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** The google.rpc.ErrorInfo domain of every callqos error. */
export const DOMAIN = "callqos.dev";

/** The ErrorInfo.reason string of an ErrorReason, e.g. "QOS_UNAVAILABLE". */
export function reasonString(reason: ErrorReason): string {
  return ErrorReason[reason];
}

/**
 * The gRPC code the server always sends with `reason`: the (grpc_code) option on it in
 * errors.proto, read from the generated descriptor (connect's Code has gRPC's numbers).
 * Code.Unknown for a value without the option (UNSPECIFIED, or one this client does not know).
 */
export function codeOf(reason: ErrorReason): Code {
  const value = ErrorReasonSchema.value[reason];
  const code = value === undefined ? 0 : getOption(value, grpc_code);
  return code === 0 ? Code.Unknown : (code as number as Code);
}

/** A failed RPC: the ConnectError (as `cause`) with its details decoded. */
export class CallQosError extends Error {
  /** The gRPC status code (connect's Code enum has the same numbers). */
  readonly code: Code;
  /** ErrorInfo.reason, e.g. "NOT_OWNER"; "" when the server sent no ErrorInfo. */
  readonly reason: string;
  readonly info?: ErrorInfo;
  /** For INVALID_REQUEST: the invalid fields. */
  readonly badRequest?: BadRequest;
  /** For refusals: the refused call and the counter-offer. */
  readonly refusal?: QosRefusal;
  declare readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    super(cause.message, { cause });
    this.name = "CallQosError";
    this.code = cause.code;
    this.info = cause.findDetails(ErrorInfoSchema)[0];
    this.reason = this.info?.reason ?? "";
    this.badRequest = cause.findDetails(BadRequestSchema)[0];
    this.refusal = cause.findDetails(QosRefusalSchema)[0];
  }
}

/**
 * A refused QoS: RESOURCE_EXHAUSTED with reason QOS_UNAVAILABLE, or PERMISSION_DENIED with
 * QOS_POLICY_FAILURE. Retrying with `counterOffer` succeeds if nothing else changed meanwhile.
 */
export class QosUnavailableError extends CallQosError {
  constructor(cause: ConnectError) {
    super(cause);
    this.name = "QosUnavailableError";
  }
  /** The refused call, `calls/{call}`. */
  get call(): string {
    return this.refusal?.call ?? "";
  }
  /** The best QoS the provider could grant now; undefined when it can offer nothing. */
  get counterOffer(): QosSpec | undefined {
    return this.refusal?.counterOffer;
  }
  /** The provider's explanation, for people. */
  get detail(): string {
    return this.refusal?.detail ?? "";
  }
}

const refusalReasons = new Set([
  reasonString(ErrorReason.QOS_UNAVAILABLE),
  reasonString(ErrorReason.QOS_POLICY_FAILURE),
]);

/** Turns anything an RPC threw into a CallQosError or QosUnavailableError. */
export function decodeError(err: unknown): CallQosError {
  if (err instanceof CallQosError) {
    return err;
  }
  const cause = ConnectError.from(err);
  const info = cause.findDetails(ErrorInfoSchema)[0];
  return info && refusalReasons.has(info.reason)
    ? new QosUnavailableError(cause)
    : new CallQosError(cause);
}
