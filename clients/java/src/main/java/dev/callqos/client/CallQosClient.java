package dev.callqos.client;

import dev.callqos.v1.AnswerCallRequest;
import dev.callqos.v1.Call;
import dev.callqos.v1.CallQosServiceGrpc;
import dev.callqos.v1.CloseLineRequest;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.CreateLineRequest;
import dev.callqos.v1.DropCallRequest;
import dev.callqos.v1.ExtendCallRequest;
import dev.callqos.v1.GetCallRequest;
import dev.callqos.v1.GetLineRequest;
import dev.callqos.v1.Line;
import dev.callqos.v1.ListLinesRequest;
import dev.callqos.v1.ListLinesResponse;
import dev.callqos.v1.RejectCallRequest;
import dev.callqos.v1.ListCallsRequest;
import dev.callqos.v1.ListCallsResponse;
import dev.callqos.v1.ListProvidersRequest;
import dev.callqos.v1.ListProvidersResponse;
import dev.callqos.v1.RenegotiateCallRequest;
import dev.callqos.v1.WatchEventsRequest;
import io.grpc.ChannelCredentials;
import dev.callqos.v1.WatchEventsResponse;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.MetadataUtils;
import io.opentelemetry.api.OpenTelemetry;
import java.io.File;
import java.io.IOException;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Function;

/**
 * A small client for {@code callqos.v1.CallQosService}: a default deadline on unary calls, the
 * caller's principal on every request, errors decoded into {@link CallQosException} /
 * {@link QosUnavailableException}, the retry policy all callqos clients share (UNAVAILABLE
 * retried on the methods safe to repeat; every create and renegotiation carries a request_id),
 * and {@link #watch}, which resumes the event stream from the last sequence it delivered. {@link #raw()} is the generated blocking stub on the same channel.
 * {@link Builder#openTelemetry} turns on tracing (a client span per RPC, W3C trace context sent).
 *
 * <pre>{@code
 * try (CallQosClient client = CallQosClient.builder("127.0.0.1:50051").principal("me").build()) {
 *   Call call = client.createCall(CreateCallRequest.newBuilder().setCall(...).build());
 * }
 * }</pre>
 */
public final class CallQosClient implements AutoCloseable {
  /** The request metadata that names the caller; only a call's owner may change or drop it. */
  public static final Metadata.Key<String> PRINCIPAL_HEADER =
      Metadata.Key.of("x-callqos-principal", Metadata.ASCII_STRING_MARSHALLER);

  /** The deadline of a unary call when the builder sets none. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(10);

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final CallQosServiceGrpc.CallQosServiceBlockingStub stub;
  private final Duration timeout;

  private CallQosClient(Builder b) {
    // Before the channel, so that a missing tracing jar leaks nothing. Tracing is the only class
    // that names an OpenTelemetry class other than the builder's parameter type, and it is
    // loaded only here, so an untraced client works without OpenTelemetry on the classpath.
    ClientInterceptor tracing = null;
    if (b.openTelemetry != null) {
      try {
        tracing = Tracing.clientInterceptor(b.openTelemetry);
      } catch (NoClassDefFoundError e) {
        throw new IllegalStateException("tracing needs io.opentelemetry.instrumentation:opentelemetry-grpc-1.6 "
            + "on the classpath (an optional dependency of callqos-client; see its README, Tracing)", e);
      }
    }
    this.ownsChannel = b.channel == null;
    if (b.token != null && b.tls == null && b.channel == null && !isLoopback(b.target)) {
      throw new IllegalArgumentException(
          "a bearer token would cross the network to " + b.target + " in the clear: use tls(...)");
    }
    this.channel = ownsChannel
        ? Grpc.newChannelBuilder(b.target, b.tls != null ? b.tls : InsecureChannelCredentials.create())
            // The retry policy all four callqos clients share (clients/service_config.json).
            .defaultServiceConfig(Policy.serviceConfig())
            .enableRetry()
            .build()
        : b.channel;
    CallQosServiceGrpc.CallQosServiceBlockingStub s =
        CallQosServiceGrpc.newBlockingStub(channel).withInterceptors(new RequestIds());
    if (b.principal != null) {
      Metadata md = new Metadata();
      md.put(PRINCIPAL_HEADER, b.principal);
      s = s.withInterceptors(MetadataUtils.newAttachHeadersInterceptor(md));
    }
    if (b.token != null) {
      s = s.withCallCredentials(new BearerCredentials(b.token, isLoopback(b.target)));
    }
    if (tracing != null) {
      s = s.withInterceptors(tracing); // the outermost: its span covers the whole call, retries included
    }
    this.stub = s;
    this.timeout = b.timeout;
  }

  /** Whether {@code target} ("host:port", "dns:///host:port") stays on this machine. */
  static boolean isLoopback(String target) {
    String host = target.replaceFirst("^dns:///", "");
    int colon = host.lastIndexOf(':');
    if (colon > 0) {
      host = host.substring(0, colon);
    }
    host = host.replace("[", "").replace("]", "");
    return host.equals("localhost") || host.equals("::1") || host.startsWith("127.");
  }

