package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.callqos.v1.Call;
import dev.callqos.v1.CallQosServiceGrpc;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.QosEvent;
import dev.callqos.v1.QosEventType;
import dev.callqos.v1.ServiceLevel;
import dev.callqos.v1.WatchEventsRequest;
import io.grpc.InsecureServerCredentials;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.opentelemetry.api.OpenTelemetry;
import io.opentelemetry.api.baggage.Baggage;
import io.opentelemetry.api.baggage.propagation.W3CBaggagePropagator;
import io.opentelemetry.api.common.AttributeKey;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanKind;
import io.opentelemetry.api.trace.StatusCode;
import io.opentelemetry.api.trace.propagation.W3CTraceContextPropagator;
import io.opentelemetry.context.Scope;
import io.opentelemetry.context.propagation.ContextPropagators;
import io.opentelemetry.context.propagation.TextMapPropagator;
import io.opentelemetry.sdk.OpenTelemetrySdk;
import io.opentelemetry.sdk.testing.exporter.InMemorySpanExporter;
import io.opentelemetry.sdk.trace.SdkTracerProvider;
import io.opentelemetry.sdk.trace.data.SpanData;
import io.opentelemetry.sdk.trace.export.SimpleSpanProcessor;
import java.io.File;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tracing, over real gRPC on loopback: what a traced client puts on the wire (at a recording
 * gRPC server), and that the callqos server's span joins the client's trace (its QoS events carry
 * the trace id); and that an untraced client needs no OpenTelemetry at all (in a JVM without it).
 */
