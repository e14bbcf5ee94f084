package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Duration;
import dev.callqos.v1.Call;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.DisconnectReason;
import dev.callqos.v1.ExtendCallRequest;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Leases from the Java client against the real server: extendCall, and the keep-alive that keeps a
 * call alive in a try-with-resources block, drops it on close, and surfaces a lost lease. Leases
 * are real seconds (the least a lease may be is 1 s).
 */
class KeepAliveTest {
  private static TestServer server;
  private static CallQosClient client;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
    client = CallQosClient.builder(server.address).principal("alice").build();
  }

  @AfterAll
  static void stop() throws Exception {
    client.close();
    server.close();
  }

  private static Call leased(long seconds) {
    return client.createCall(CreateCallRequest.newBuilder().setCall(Call.newBuilder()
        .setDestination("sip:lease@example.test").setRequestedQos(Qos.controlledLoad(1_000))
        .setLeaseDuration(Duration.newBuilder().setSeconds(seconds))).build());
  }

  @Test
  void extendCallRenewsTheLeaseAndKeepsTheEtag() {
    Call call = leased(30);
    Call renewed = client.extendCall(ExtendCallRequest.newBuilder().setName(call.getName())
        .setLeaseDuration(Duration.newBuilder().setSeconds(90)).build());
    assertEquals(90, renewed.getLeaseDuration().getSeconds());
    assertEquals(call.getEtag(), renewed.getEtag());
    assertTrue(renewed.getLeaseExpireTime().getSeconds() > call.getLeaseExpireTime().getSeconds());
    CallQosException tooShort = assertThrows(CallQosException.class, () -> client.extendCall(ExtendCallRequest
        .newBuilder().setName(call.getName()).setLeaseDuration(Duration.newBuilder().setNanos(500_000_000)).build()));
    assertEquals("INVALID_REQUEST", tooShort.reason());
    client.dropCall(call.getName());
    Call plain = client.createCall(CreateCallRequest.newBuilder()
        .setCall(Call.newBuilder().setDestination("sip:plain@example.test")).build());
    assertEquals("CALL_NOT_LEASED", assertThrows(CallQosException.class, () -> client.extendCall(plain.getName())).reason());
    assertThrows(IllegalArgumentException.class, () -> client.keepAlive(plain));
    client.dropCall(plain.getName());
  }

  @Test
  void keepAliveKeepsTheCallThenDropsIt() throws Exception {
    // A 3 s lease renewed every second: each renewal has two seconds to get through, enough on a
    // busy machine; the call is held for more than two leases.
    Call call = leased(3);
    try (KeepAlive lease = client.keepAlive(call)) {
      Thread.sleep(7_000);
      assertFalse(lease.isLost());
      assertTrue(lease.renewals() >= 5, lease.renewals() + " renewals");
      assertEquals(Call.State.STATE_CONNECTED, client.getCall(call.getName()).getState());
    }
    assertEquals(DisconnectReason.DISCONNECT_REASON_NORMAL, client.getCall(call.getName()).getDisconnectReason());
  }

  @Test
  void aLostLeaseIsSurfacedAndThrownOnClose() throws Exception {
    Call call = leased(3);
    List<LeaseLostException> told = new ArrayList<>();
    KeepAlive lease = client.keepAlive(call,
        KeepAlive.options().interval(java.time.Duration.ofMillis(100)).onLost(told::add));
    client.dropCall(call.getName());
    LeaseLostException lost = lease.lost().get(5, TimeUnit.SECONDS);
    assertEquals(call.getName(), lost.call());
    assertEquals("CALL_NOT_CONNECTED", ((CallQosException) lost.getCause()).reason());
    assertTrue(lease.isLost());
    assertEquals(List.of(lost), told);
    assertSame(lost, assertThrows(LeaseLostException.class, lease::close));
  }

  @Test
  void withoutDropTheCallRunsOutItsLease() throws Exception {
    Call call = leased(3);
    try (KeepAlive lease = client.keepAlive(call, KeepAlive.options().drop(false))) {
      Thread.sleep(1_500);
      assertNotNull(lease.call());
    }
    assertEquals(Call.State.STATE_CONNECTED, client.getCall(call.getName()).getState());
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
    Call now = client.getCall(call.getName());
    while (now.getState() != Call.State.STATE_DISCONNECTED) {
      assertTrue(System.nanoTime() < deadline, "the lease never ran out");
      Thread.sleep(50);
      now = client.getCall(call.getName());
    }
    assertEquals(DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED, now.getDisconnectReason());
    assertEquals("LEASE_EXPIRED",
        assertThrows(CallQosException.class, () -> client.extendCall(call.getName())).reason());
  }
}
