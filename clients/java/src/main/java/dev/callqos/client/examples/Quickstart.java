package dev.callqos.client.examples;

import dev.callqos.client.CallQosClient;
import dev.callqos.client.EventWatcher;
import dev.callqos.client.Qos;
import dev.callqos.client.QosUnavailableException;
import dev.callqos.client.Targets;
import dev.callqos.v1.Call;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.QosEvent;
import dev.callqos.v1.QosEventType;
import dev.callqos.v1.QosSpec;
import dev.callqos.v1.RenegotiateCallRequest;
import dev.callqos.v1.ServiceLevel;
import dev.callqos.v1.WatchEventsRequest;
import java.util.function.Consumer;

/**
 * The callqos API in one walk: ask for more QoS than the link has, get refused with a
 * counter-offer, take it, renegotiate down, drop the call, then replay its events.
 *
 * <pre>mvn -q compile exec:java                               # CALLQOS_TARGET, else CALLQOS_LISTEN
 * mvn -q compile exec:java -Dexec.args=127.0.0.1:50051</pre>
 */
public final class Quickstart {
  private Quickstart() {}

  public static void main(String[] args) {
    run(args.length > 0 ? args[0] : Targets.defaultTarget(), System.out::println);
  }

  public static void run(String address, Consumer<String> log) {
    try (CallQosClient client = CallQosClient.builder(address).principal("quickstart").build()) {
      // 1. 2,000,000 bytes/s is more than the reference link's 1,250,000: refused at NEEDED.
      Call.Builder want = Call.newBuilder()
          .setDestination("sip:alice@example.com")
          .setServiceLevel(ServiceLevel.SERVICE_LEVEL_NEEDED)
          .setRequestedQos(Qos.controlledLoad(2_000_000));
      QosSpec offer;
      try {
        client.createCall(CreateCallRequest.newBuilder().setCall(want).build());
        throw new IllegalStateException("expected a QoS refusal");
      } catch (QosUnavailableException e) {
        offer = e.counterOffer().orElseThrow();
        log.accept("refused: " + e.reason() + " (" + e.call() + "); counter-offer: "
            + offer.getSending().getTokenRateBytesPerSecond() + " bytes/s");
      }

      // 2. Take the counter-offer.
      Call call = client.createCall(CreateCallRequest.newBuilder().setCall(want.setRequestedQos(offer)).build());
      log.accept("connected: " + call.getName() + " at "
          + call.getGrantedQos().getSending().getTokenRateBytesPerSecond() + " bytes/s");

      // 3. Renegotiate down to 500,000 bytes/s.
      call = client.renegotiateCall(RenegotiateCallRequest.newBuilder()
          .setName(call.getName()).setQos(Qos.controlledLoad(500_000)).setEtag(call.getEtag()).build());
      log.accept("renegotiated: " + call.getGrantedQos().getSending().getTokenRateBytesPerSecond() + " bytes/s");

      // 4. Drop it.
      client.dropCall(call.getName());
      log.accept("dropped: " + call.getName());

      // 5. Replay the call's events from the start of the log (after_sequence 0); the watcher
      // resumes from the last sequence if the stream breaks meanwhile.
      try (EventWatcher events = client.watch(
          WatchEventsRequest.newBuilder().setAfterSequence(0).setCall(call.getName()).build())) {
        for (QosEvent ev : events) {
          log.accept("event " + ev.getSequence() + ": " + ev.getType() + " "
              + ev.getCurrentQos().getSending().getTokenRateBytesPerSecond() + " bytes/s");
          if (ev.getType() == QosEventType.QOS_EVENT_TYPE_CALL_DISCONNECTED) {
            break;
          }
        }
      }
    }
  }
}