class TracingTest {
  // version 00, trace id, parent (span) id, flags: 01 sampled, | 02 random trace id (W3C level 2,
  // which SDK 1.68 sets).
  private static final Pattern TRACEPARENT = Pattern.compile("^00-([0-9a-f]{32})-([0-9a-f]{16})-0([13])$");
  private static final Metadata.Key<String> TRACEPARENT_HEADER =
      Metadata.Key.of("traceparent", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> BAGGAGE_HEADER =
      Metadata.Key.of("baggage", Metadata.ASCII_STRING_MARSHALLER);

  private static TestServer server;
  private static Server recorder;
  private static final List<Metadata> recorded = new CopyOnWriteArrayList<>();

  private final InMemorySpanExporter spans = InMemorySpanExporter.create();
  // No propagators set: OpenTelemetrySdk's default, for which the client sends W3C trace context.
  private final OpenTelemetrySdk otel = OpenTelemetrySdk.builder()
      .setTracerProvider(SdkTracerProvider.builder().addSpanProcessor(SimpleSpanProcessor.create(spans)).build())
      .build();

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
    // A gRPC server on 127.0.0.1 that records each request's metadata and answers UNIMPLEMENTED
    // (the generated base class's default for every method).
    ServerInterceptor record = new ServerInterceptor() {
      @Override
      public <Q, R> ServerCall.Listener<Q> interceptCall(
          ServerCall<Q, R> call, Metadata headers, ServerCallHandler<Q, R> next) {
        recorded.add(headers);
        return next.startCall(call, headers);
      }
    };
    recorder = NettyServerBuilder
        .forAddress(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0), InsecureServerCredentials.create())
        .addService(ServerInterceptors.intercept(new CallQosServiceGrpc.CallQosServiceImplBase() {}, record))
        .build()
        .start();
  }

  @AfterAll
  static void stop() throws Exception {
    recorder.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    server.close();
  }

  @AfterEach
  void closeSdk() {
    otel.close();
    recorded.clear();
  }

  private static String recorderAddress() {
    return "127.0.0.1:" + recorder.getPort();
  }

  private CallQosClient traced(String address) {
    return CallQosClient.builder(address).principal("alice").openTelemetry(otel).build();
  }

  private static CreateCallRequest needed(long rate) {
    return CreateCallRequest.newBuilder().setCall(Call.newBuilder()
        .setDestination("sip:bob@example.com")
        .setServiceLevel(ServiceLevel.SERVICE_LEVEL_NEEDED)
        .setRequestedQos(Qos.controlledLoad(rate))).build();
  }

  private SpanData finished(String method) {
    String name = "callqos.v1.CallQosService/" + method;
    return spans.getFinishedSpanItems().stream().filter(s -> s.getName().equals(name)).findFirst()
        .orElseThrow(() -> new AssertionError("no client span " + name + " in " + spans.getFinishedSpanItems()));
  }

  /** The first event of {@code call}: its QOS_GRANTED, caused by the CreateCall. */
  private static QosEvent granted(CallQosClient c, String call) {
    try (EventWatcher w = c.watch(WatchEventsRequest.newBuilder().setAfterSequence(0).setCall(call).build())) {
      QosEvent ev = w.next();
      assertEquals(QosEventType.QOS_EVENT_TYPE_QOS_GRANTED, ev.getType());
      return ev;
    }
  }

  @Test
  void tracedClientSendsTraceparentNamingItsSpan() {
    try (CallQosClient c = traced(recorderAddress())) {
      CallQosException e = assertThrows(CallQosException.class, () -> c.getCall("calls/x"));
      assertEquals(Status.Code.UNIMPLEMENTED, e.code());
    }
    assertEquals(1, recorded.size());
    Metadata headers = recorded.get(0);
    assertEquals("alice", headers.get(CallQosClient.PRINCIPAL_HEADER));
    String traceparent = headers.get(TRACEPARENT_HEADER);
    Matcher m = TRACEPARENT.matcher(String.valueOf(traceparent));
    assertTrue(m.matches(), "traceparent = " + traceparent);

    List<SpanData> all = spans.getFinishedSpanItems();
    assertEquals(1, all.size(), all.toString());
    SpanData span = all.get(0);
    assertEquals("callqos.v1.CallQosService/GetCall", span.getName());
    assertEquals(SpanKind.CLIENT, span.getKind());
    assertEquals(m.group(1), span.getTraceId());
    assertEquals(m.group(2), span.getSpanId());
    assertTrue(span.getSpanContext().isSampled());
    assertFalse(span.getParentSpanContext().isValid(), "no current span, so a root span");
    assertEquals("grpc", span.getAttributes().get(AttributeKey.stringKey("rpc.system")));
    assertEquals("callqos.v1.CallQosService", span.getAttributes().get(AttributeKey.stringKey("rpc.service")));
    assertEquals("GetCall", span.getAttributes().get(AttributeKey.stringKey("rpc.method")));
    assertEquals(Status.Code.UNIMPLEMENTED.value(),
        span.getAttributes().get(AttributeKey.longKey("rpc.grpc.status_code")));
    assertEquals(StatusCode.ERROR, span.getStatus().getStatusCode(), "a failed RPC's span is an error");
  }

  @Test
  void untracedClientSendsNoTraceContext() {
    try (CallQosClient c = CallQosClient.builder(recorderAddress()).principal("alice").build()) {
      assertThrows(CallQosException.class, () -> c.getCall("calls/x"));
    }
    assertEquals(1, recorded.size());
    assertEquals("alice", recorded.get(0).get(CallQosClient.PRINCIPAL_HEADER));
    assertNull(recorded.get(0).get(TRACEPARENT_HEADER));
  }

  @Test
  void configuredPropagatorsAreUsed() {
    OpenTelemetry withBaggage = OpenTelemetry.propagating(ContextPropagators.create(TextMapPropagator.composite(
        W3CTraceContextPropagator.getInstance(), W3CBaggagePropagator.getInstance())));
    try (CallQosClient c = CallQosClient.builder(recorderAddress()).openTelemetry(withBaggage).build()) {
      Scope scope = Baggage.builder().put("tenant", "acme").build().makeCurrent();
      try {
        assertThrows(CallQosException.class, () -> c.getCall("calls/x"));
      } finally {
        scope.close();
      }
    }
    assertEquals(1, recorded.size());
    assertEquals("tenant=acme", recorded.get(0).get(BAGGAGE_HEADER));
  }

  @Test
  void serverSpanJoinsClientTrace() {
    try (CallQosClient c = traced(server.address)) {
      Call call = c.createCall(needed(1000));
      SpanData span = finished("CreateCall");
      assertEquals(StatusCode.UNSET, span.getStatus().getStatusCode());
      // The server stamps each event with the trace id of the operation that caused it.
      assertEquals(span.getTraceId(), granted(c, call.getName()).getTraceId());
      c.dropCall(call.getName());
    }
  }

  @Test
  void clientSpanIsChildOfCurrentSpan() {
    try (CallQosClient c = traced(server.address)) {
      Span parent = otel.getTracer("app").spanBuilder("checkout").startSpan();
      Call call;
      Scope scope = parent.makeCurrent();
      try {
        call = c.createCall(needed(1000));
      } finally {
        scope.close();
        parent.end();
      }
      SpanData span = finished("CreateCall");
      assertEquals(parent.getSpanContext().getTraceId(), span.getTraceId());
      assertEquals(parent.getSpanContext().getSpanId(), span.getParentSpanId());
      // So the QoS events of the call trace back to the application's own operation.
      assertEquals(parent.getSpanContext().getTraceId(), granted(c, call.getName()).getTraceId());
      c.dropCall(call.getName());
    }
  }

  @Test
  void refusedCallIsAnErrorSpan() {
    try (CallQosClient c = traced(server.address)) {
      QosUnavailableException e = assertThrows(QosUnavailableException.class, () -> c.createCall(needed(2_500_000)));
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code());
    }
    assertEquals(StatusCode.ERROR, finished("CreateCall").getStatus().getStatusCode());
  }

  // Without OpenTelemetry on the classpath. The client's OpenTelemetry dependencies are optional,
  // so an application that does not trace runs without them: checked in a JVM whose classpath is
  // this one's less the io/opentelemetry jars.

  /** The test classpath (surefire runs tests from a manifest-only jar, and names it here). */
  private static List<String> testClasspath() {
    String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    return Arrays.asList(cp.split(File.pathSeparator));
  }

  private static String runJava(List<String> classpath, String mainClass, String arg)
      throws IOException, InterruptedException {
    String java = System.getProperty("java.home") + File.separator + "bin" + File.separator + "java";
    Process p = new ProcessBuilder(java, "-cp", String.join(File.pathSeparator, classpath), mainClass, arg)
        .redirectErrorStream(true).start();
    p.getOutputStream().close();
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertTrue(p.waitFor(60, TimeUnit.SECONDS), "the JVM did not end");
    assertEquals(0, p.exitValue(), out);
    return out;
  }

  @Test
  void untracedClientRunsWithoutOpenTelemetry() throws Exception {
    List<String> cp = testClasspath().stream()
        .filter(e -> !e.replace(File.separatorChar, '/').contains("/io/opentelemetry/")).collect(Collectors.toList());
    assertTrue(cp.size() < testClasspath().size(), "no OpenTelemetry jar on the test classpath " + testClasspath());
    String out = runJava(cp, "dev.callqos.client.examples.Quickstart", server.address);
    for (String want : List.of("refused: QOS_UNAVAILABLE", "connected:", "renegotiated: 500000",
        "QOS_EVENT_TYPE_CALL_DISCONNECTED")) {
      assertTrue(out.contains(want), "output lacks " + want + ":\n" + out);
    }
  }

  @Test
  void tracingWithoutTheInstrumentationJarSaysWhatIsMissing() throws Exception {
    List<String> cp = testClasspath().stream()
        .filter(e -> !e.contains("opentelemetry-grpc-1.6")).collect(Collectors.toList());
    String out = runJava(cp, TracingWithoutInstrumentation.class.getName(), server.address);
    assertTrue(out.startsWith("IllegalStateException: tracing needs io.opentelemetry.instrumentation:opentelemetry-grpc-1.6"),
        out);
  }

  /** Run in a JVM without opentelemetry-grpc-1.6: builds a traced client and prints why it can't. */
  static final class TracingWithoutInstrumentation {
    public static void main(String[] args) {
      try (CallQosClient c = CallQosClient.builder(args[0]).openTelemetry(OpenTelemetry.noop()).build()) {
        System.out.println("built a traced client: " + c);
      } catch (IllegalStateException e) {
        System.out.println("IllegalStateException: " + e.getMessage());
      }
    }
  }
}
