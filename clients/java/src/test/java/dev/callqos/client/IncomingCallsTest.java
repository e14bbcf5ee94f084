package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.callqos.v1.AnswerCallRequest;
import dev.callqos.v1.Call;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.CreateLineRequest;
import dev.callqos.v1.DisconnectReason;
import dev.callqos.v1.FlowSpec;
import dev.callqos.v1.Line;
import dev.callqos.v1.ListLinesRequest;
import dev.callqos.v1.QosSpec;
import dev.callqos.v1.ServiceLevel;
import dev.callqos.v1.ServiceType;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalLong;
import java.util.UUID;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

class IncomingCallsTest {
  private static TestServer server;
  private static CallQosClient bob;
  private static CallQosClient carol;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
    bob = CallQosClient.builder(server.address).principal("bob").build();
    carol = CallQosClient.builder(server.address).principal("carol").build();
  }

  @AfterAll
  static void stop() throws Exception {
    bob.close();
    carol.close();
    server.close();
  }

  private static Line openLine() {
    String address = "sip:" + UUID.randomUUID().toString().substring(0, 12) + "@example.test";
    return bob.createLine(CreateLineRequest.newBuilder().setLine(Line.newBuilder().setAddress(address)).build());
  }

  private static Call ring(Line line, ServiceLevel level, long rate) {
    Call call = carol.createCall(CreateCallRequest.newBuilder().setCall(Call.newBuilder()
        .setDestination(line.getAddress()).setServiceLevel(level).setRequestedQos(Qos.controlledLoad(rate))).build());
    assertEquals(Call.State.STATE_RINGBACK, call.getState());
    return call;
  }

  private static final QosSpec LESS = QosSpec.newBuilder()
      .setSending(FlowSpec.newBuilder().setServiceType(ServiceType.SERVICE_TYPE_NO_CHANGE))
      .setReceiving(FlowSpec.newBuilder()
          .setServiceType(ServiceType.SERVICE_TYPE_CONTROLLED_LOAD).setTokenRateBytesPerSecond(25_000))
      .build();

  @Test
  void offersAreAnsweredWithLessRefusedAtNeededAndRejected() {
    Line line = openLine();
    assertEquals("bob", line.getOwner());
    CallQosException busy = assertThrows(CallQosException.class,
        () -> carol.createLine(CreateLineRequest.newBuilder().setLine(Line.newBuilder().setAddress(line.getAddress())).build()));
    assertEquals("ADDRESS_IN_USE", busy.reason());

    Call early = ring(line, ServiceLevel.SERVICE_LEVEL_IF_AVAILABLE, 40_000);
    List<Call> seen = new ArrayList<>();
    Call later = null;
    try (OfferWatcher offers = bob.offers(line.getName())) {
      for (Call call : offers) {
        seen.add(call);
        if (seen.size() == 2) {
          break;
        }
        later = ring(line, ServiceLevel.SERVICE_LEVEL_NEEDED, 40_000);
      }
      assertTrue(offers.lastSequence().isPresent());
    }
    assertNotNull(later);
    assertEquals(List.of(early.getPeer(), later.getPeer()), seen.stream().map(Call::getName).toList());
    assertEquals(40_000, seen.get(0).getRequestedQos().getReceiving().getTokenRateBytesPerSecond(), "mirrored");

    Call answered = bob.answerCall(AnswerCallRequest.newBuilder().setName(early.getPeer()).setQos(LESS).build());
    assertEquals(Call.State.STATE_CONNECTED, answered.getState());
    Call mine = carol.getCall(early.getName());
    assertEquals(25_000, mine.getGrantedQos().getSending().getTokenRateBytesPerSecond());
    assertEquals(40_000, mine.getRequestedQos().getSending().getTokenRateBytesPerSecond());

    String needed = later.getPeer();
    QosUnavailableException refused = assertThrows(QosUnavailableException.class,
        () -> bob.answerCall(AnswerCallRequest.newBuilder().setName(needed).setQos(LESS).build()));
    assertTrue(refused.counterOffer().isPresent());

    Call third = ring(line, ServiceLevel.SERVICE_LEVEL_NEEDED, 1000);
    Call rejected = bob.rejectCall(third.getPeer());
    assertEquals(DisconnectReason.DISCONNECT_REASON_REJECTED, rejected.getDisconnectReason());
    CallQosException late = assertThrows(CallQosException.class,
        () -> bob.answerCall(AnswerCallRequest.newBuilder().setName(third.getPeer()).build()));
    assertEquals("CALL_NOT_OFFERING", late.reason());

    bob.dropCall(early.getPeer());
    assertEquals(Line.State.STATE_CLOSED, bob.closeLine(line.getName()).getState());
    assertEquals(List.of(line.getName()), bob.listLines(ListLinesRequest.newBuilder()
        .setFilter("address = \"" + line.getAddress() + "\"").build()).getLinesList().stream().map(Line::getName).toList());
  }

  @Test
  void offersResumeFromTheirCursorAndSkipCallsNoLongerRinging() {
    Line line = openLine();
    ring(line, ServiceLevel.SERVICE_LEVEL_NEEDED, 1000);
    OptionalLong cursor;
    try (OfferWatcher first = bob.offers(line.getName())) {
      first.next();
      cursor = first.lastSequence();
    }
    assertTrue(cursor.isPresent());
    Call gone = ring(line, ServiceLevel.SERVICE_LEVEL_NEEDED, 1000);
    bob.rejectCall(gone.getPeer());
    Call ringing = ring(line, ServiceLevel.SERVICE_LEVEL_NEEDED, 1000);
    try (OfferWatcher resumed = bob.offers(line.getName(), cursor.getAsLong())) {
      assertEquals(ringing.getPeer(), resumed.next().getName());
    }
    bob.closeLine(line.getName());
  }
}
