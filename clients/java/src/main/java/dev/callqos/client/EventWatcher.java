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
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.OptionalLong;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Follows WatchEvents across reconnects: it remembers the last sequence it delivered and, when
 * the stream breaks with a resumable code (UNAVAILABLE, CANCELLED) or ends, reopens it after that
 * sequence, so nothing is lost or repeated, following the {@link ResumePolicy} all callqos clients
 * share. Iterate it (blocking) and close it to stop. A watch begun without a cursor takes the one
 * the server sends in the {@code x-callqos-start-sequence} header, so it resumes without loss even
 * when the stream breaks before its first event.
 */
public final class EventWatcher implements Iterable<QosEvent>, Iterator<QosEvent>, AutoCloseable {
  /** The WatchEvents response header that holds the sequence the stream starts after. */
  public static final Metadata.Key<String> START_SEQUENCE_HEADER =
      Metadata.Key.of("x-callqos-start-sequence", Metadata.ASCII_STRING_MARSHALLER);

  private final CallQosServiceGrpc.CallQosServiceBlockingStub stub;
  private final WatchEventsRequest req;
  private ResumePolicy resume = ResumePolicy.defaults();
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

  /** Follow this resume rule instead of {@link ResumePolicy#defaults()}. Call before iterating. */
  public EventWatcher resume(ResumePolicy policy) {
    this.resume = policy;
    return this;
  }

  /** The resume rule this watcher follows. */
  public ResumePolicy resume() {
    return resume;
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
   * that reconnecting cannot fix (e.g. CURSOR_EXPIRED), or with the last failure once failures
   * have gone on for the resume policy's {@code giveUpAfter}.
   */
  @Override
  public boolean hasNext() {
    long bound = resume.initialBackoff().toNanos();
    long failingSince = 0;
    boolean failing = false;
    while (next == null && !closed) {
      StatusRuntimeException failure;
      long opened = System.nanoTime();
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
        // A watch never ends by itself: the server went away. Resumed as UNAVAILABLE is.
        failure = Status.UNAVAILABLE.withDescription("the server ended the watch stream").asRuntimeException();
      } catch (StatusRuntimeException e) {
        failure = e;
      }
      adoptStartSequence();
      stopStream();
      if (closed) {
        break;
      }
      if (!resume.resumableCodes().contains(failure.getStatus().getCode())) {
        throw CallQosException.from(failure);
      }
      long now = System.nanoTime();
      if (now - opened >= resume.healthyAfter().toNanos()) {
        failing = false;
        bound = resume.initialBackoff().toNanos();
      }
      if (!failing) {
        failing = true;
        failingSince = now;
      }
      if (!resume.giveUpAfter().isZero() && now - failingSince > resume.giveUpAfter().toNanos()) {
        throw CallQosException.from(failure);
      }
      // Full jitter keeps a crowd of watchers from reconnecting in lockstep.
      long wait = (long) (ThreadLocalRandom.current().nextDouble() * bound);
      bound = Math.min((long) (bound * resume.multiplier()), resume.maxBackoff().toNanos());
      try {
        TimeUnit.NANOSECONDS.sleep(wait);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        close();
      }
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
