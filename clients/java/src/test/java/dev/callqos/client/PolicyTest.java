package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.Gson;
import com.google.protobuf.Descriptors.EnumValueDescriptor;
import com.google.protobuf.Message;
import com.google.rpc.Code;
import dev.callqos.v1.Call;
import dev.callqos.v1.CallQosServiceGrpc;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.DropCallRequest;
import dev.callqos.v1.ErrorReason;
import dev.callqos.v1.ErrorsProto;
import dev.callqos.v1.GetCallRequest;
import dev.callqos.v1.GrpcCode;
import dev.callqos.v1.ListCallsRequest;
import dev.callqos.v1.ListCallsResponse;
import dev.callqos.v1.ListProvidersRequest;
import dev.callqos.v1.ListProvidersResponse;
import dev.callqos.v1.RenegotiateCallRequest;
import dev.callqos.v1.ServiceLevel;
import dev.callqos.v1.WatchEventsRequest;
import dev.callqos.v1.WatchEventsResponse;
import io.grpc.Contexts;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Function;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The retry and resume policy all callqos clients share (clients/service_config.json), as this
 * client applies it, and each error reason's gRPC code (the grpc_code option in errors.proto). The
 * retry checks go through {@link Front}, a fault-injecting gRPC server in front of the real one,
 * which counts the attempts that really went over the wire.
 */
class PolicyTest {
  private static final Path SHARED_POLICY = Path.of("../service_config.json");
  private static final long LINK_CAPACITY = 1_250_000;

