package dev.callqos.client;

import dev.callqos.v1.FlowSpec;
import dev.callqos.v1.QosSpec;
import dev.callqos.v1.ServiceType;

/** Ready-made QoS requests. */
public final class Qos {
  private Qos() {}

  /**
   * Sends {@code rate} bytes/s under CONTROLLED_LOAD (RFC 2211; packets of 64 to 1500 bytes)
   * and receives best effort: the usual request for one media stream.
   */
  public static QosSpec controlledLoad(long rate) {
    return QosSpec.newBuilder()
        .setSending(FlowSpec.newBuilder()
            .setServiceType(ServiceType.SERVICE_TYPE_CONTROLLED_LOAD)
            .setTokenRateBytesPerSecond(rate)
            .setTokenBucketSizeBytes(Math.max(rate / 10, 1500))
            .setMaxSduSizeBytes(1500)
            .setMinimumPolicedSizeBytes(64))
        .setReceiving(FlowSpec.newBuilder().setServiceType(ServiceType.SERVICE_TYPE_BEST_EFFORT))
        .build();
  }
}