  /**
   * TLS channel credentials trusting the CA certificates in {@code ca} (the system's when null),
   * presenting {@code cert} with its {@code key} (PKCS#8 PEM) when given: mTLS.
   */
  public static ChannelCredentials tlsCredentials(File ca, File cert, File key) throws IOException {
    TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
    if (ca != null) {
      tls.trustManager(ca);
    }
    if (cert != null || key != null) {
      if (cert == null || key == null) {
        throw new IllegalArgumentException("a client certificate needs its key, and a key its certificate");
      }
      tls.keyManager(cert, key);
    }
    return tls.build();
  }

  /** A builder for a channel to {@code target} ("host:port", "dns:///host:port"), plaintext unless {@link Builder#tls}. */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  public static final class Builder {
    private final String target;
    private ManagedChannel channel;
    private String principal;
    private Duration timeout = DEFAULT_TIMEOUT;
    private OpenTelemetry openTelemetry;
    private ChannelCredentials tls;
    private TokenSource token;

    private Builder(String target) {
      this.target = target;
    }

    /** Sent as x-callqos-principal on every request. */
    public Builder principal(String principal) {
      this.principal = principal;
      return this;
    }

    /** Connect over TLS with these credentials (see {@link CallQosClient#tlsCredentials}). */
    public Builder tls(ChannelCredentials credentials) {
      this.tls = credentials;
      return this;
    }

    /**
     * Send {@code authorization: Bearer <token>} with every RPC, asking {@code source} each time
     * (so it can refresh; {@link TokenSource#file} re-reads a rotated file). Only over TLS, or
     * to a loopback target.
     */
    public Builder token(TokenSource source) {
      this.token = source;
      return this;
    }

    /** Deadline for each unary call; null for none. */
    public Builder timeout(Duration timeout) {
      this.timeout = timeout;
      return this;
    }

    /**
     * Use this channel (TLS, interceptors, ...) instead of a plaintext one; not closed by close().
     * Its retry policy is its own: build it with {@code defaultServiceConfig} and {@code
     * enableRetry} to get the one the client's own channel has.
     */
    public Builder channel(ManagedChannel channel) {
      this.channel = channel;
      return this;
    }

    /**
     * Traces every RPC with this OpenTelemetry (e.g. an {@code OpenTelemetrySdk}, or
     * {@code GlobalOpenTelemetry.get()}): a CLIENT span named {@code callqos.v1.CallQosService/Method}
     * per call or stream, a child of the current span, whose context is sent to the server with the
     * OpenTelemetry's propagators, or as W3C {@code traceparent} if it has none. The server's span
     * joins that trace, and the QoS events it causes carry its trace id ({@code QosEvent.trace_id}).
     * Needs {@code io.opentelemetry.instrumentation:opentelemetry-grpc-1.6} on the classpath; null
     * (the default) traces nothing.
     */
    public Builder openTelemetry(OpenTelemetry openTelemetry) {
      this.openTelemetry = openTelemetry;
      return this;
    }

    public CallQosClient build() {
      return new CallQosClient(this);
    }
  }

