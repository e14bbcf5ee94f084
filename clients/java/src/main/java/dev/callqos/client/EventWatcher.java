package dev.callqos.client;

import dev.callqos.v1.CallQosServiceGrpc;
import dev.callqos.v1.QosEvent;
import dev.callqos.v1.WatchEventsRequest;
import dev.callqos.v1.WatchEventsResponse;
import io.grpc.Context;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.OptionalLong;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Follows WatchEvents across reconnects: it remembers the last sequence it delivered and, when
 * the stream breaks with UNAVAILABLE or ends, reopens it after that sequence, so nothing is lost
 * or repeated. Iterate it (blocking) and close it to stop. A watch begun without a cursor takes
 * the one the server sends in the {@code x-callqos-start-sequence} header, so it resumes without
 * loss even when the stream breaks before its first event.
 */
public final class EventWatcher implements Iterable<QosEvent>, Iterator<QosEvent>, AutoCloseable {
  /** The WatchEvents response header that holds the sequence the stream starts after. */
  public static final Metadata.Key<String> START_SEQUENCE_HEADER =
      Metadata.Key.of("x-callqos-start-sequence", Metadata.ASCII_STRING_MARSHALLER);

  private final CallQosServiceGrpc.CallQosServiceBlockingStub stub;
  private final WatchEventsRequest req;
  private int maxReconnects = 10;
  private Duration backoff = Duration.ofMillis(50);
  private volatile Long last;
  private final AtomicReference<Metadata> headers = new AtomicReference<>();
  private Context.CancellableContext context;
  private Iterator<WatchEventsResponse> stream;
  private QosEvent next;
  private volatile boolean closed;

  EventWatcher(CallQosServiceGrpc.CallQosServiceBlockingStub stub, WatchEventsRequest req) {
    this.stub = stub;
    this.req = req;
    this.last = req.hasAfterSequence() ? req.getAfterSequence() : null;
  }

  /** Reconnects in a row, with no event in between, before giving up (default 10). */
  public EventWatcher maxReconnects(int n) {
    this.maxReconnects = n;
    return this;
  }

  /** The first wait before reconnecting, doubled up to 2 s (default 50 ms). */
  public EventWatcher backoff(Duration d) {
    this.backoff = d;
    return this;
  }

  /** The sequence of the last event delivered (or the starting cursor). */
  public OptionalLong lastSequence() {
    adoptStartSequence();
    Long l = last;
    return l == null ? OptionalLong.empty() : OptionalLong.of(l);
  }

  /** Without a cursor yet, takes the start sequence from the stream's response headers. */
  private synchronized void adoptStartSequence() {
    Metadata md = headers.get();
    String start = md == null ? null : md.get(START_SEQUENCE_HEADER);
    if (last == null && start != null) {
      try {
        last = Long.parseUnsignedLong(start);
      } catch (NumberFormatException ignored) {
        // not a cursor: resume without one
      }
    }
  }

  @Override
  public Iterator<QosEvent> iterator() {
    return this;
  }

  /**
   * Blocks until the next event. False once closed. Throws {@link CallQosException} for a failure
   * that reconnecting cannot fix (e.g. CURSOR_EXPIRED) or after too many failed reconnects.
   */
  @Override
  public boolean hasNext() {
    int failures = 0;
    long wait = backoff.toMillis();
    while (next == null && !closed) {
      StatusRuntimeException failure = null;
      try {
        if (stream == null) {
          open();
        }
        boolean more = stream.hasNext();
        adoptStartSequence();
        if (more) {
          QosEvent ev = stream.next().getEvent();
          if (last == null || Long.compareUnsigned(ev.getSequence(), last) > 0) {
            last = ev.getSequence();
            next = ev;
          }
          continue;
        }
      } catch (StatusRuntimeException e) {
        failure = e;
      }
      adoptStartSequence();
      stopStream();
      if (closed) {
        break;
      }
      boolean reconnectable = failure == null || failure.getStatus().getCode() == Status.Code.UNAVAILABLE;
      if (!reconnectable || failures >= maxReconnects) {
        throw CallQosException.from(failure != null ? failure
            : Status.UNAVAILABLE.withDescription("event stream ended").asRuntimeException());
      }
      failures++;
      try {
        Thread.sleep(wait);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        close();
      }
      wait = Math.min(2 * wait, 2000);
    }
    return next != null;
  }

  @Override
  public QosEvent next() {
    if (!hasNext()) {
      throw new NoSuchElementException();
    }
    QosEvent ev = next;
    next = null;
    return ev;
  }

  /** Synchronized with close(), so that a close between two streams cancels the next one. */
  private synchronized void open() {
    WatchEventsRequest.Builder b = req.toBuilder();
    if (last != null) {
      b.setAfterSequence(last);
    }
    context = Context.current().withCancellation();
    if (closed) {
      context.cancel(null);
    }
    Context previous = context.attach();
    try {
      stream = stub.withInterceptors(MetadataUtils.newCaptureMetadataInterceptor(headers, new AtomicReference<>()))
          .watchEvents(b.build());
    } finally {
      context.detach(previous);
    }
  }

  private synchronized void stopStream() {
    if (context != null) {
      context.cancel(null);
    }
    context = null;
    stream = null;
  }

  /** Cancels the stream; iteration ends. Safe to call from another thread. */
  @Override
  public synchronized void close() {
    closed = true;
    if (context != null) {
      context.cancel(null);
    }
  }
}
