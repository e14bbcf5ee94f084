package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.callqos.client.examples.Quickstart;
import dev.callqos.v1.Call;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.DisconnectReason;
import dev.callqos.v1.ErrorReason;
import dev.callqos.v1.ListProvidersRequest;
import dev.callqos.v1.QosEvent;
import dev.callqos.v1.QosEventType;
import dev.callqos.v1.QosSpec;
import dev.callqos.v1.RenegotiateCallRequest;
import dev.callqos.v1.ServiceLevel;
import dev.callqos.v1.ServiceType;
import dev.callqos.v1.WatchEventsRequest;
import io.grpc.Status;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

class CallQosClientTest {
  private static final long LINK_CAPACITY = 1_250_000; // the reference provider's default link
  private static final List<QosEventType> LIFECYCLE = List.of(
      QosEventType.QOS_EVENT_TYPE_QOS_GRANTED, QosEventType.QOS_EVENT_TYPE_QOS_CHANGED,
      QosEventType.QOS_EVENT_TYPE_CALL_DISCONNECTED);

  private static TestServer server;
  private static CallQosClient alice;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
    alice = client(server.address, "alice");
  }

  @AfterAll
  static void stop() throws Exception {
    alice.close();
    server.close();
  }

  private static CallQosClient client(String address, String principal) {
    return CallQosClient.builder(address).principal(principal).build();
  }

  private static CreateCallRequest needed(QosSpec qos) {
    return CreateCallRequest.newBuilder().setCall(Call.newBuilder()
        .setDestination("sip:bob@example.com")
        .setServiceLevel(ServiceLevel.SERVICE_LEVEL_NEEDED)
        .setRequestedQos(qos)).build();
  }

  private static long rate(Call c) {
    return c.getGrantedQos().getSending().getTokenRateBytesPerSecond();
  }

  @Test
  void createGetDrop() {
    Call call = alice.createCall(needed(Qos.controlledLoad(100_000)));
    assertEquals(Call.State.STATE_CONNECTED, call.getState());
    assertEquals(100_000, rate(call));
    assertEquals("alice", call.getOwner());
    assertEquals(call.getGrantedQos(), alice.getCall(call.getName()).getGrantedQos());
    Call dropped = alice.dropCall(call.getName());
    assertEquals(Call.State.STATE_DISCONNECTED, dropped.getState());
    assertEquals(DisconnectReason.DISCONNECT_REASON_NORMAL, dropped.getDisconnectReason());
  }

  @Test
  void refusalCarriesCounterOffer() {
    CreateCallRequest req = needed(Qos.controlledLoad(2 * LINK_CAPACITY));
    QosUnavailableException e = assertThrows(QosUnavailableException.class, () -> alice.createCall(req));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code());
    assertEquals(CallQosException.reason(ErrorReason.ERROR_REASON_QOS_UNAVAILABLE), e.reason());
    assertEquals(CallQosException.DOMAIN, e.errorInfo().orElseThrow().getDomain());
    assertTrue(e.call().startsWith("calls/"), e.call());
    QosSpec offer = e.counterOffer().orElseThrow();
    long offered = offer.getSending().getTokenRateBytesPerSecond();
    assertTrue(offered > 0 && offered <= LINK_CAPACITY, "counter-offer " + offered);
    assertEquals(DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE, alice.getCall(e.call()).getDisconnectReason());

    Call granted = alice.createCall(needed(offer));
    assertEquals(offered, rate(granted));
    alice.dropCall(granted.getName());
  }

  @Test
  void renegotiation() {
    Call call = alice.createCall(needed(Qos.controlledLoad(200_000)));
    for (long r : new long[] {400_000, 100_000}) {
      call = alice.renegotiateCall(RenegotiateCallRequest.newBuilder()
          .setName(call.getName()).setQos(Qos.controlledLoad(r)).setEtag(call.getEtag()).build());
      assertEquals(r, rate(call));
    }
    String name = call.getName();
    QosUnavailableException e = assertThrows(QosUnavailableException.class, () -> alice.renegotiateCall(
        RenegotiateCallRequest.newBuilder().setName(name).setQos(Qos.controlledLoad(2 * LINK_CAPACITY)).build()));
    assertEquals(name, e.call());
    Call after = alice.getCall(name);
    assertEquals(Call.State.STATE_CONNECTED, after.getState());
    assertEquals(call.getGrantedQos(), after.getGrantedQos());

    try (CallQosClient mallory = client(server.address, "mallory")) {
      CallQosException denied = assertThrows(CallQosException.class, () -> mallory.renegotiateCall(
          RenegotiateCallRequest.newBuilder().setName(name).setQos(Qos.controlledLoad(1000)).build()));
      assertEquals(Status.Code.PERMISSION_DENIED, denied.code());
      assertEquals("NOT_OWNER", denied.reason());
    }
    alice.dropCall(name);
  }

  @Test
  void invalidRequestNamesTheField() {
    QosSpec.Builder qos = Qos.controlledLoad(1000).toBuilder();
    qos.getSendingBuilder().setServiceType(ServiceType.SERVICE_TYPE_UNSPECIFIED);
    CallQosException e = assertThrows(CallQosException.class, () -> alice.createCall(needed(qos.build())));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertEquals("INVALID_REQUEST", e.reason());
    assertTrue(e.badRequest().orElseThrow().getFieldViolationsCount() > 0);
  }

  @Test
  void defaultDeadline() {
    try (CallQosClient hasty = CallQosClient.builder(server.address).timeout(Duration.ofNanos(1)).build()) {
      CallQosException e = assertThrows(CallQosException.class,
          () -> hasty.listProviders(ListProvidersRequest.getDefaultInstance()));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
    }
  }

  /** Connects, renegotiates once and drops: QOS_GRANTED, QOS_CHANGED, CALL_DISCONNECTED. */
  private static String lifecycle(CallQosClient c) {
    Call call = c.createCall(needed(Qos.controlledLoad(100_000)));
    c.renegotiateCall(RenegotiateCallRequest.newBuilder().setName(call.getName()).setQos(Qos.controlledLoad(50_000)).build());
    c.dropCall(call.getName());
    return call.getName();
  }

  private static List<QosEvent> take(EventWatcher w, int n) {
    List<QosEvent> got = new ArrayList<>();
    try (w) {
      while (got.size() < n && w.hasNext()) {
        got.add(w.next());
      }
    }
    return got;
  }

  private static List<QosEventType> types(List<QosEvent> evs) {
    return evs.stream().map(QosEvent::getType).toList();
  }

  @Test
  void watchReplaysFromCursorAndResumes() {
    String name = lifecycle(alice);
    EventWatcher w = alice.watch(WatchEventsRequest.newBuilder().setAfterSequence(0).setCall(name).build());
    List<QosEvent> all = take(w, 3);
    assertEquals(LIFECYCLE, types(all));
    assertEquals(all.get(2).getSequence(), w.lastSequence().orElseThrow());
    List<QosEvent> rest = take(alice.watch(
        WatchEventsRequest.newBuilder().setAfterSequence(all.get(0).getSequence()).setCall(name).build()), 2);
    assertEquals(all.subList(1, 3), rest);
  }

  @Test
  void watchReconnectsAfterCut() throws Exception {
    try (TcpProxy proxy = new TcpProxy(server.address); CallQosClient proxied = client(proxy.address(), "alice")) {
      Call call = alice.createCall(needed(Qos.controlledLoad(100_000)));
      List<QosEvent> got = new ArrayList<>();
      try (EventWatcher w = proxied.watch(
          WatchEventsRequest.newBuilder().setAfterSequence(0).setCall(call.getName()).build())) {
        for (QosEvent ev : w) {
          got.add(ev);
          if (got.size() == 1) {
            proxy.cut(); // the remaining events happen while the stream is down
            alice.renegotiateCall(RenegotiateCallRequest.newBuilder()
                .setName(call.getName()).setQos(Qos.controlledLoad(50_000)).build());
            alice.dropCall(call.getName());
          }
          if (got.size() == 3) {
            break;
          }
        }
      }
      assertEquals(LIFECYCLE, types(got));
      assertTrue(got.get(0).getSequence() < got.get(1).getSequence() && got.get(1).getSequence() < got.get(2).getSequence());
      assertTrue(proxy.connections() >= 2, "the watch did not reconnect");
    }
  }

  /** Starts {@code w} on another thread and waits until its stream is open; gives the first event. */
  private static CompletableFuture<QosEvent> watchFirst(EventWatcher w) throws InterruptedException {
    CompletableFuture<QosEvent> first = CompletableFuture.supplyAsync(w::next);
    for (int i = 0; i < 1000 && w.lastSequence().isEmpty(); i++) {
      Thread.sleep(10);
    }
    assertTrue(w.lastSequence().isPresent(), "the watch stream did not open (no x-callqos-start-sequence header?)");
    return first;
  }

  @Test
  void watchWithoutCursorGetsOnlyNewEvents() throws Exception {
    lifecycle(alice); // older events, which must not be delivered
    try (EventWatcher w = alice.watch(WatchEventsRequest.getDefaultInstance())) {
      CompletableFuture<QosEvent> first = watchFirst(w);
      Call call = alice.createCall(needed(Qos.controlledLoad(1000)));
      QosEvent ev = first.get(10, TimeUnit.SECONDS);
      assertEquals(call.getName(), ev.getCall());
      assertEquals(QosEventType.QOS_EVENT_TYPE_QOS_GRANTED, ev.getType());
      alice.dropCall(call.getName());
    }
  }

  @Test
  void watchFromNowResumesWhenCutBeforeFirstEvent() throws Exception {
    try (TcpProxy proxy = new TcpProxy(server.address); CallQosClient proxied = client(proxy.address(), "alice");
        EventWatcher w = proxied.watch(WatchEventsRequest.getDefaultInstance())) {
      CompletableFuture<QosEvent> first = watchFirst(w);
      proxy.cut();
      Call call = alice.createCall(needed(Qos.controlledLoad(1000))); // while the watch is down or reconnecting
      QosEvent ev = first.get(10, TimeUnit.SECONDS);
      assertEquals(call.getName(), ev.getCall());
      assertEquals(QosEventType.QOS_EVENT_TYPE_QOS_GRANTED, ev.getType());
      assertTrue(proxy.connections() >= 2, "the watch did not reconnect");
      alice.dropCall(call.getName());
    }
  }

  @Test
  void closingTheWatcherEndsIteration() throws Exception {
    EventWatcher w = alice.watch(WatchEventsRequest.getDefaultInstance());
    Thread closer = new Thread(() -> {
      try {
        Thread.sleep(200);
      } catch (InterruptedException ignored) {
        // closing anyway
      }
      w.close();
    });
    closer.start();
    assertFalse(w.hasNext());
    closer.join();
  }

  @Test
  void quickstartExampleRuns() {
    List<String> lines = new ArrayList<>();
    Quickstart.run(server.address, lines::add);
    String out = String.join("\n", lines);
    for (String want : List.of("refused: QOS_UNAVAILABLE", "connected:", "renegotiated: 500000",
        "QOS_EVENT_TYPE_QOS_GRANTED", "QOS_EVENT_TYPE_QOS_CHANGED", "QOS_EVENT_TYPE_CALL_DISCONNECTED")) {
      assertTrue(out.contains(want), "output lacks " + want + ":\n" + out);
    }
  }
}
