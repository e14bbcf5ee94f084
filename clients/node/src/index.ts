export {
  AUTHORIZATION_HEADER,
  CallQosClient,
  DEFAULT_TIMEOUT_MS,
  PRINCIPAL_HEADER,
  fileToken,
  type CallQosClientOptions,
  type TlsOptions,
  type TokenSource,
} from "./client.js";
export { CallQosError, QosUnavailableError, DOMAIN, codeOf, decodeError, reasonString } from "./errors.js";
export { defaultResumePolicy, type ResumePolicy } from "./policy.js";
export { ControlledLoad } from "./qos.js";
export { DEFAULT_ADDRESS, LISTEN_ENV, TARGET_ENV, defaultTarget } from "./target.js";
export { EventWatcher, START_SEQUENCE_HEADER, type WatchOptions } from "./watch.js";
export { OfferWatcher } from "./offers.js";
export { KeepAlive, LeaseLostError, type KeepAliveOptions } from "./keepalive.js";
export { tracingInterceptor } from "./tracing.js";
export * from "./gen/callqos/v1/call_pb.js";
export * from "./gen/callqos/v1/callqos_service_pb.js";
export * from "./gen/callqos/v1/errors_pb.js";
export * from "./gen/callqos/v1/event_pb.js";
export * from "./gen/callqos/v1/flowspec_pb.js";
export * from "./gen/callqos/v1/line_pb.js";
export * from "./gen/callqos/v1/provider_pb.js";