  /**
   * The generated blocking stub, with the principal (and tracing, if set) and request_ids on
   * creates and renegotiations, but no default deadline.
   */
  public CallQosServiceGrpc.CallQosServiceBlockingStub raw() {
    return stub;
  }

  private <T> T unary(Function<CallQosServiceGrpc.CallQosServiceBlockingStub, T> rpc) {
    CallQosServiceGrpc.CallQosServiceBlockingStub s =
        timeout == null ? stub : stub.withDeadlineAfter(timeout.toNanos(), TimeUnit.NANOSECONDS);
    try {
      return rpc.apply(s);
    } catch (StatusRuntimeException e) {
      throw CallQosException.from(e);
    }
  }

  /**
   * Makes a call. A refused QoS at NEEDED throws {@link QosUnavailableException}. Without a
   * request_id, one is generated, so the call is retried safely on UNAVAILABLE.
   */
  public Call createCall(CreateCallRequest req) {
    return unary(s -> s.createCall(req));
  }

  /** Gets a call by name, {@code calls/{call}}. */
  public Call getCall(String name) {
    return unary(s -> s.getCall(GetCallRequest.newBuilder().setName(name).build()));
  }

  public ListCallsResponse listCalls(ListCallsRequest req) {
    return unary(s -> s.listCalls(req));
  }

  /** Changes a connected call's QoS; on {@link QosUnavailableException} the call keeps its QoS. */
  public Call renegotiateCall(RenegotiateCallRequest req) {
    return unary(s -> s.renegotiateCall(req));
  }

  /** Drops a call and releases what it reserved. */
  public Call dropCall(String name) {
    return unary(s -> s.dropCall(DropCallRequest.newBuilder().setName(name).build()));
  }

  /**
   * Renews a call's lease (owner only): it then ends the request's lease_duration (unset: the
   * call's own) after now. Too late throws {@link CallQosException} LEASE_EXPIRED (the call is
   * disconnected); a call without a lease, CALL_NOT_LEASED. Without a request_id, one is
   * generated, so a retried renewal extends once. See {@link #keepAlive}.
   */
  public Call extendCall(ExtendCallRequest req) {
    return unary(s -> s.extendCall(req));
  }

  /** Renews the lease of the call {@code name} to the call's own lease length from now. */
  public Call extendCall(String name) {
    return extendCall(ExtendCallRequest.newBuilder().setName(name).build());
  }

