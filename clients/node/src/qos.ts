import { create } from "@bufbuild/protobuf";
import { ServiceType, QosSpecSchema, type QosSpec } from "./gen/callqos/v1/flowspec_pb.js";

/**
 * A QosSpec that sends `rate` bytes/s under CONTROLLED_LOAD (RFC 2211; packets of 64 to 1500
 * bytes) and receives best effort: the usual request for one media stream.
 */
export function ControlledLoad(rate: number | bigint): QosSpec {
  const r = BigInt(rate);
  return create(QosSpecSchema, {
    sending: {
      serviceType: ServiceType.CONTROLLED_LOAD,
      tokenRateBytesPerSecond: r,
      tokenBucketSizeBytes: r / 10n > 1500n ? r / 10n : 1500n,
      maxSduSizeBytes: 1500,
      minimumPolicedSizeBytes: 64,
    },
    receiving: { serviceType: ServiceType.BEST_EFFORT },
  });
}