  private static TestServer server;
  private Front front;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
  }

  @AfterAll
  static void stop() throws Exception {
    server.close();
  }

  @BeforeEach
  void startFront() throws IOException {
    front = new Front(server.address);
  }

  @AfterEach
  void stopFront() {
    front.close();
  }

  @SuppressWarnings("unchecked")
  private static Map<String, Object> sharedPolicy() throws IOException {
    return new Gson().fromJson(Files.readString(SHARED_POLICY), Map.class);
  }

  @SuppressWarnings("unchecked")
  private static int maxAttempts() throws IOException {
    Map<String, Object> config = (Map<String, Object>) sharedPolicy().get("serviceConfig");
    List<Map<String, Object>> methods = (List<Map<String, Object>>) config.get("methodConfig");
    assertEquals(1, methods.size());
    return ((Double) ((Map<String, Object>) methods.get(0).get("retryPolicy")).get("maxAttempts")).intValue();
  }

  private static CallQosClient client(String address) {
    return CallQosClient.builder(address).principal("alice").build();
  }

  @Test
  @SuppressWarnings("unchecked")
  void theBundledPolicyIsTheSharedFile() throws IOException {
    assertEquals(sharedPolicy(), Policy.file());
    Map<String, Object> r = (Map<String, Object>) sharedPolicy().get("watchResume");
    ResumePolicy want = new ResumePolicy(
        Policy.duration((String) r.get("initialBackoff")), Policy.duration((String) r.get("maxBackoff")),
        (Double) r.get("backoffMultiplier"), Policy.duration((String) r.get("healthyAfter")),
        Policy.duration((String) r.get("giveUpAfter")), Set.of(Status.Code.UNAVAILABLE, Status.Code.CANCELLED));
    assertEquals(List.of("UNAVAILABLE", "CANCELLED"), r.get("resumableStatusCodes"));
    assertEquals(want, ResumePolicy.defaults());
    assertEquals(Duration.ofMillis(100), Policy.duration("0.1s"));
  }

  @Test
  void aReadFailingWithUnavailableSucceedsOnARetry() throws IOException {
    front.fail("ListProviders", Status.Code.UNAVAILABLE, maxAttempts() - 1, false);
    try (CallQosClient c = client(front.address())) {
      assertFalse(c.listProviders(ListProvidersRequest.getDefaultInstance()).getProvidersList().isEmpty());
    }
    assertEquals(maxAttempts(), front.attempts("ListProviders").size());
  }

  @Test
  void retriesStopAfterMaxAttempts() throws IOException {
    front.fail("GetCall", Status.Code.UNAVAILABLE, maxAttempts() + 3, false);
    try (CallQosClient c = client(front.address())) {
      CallQosException e = assertThrows(CallQosException.class, () -> c.getCall("calls/anything"));
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    }
    assertEquals(maxAttempts(), front.attempts("GetCall").size());
  }

  @Test
  void aCreateWhoseAnswerWasLostIsRetriedWithTheSameRequestIdMakingOneCall() {
    front.fail("CreateCall", Status.Code.UNAVAILABLE, 1, true);
    try (CallQosClient c = client(front.address())) {
      Call call = c.createCall(CreateCallRequest.newBuilder().setCall(Call.newBuilder()
          .setDestination("sip:retried@example.com").setRequestedQos(Qos.controlledLoad(1000))).build());
      List<Message> sent = front.attempts("CreateCall");
      assertEquals(2, sent.size());
      assertFalse(((CreateCallRequest) sent.get(0)).getRequestId().isEmpty());
      assertEquals(sent.get(0), sent.get(1));
      List<String> made = c.listCalls(ListCallsRequest.newBuilder().setPageSize(500).build()).getCallsList().stream()
          .filter(x -> x.getDestination().equals("sip:retried@example.com")).map(Call::getName).toList();
      assertEquals(List.of(call.getName()), made);
      c.dropCall(call.getName());
    }
  }

  @Test
  void aRenegotiationIsRetriedWithTheSameRequestId() {
    try (CallQosClient c = client(front.address())) {
      Call call = c.createCall(CreateCallRequest.newBuilder().setCall(Call.newBuilder()
          .setDestination("sip:renegotiated@example.com").setRequestedQos(Qos.controlledLoad(1000))).build());
      front.fail("RenegotiateCall", Status.Code.UNAVAILABLE, 1, true);
      Call changed = c.renegotiateCall(RenegotiateCallRequest.newBuilder()
          .setName(call.getName()).setQos(Qos.controlledLoad(2000)).build());
      assertEquals(2000, changed.getGrantedQos().getSending().getTokenRateBytesPerSecond());
      List<Message> sent = front.attempts("RenegotiateCall");
      assertEquals(2, sent.size());
      assertFalse(((RenegotiateCallRequest) sent.get(0)).getRequestId().isEmpty());
      assertEquals(sent.get(0), sent.get(1));
      c.dropCall(call.getName());
    }
  }

  @Test
  void aQosRefusalIsNotRetried() {
    try (CallQosClient c = client(front.address())) {
      QosUnavailableException e = assertThrows(QosUnavailableException.class, () -> c.createCall(
          CreateCallRequest.newBuilder().setCall(Call.newBuilder().setDestination("sip:refused@example.com")
              .setServiceLevel(ServiceLevel.SERVICE_LEVEL_NEEDED)
              .setRequestedQos(Qos.controlledLoad(2 * LINK_CAPACITY))).build()));
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code());
    }
    assertEquals(1, front.attempts("CreateCall").size());
  }

  @Test
  void theWatchGivesUpOnceFailuresHaveGoneOnForGiveUpAfter() {
    try (CallQosClient c = client(front.address());
        EventWatcher w = c.watch(WatchEventsRequest.newBuilder().setAfterSequence(0).build())) {
      w.resume(w.resume().withGiveUpAfter(Duration.ofSeconds(1)).withMaxBackoff(Duration.ofMillis(200)));
      long started = System.nanoTime();
      CallQosException e = assertThrows(CallQosException.class, w::hasNext);
      Duration took = Duration.ofNanos(System.nanoTime() - started);
      assertEquals(Status.Code.UNAVAILABLE, e.code());
      assertTrue(took.compareTo(Duration.ofSeconds(1)) >= 0 && took.compareTo(Duration.ofSeconds(10)) < 0,
          "gave up after " + took + ", want just over 1s");
      assertTrue(front.attempts("WatchEvents").size() >= 3, front.attempts("WatchEvents").size() + " attempts");
    }
  }

  @Test
  void everyReasonHasItsCode() {
    for (EnumValueDescriptor v : ErrorReason.getDescriptor().getValues()) {
      if (v.getNumber() == 0) {
        continue;
      }
      assertTrue(v.getOptions().hasExtension(ErrorsProto.grpcCode),
          v.getName() + " has no (callqos.v1.grpc_code) option in errors.proto");
      GrpcCode code = v.getOptions().getExtension(ErrorsProto.grpcCode);
      Status.Code got = CallQosException.codeOf(ErrorReason.forNumber(v.getNumber()));
      assertNotEquals(Status.Code.UNKNOWN, got, v.getName());
      assertEquals(code.getNumber(), got.value(), v.getName());
    }
    assertEquals(Status.Code.UNKNOWN, CallQosException.codeOf(ErrorReason.ERROR_REASON_UNSPECIFIED));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, CallQosException.codeOf(ErrorReason.ERROR_REASON_QOS_UNAVAILABLE));
    assertEquals(Status.Code.PERMISSION_DENIED, CallQosException.codeOf(ErrorReason.ERROR_REASON_QOS_POLICY_FAILURE));
  }

  @Test
  void grpcCodeIsGoogleRpcCode() {
    for (GrpcCode c : GrpcCode.values()) {
      if (c != GrpcCode.UNRECOGNIZED && c != GrpcCode.GRPC_CODE_UNSPECIFIED) {
        assertEquals(Code.forNumber(c.getNumber()).name(), c.name().substring("GRPC_CODE_".length()));
      }
    }
    assertEquals(Code.values().length, GrpcCode.values().length); // both have UNRECOGNIZED
  }

  @Test
  void whatTheRealServerSendsMatchesTheOption() {
    try (CallQosClient c = client(server.address)) {
      CallQosException e = assertThrows(CallQosException.class, () -> c.getCall("calls/no-such-call"));
      assertEquals("CALL_NOT_FOUND", e.reason());
      assertEquals(CallQosException.DOMAIN, e.errorInfo().orElseThrow().getDomain());
      assertEquals(CallQosException.codeOf(ErrorReason.ERROR_REASON_CALL_NOT_FOUND), e.code());
    }
  }

  /** Fails the next attempts of a method with a code, before or after forwarding it. */
  private record Fault(Status.Code code, int times, boolean after) {}

  /**
   * A loopback gRPC server in front of the real one: forwards calls (and the principal), fails the
   * attempts its faults say, and records every attempt's request. WatchEvents is always UNAVAILABLE.
   */
  private static final class Front extends CallQosServiceGrpc.CallQosServiceImplBase implements AutoCloseable {
    private static final io.grpc.Context.Key<String> PRINCIPAL = io.grpc.Context.key("principal");
    private final ManagedChannel upstream;
    private final CallQosServiceGrpc.CallQosServiceBlockingStub up;
    private final Server server;
    private final Map<String, Fault> faults = new HashMap<>();
    private final Map<String, List<Message>> attempts = new HashMap<>();

    Front(String upstreamAddress) throws IOException {
      upstream = Grpc.newChannelBuilder(upstreamAddress, InsecureChannelCredentials.create()).build();
      up = CallQosServiceGrpc.newBlockingStub(upstream);
      ServerInterceptor principal = new ServerInterceptor() {
        @Override
        public <Q, R> ServerCall.Listener<Q> interceptCall(
            ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
          String p = headers.get(CallQosClient.PRINCIPAL_HEADER);
          return Contexts.interceptCall(io.grpc.Context.current().withValue(PRINCIPAL, p), call, headers, next);
        }
      };
      server = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create())
          .addService(ServerInterceptors.intercept(this, principal)).build().start();
    }

    String address() {
      return "127.0.0.1:" + server.getPort();
    }

    synchronized void fail(String method, Status.Code code, int times, boolean after) {
      faults.put(method, new Fault(code, times, after));
    }

    synchronized List<Message> attempts(String method) {
      return List.copyOf(attempts.getOrDefault(method, List.of()));
    }

    /** Records the attempt; the fault to inject, if any. */
    private synchronized Fault attempt(String method, Message req) {
      attempts.computeIfAbsent(method, k -> new ArrayList<>()).add(req);
      Fault f = faults.get(method);
      if (f == null || f.times() == 0) {
        return null;
      }
      faults.put(method, new Fault(f.code(), f.times() - 1, f.after()));
      return f;
    }

    private <Q extends Message, R> void forward(String method, Q req, StreamObserver<R> out,
        Function<CallQosServiceGrpc.CallQosServiceBlockingStub, R> rpc) {
      Fault f = attempt(method, req);
      if (f != null && !f.after()) {
        out.onError(Status.fromCode(f.code()).withDescription("fault injected before " + method).asRuntimeException());
        return;
      }
      Metadata md = new Metadata();
      String principal = PRINCIPAL.get();
      if (principal != null) {
        md.put(CallQosClient.PRINCIPAL_HEADER, principal);
      }
      R resp;
      try {
        resp = rpc.apply(up.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(md)));
      } catch (StatusRuntimeException e) {
        out.onError(e); // the server's status, details and all
        return;
      }
      if (f != null) {
        out.onError(Status.fromCode(f.code()).withDescription("fault injected after " + method).asRuntimeException());
        return;
      }
      out.onNext(resp);
      out.onCompleted();
    }

    @Override
    public void getCall(GetCallRequest req, StreamObserver<Call> out) {
      forward("GetCall", req, out, s -> s.getCall(req));
    }

    @Override
    public void listCalls(ListCallsRequest req, StreamObserver<ListCallsResponse> out) {
      forward("ListCalls", req, out, s -> s.listCalls(req));
    }

    @Override
    public void createCall(CreateCallRequest req, StreamObserver<Call> out) {
      forward("CreateCall", req, out, s -> s.createCall(req));
    }

    @Override
    public void renegotiateCall(RenegotiateCallRequest req, StreamObserver<Call> out) {
      forward("RenegotiateCall", req, out, s -> s.renegotiateCall(req));
    }

    @Override
    public void dropCall(DropCallRequest req, StreamObserver<Call> out) {
      forward("DropCall", req, out, s -> s.dropCall(req));
    }

    @Override
    public void listProviders(ListProvidersRequest req, StreamObserver<ListProvidersResponse> out) {
      forward("ListProviders", req, out, s -> s.listProviders(req));
    }

    @Override
    public void watchEvents(WatchEventsRequest req, StreamObserver<WatchEventsResponse> out) {
      attempt("WatchEvents", req);
      out.onError(Status.UNAVAILABLE.withDescription("fault injected: the server stays down").asRuntimeException());
    }

    @Override
    public void close() {
      server.shutdownNow();
      upstream.shutdownNow();
    }
  }
}