  /** An extension under its own deadline (the keep-alive's: no later than the lease's end). */
  Call extendCall(String name, Duration deadline) {
    try {
      return stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS)
          .extendCall(ExtendCallRequest.newBuilder().setName(name).build());
    } catch (StatusRuntimeException e) {
      throw CallQosException.from(e);
    }
  }

  /**
   * Keeps a leased call alive while the application holds it: renews its lease every third of it
   * until {@link KeepAlive#close()}, which then drops the call and throws {@link
   * LeaseLostException} if the lease was lost. Use it with try-with-resources.
   */
  public KeepAlive keepAlive(Call call) {
    return new KeepAlive(this, call, KeepAlive.options());
  }

  /** {@link #keepAlive(Call)} with options (interval, whether to drop, a listener). */
  public KeepAlive keepAlive(Call call, KeepAlive.Options options) {
    return new KeepAlive(this, call, options);
  }

  /**
   * Opens a line (lineOpen): calls made to its address are offered to this client's principal,
   * its owner. Throws {@link CallQosException} ADDRESS_IN_USE while another line is open for it.
   * Without a request_id, one is generated, so it is retried safely on UNAVAILABLE.
   */
  public Line createLine(CreateLineRequest req) {
    return unary(s -> s.createLine(req));
  }

  /** Gets a line by name, {@code lines/{line}}. */
  public Line getLine(String name) {
    return unary(s -> s.getLine(GetLineRequest.newBuilder().setName(name).build()));
  }

  /** One page of lines, newest first (filter on state, address, owner). */
  public ListLinesResponse listLines(ListLinesRequest req) {
    return unary(s -> s.listLines(req));
  }

  /** Closes a line (owner only): calls still ringing on it end NO_ANSWER. */
  public Line closeLine(String name) {
    return unary(s -> s.closeLine(CloseLineRequest.newBuilder().setName(name).build()));
  }

  /**
   * Answers an offered call (lineAnswer). The request's qos, in the answering call's own terms,
   * may only lower the offer; unset accepts it (a direction left out, or SERVICE_TYPE_NO_CHANGE,
   * keeps it as offered). At NEEDED an answer below the caller's request throws {@link QosUnavailableException}.
   */
  public Call answerCall(AnswerCallRequest req) {
    return unary(s -> s.answerCall(req));
  }

  /** Rejects an offered call: both ends disconnect REJECTED. */
  public Call rejectCall(String name) {
    return unary(s -> s.rejectCall(RejectCallRequest.newBuilder().setName(name).build()));
  }

  /**
   * The calls offered on {@code line}, each still OFFERING: those ringing now, then each new one.
   * Close it to stop.
   */
  public OfferWatcher offers(String line) {
    return new OfferWatcher(this, line, null);
  }

  /** The calls offered on {@code line} after event sequence {@code afterSequence} (a saved cursor). */
  public OfferWatcher offers(String line, long afterSequence) {
    return new OfferWatcher(this, line, afterSequence);
  }

  /** Where a watch of {@code req} "from now" starts: its x-callqos-start-sequence header. */
  long startSequence(WatchEventsRequest req) {
    CompletableFuture<Metadata> headers = new CompletableFuture<>();
    ClientCall<WatchEventsRequest, WatchEventsResponse> call = stub.getChannel()
        .newCall(CallQosServiceGrpc.getWatchEventsMethod(), stub.getCallOptions());
    call.start(new ClientCall.Listener<>() {
      @Override
      public void onHeaders(Metadata received) {
        headers.complete(received);
      }

      @Override
      public void onClose(Status status, Metadata trailers) {
        headers.completeExceptionally(status.asRuntimeException(trailers));
      }
    }, new Metadata());
    call.sendMessage(req);
    call.halfClose();
    try {
      Duration wait = timeout == null ? DEFAULT_TIMEOUT : timeout;
      String start = headers.get(wait.toNanos(), TimeUnit.NANOSECONDS).get(EventWatcher.START_SEQUENCE_HEADER);
      if (start == null) {
        throw CallQosException.from(
            Status.UNAVAILABLE.withDescription("the server sent no x-callqos-start-sequence").asRuntimeException());
      }
      return Long.parseUnsignedLong(start);
    } catch (ExecutionException e) {
      throw e.getCause() instanceof StatusRuntimeException s ? CallQosException.from(s) : new IllegalStateException(e);
    } catch (TimeoutException e) {
      throw CallQosException.from(Status.DEADLINE_EXCEEDED.withCause(e).asRuntimeException());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw CallQosException.from(Status.CANCELLED.withCause(e).asRuntimeException());
    } finally {
      call.cancel("read the start sequence", null);
    }
  }

  public ListProvidersResponse listProviders(ListProvidersRequest req) {
    return unary(s -> s.listProviders(req));
  }

  /**
   * The events matching {@code req}, in sequence order, each once; the stream is reopened after
   * the last delivered sequence when it breaks with UNAVAILABLE or ends. Close the watcher (or
   * use try-with-resources) to stop.
   */
  public EventWatcher watch(WatchEventsRequest req) {
    return new EventWatcher(stub, req);
  }

  @Override
  public void close() {
    if (ownsChannel) {
      channel.shutdownNow();
      try {
        channel.awaitTermination(5, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }
}
