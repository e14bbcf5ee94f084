package dev.callqos.client;

import dev.callqos.v1.QosSpec;
import io.grpc.StatusRuntimeException;
import java.util.Optional;

/**
 * A refused QoS: RESOURCE_EXHAUSTED with reason QOS_UNAVAILABLE, or PERMISSION_DENIED with
 * QOS_POLICY_FAILURE. Retrying with {@link #counterOffer()} succeeds if nothing else changed
 * meanwhile.
 */
public final class QosUnavailableException extends CallQosException {
  QosUnavailableException(StatusRuntimeException cause, Details details) {
    super(cause, details);
  }

  /** The refused call, {@code calls/{call}}. */
  public String call() {
    return refusal().map(r -> r.getCall()).orElse("");
  }

  /** The best QoS the provider could grant now; empty when it can offer nothing. */
  public Optional<QosSpec> counterOffer() {
    return refusal().filter(r -> r.hasCounterOffer()).map(r -> r.getCounterOffer());
  }

  /** The provider's explanation, for people. */
  public String detail() {
    return refusal().map(r -> r.getDetail()).orElse("");
  }
}
