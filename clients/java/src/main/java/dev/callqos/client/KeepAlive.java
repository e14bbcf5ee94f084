package dev.callqos.client;

import dev.callqos.v1.Call;
import io.grpc.Status;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * Keeps a leased call alive while the application holds it:
 *
 * <pre>{@code
 * try (KeepAlive lease = client.keepAlive(call)) {
 *   while (!lease.isLost()) { ... }   // the call's lease is renewed every third of it meanwhile
 * }                                    // the call is dropped; a lost lease throws LeaseLostException here
 * }</pre>
 *
 * <p>It renews from a thread of its own every third of the lease (so two renewals in a row may fail
 * and be retried before the lease ends), stops on {@link #close()}, then drops the call unless
 * {@link Options#drop(boolean) drop(false)}. A lost lease shows as {@link #isLost()}, {@link
 * #lost()} (a future completed with the {@link LeaseLostException}), the {@link
 * Options#onLost(Consumer) onLost} listener, and {@link #close()} throwing it. Whether the lease has
 * ended without a renewal getting through is judged by the local monotonic clock, from when the
 * last successful renewal was sent.
 */
public final class KeepAlive implements AutoCloseable {
  private static final Duration MIN_INTERVAL = Duration.ofMillis(50);

  /** How a keep-alive behaves; {@link #options()} gives the defaults. */
  public static final class Options {
    private Duration interval;
    private boolean drop = true;
    private Consumer<LeaseLostException> onLost = lost -> {};

    private Options() {}

    /** Renew this often instead of every third of the lease. */
    public Options interval(Duration interval) {
      this.interval = interval;
      return this;
    }

    /** Whether close() drops the call (default true); false leaves it to run out its lease. */
    public Options drop(boolean drop) {
      this.drop = drop;
      return this;
    }

    /** Told once, from the keep-alive's thread, when the lease is lost. */
    public Options onLost(Consumer<LeaseLostException> listener) {
      this.onLost = listener;
      return this;
    }
  }

  /** The default options. */
  public static Options options() {
    return new Options();
  }

  private final CallQosClient client;
  private final String name;
  private final Duration interval;
  private final Options options;
  private final ScheduledExecutorService timer;
  private final CompletableFuture<LeaseLostException> lost = new CompletableFuture<>();
  private volatile Call call;
  private volatile int renewals;
  private volatile long deadlineNanos; // System.nanoTime() by which the lease has surely ended
  private boolean closed;

  KeepAlive(CallQosClient client, Call call, Options options) {
    if (!call.hasLeaseDuration()) {
      throw new IllegalArgumentException(call.getName() + " has no lease to keep alive (set lease_duration)");
    }
    this.client = client;
    this.call = call;
    this.name = call.getName();
    this.options = options;
    Duration lease = lease(call);
    Duration chosen = options.interval != null ? options.interval : lease.dividedBy(3);
    this.interval = chosen.compareTo(MIN_INTERVAL) < 0 ? MIN_INTERVAL : chosen;
    long expiresMillis = call.getLeaseExpireTime().getSeconds() * 1000 + call.getLeaseExpireTime().getNanos() / 1_000_000;
    long remaining = Math.min(Math.max(expiresMillis - System.currentTimeMillis(), 0), lease.toMillis());
    this.deadlineNanos = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(remaining);
    this.timer = Executors.newSingleThreadScheduledExecutor(runnable -> {
      Thread thread = new Thread(runnable, "callqos keep-alive " + name);
      thread.setDaemon(true);
      return thread;
    });
    timer.schedule(this::renew, interval.toNanos(), TimeUnit.NANOSECONDS);
  }

  private static Duration lease(Call call) {
    return Duration.ofSeconds(call.getLeaseDuration().getSeconds(), call.getLeaseDuration().getNanos());
  }

  private void renew() {
    long sent = System.nanoTime();
    long budget = Math.max(deadlineNanos - sent, MIN_INTERVAL.toNanos());
    try {
      Call renewed = client.extendCall(name, Duration.ofNanos(budget));
      call = renewed;
      renewals++;
      deadlineNanos = sent + lease(renewed).toNanos();
      timer.schedule(this::renew, interval.toNanos(), TimeUnit.NANOSECONDS);
    } catch (CallQosException e) {
      if (timer.isShutdown()) {
        return; // closed meanwhile
      }
      Status.Code code = e.code();
      if (code != Status.Code.UNAVAILABLE && code != Status.Code.DEADLINE_EXCEEDED) {
        lose("the lease could not be renewed", e);
        return;
      }
      long remaining = deadlineNanos - System.nanoTime();
      if (remaining <= 0) {
        lose("no renewal got through before the lease ended", e);
        return;
      }
      long pause = Math.max(MIN_INTERVAL.toNanos(), Math.min(interval.toNanos(), remaining / 4));
      timer.schedule(this::renew, pause, TimeUnit.NANOSECONDS);
    } catch (java.util.concurrent.RejectedExecutionException e) {
      // closed while renewing
    }
  }

  private void lose(String why, Throwable cause) {
    if (lost.isDone()) {
      return;
    }
    LeaseLostException error = new LeaseLostException(name, why, cause);
    try {
      options.onLost.accept(error); // first, so that whoever waits on lost() finds it told
    } finally {
      lost.complete(error);
    }
  }

  /** Whether the lease was lost. */
  public boolean isLost() {
    return lost.isDone();
  }

  /** Completed with the {@link LeaseLostException} when the lease is lost (never otherwise). */
  public CompletableFuture<LeaseLostException> lost() {
    return lost;
  }

  /** The call as the last renewal returned it. */
  public Call call() {
    return call;
  }

  /** How many renewals succeeded. */
  public int renewals() {
    return renewals;
  }

  /**
   * Stops renewing and drops the call (unless {@code drop(false)}; a drop that fails is ignored:
   * the call ends with its lease anyway). Throws the {@link LeaseLostException} if the lease was
   * lost. Closing again does nothing more.
   */
  @Override
  public synchronized void close() {
    if (!closed) {
      closed = true;
      timer.shutdownNow();
      try {
        timer.awaitTermination(5, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
      if (options.drop) {
        try {
          call = client.dropCall(name);
        } catch (CallQosException ignored) {
          // unreachable now: the call ends with its lease anyway
        }
      }
    }
    LeaseLostException error = lost.getNow(null);
    if (error != null) {
      throw error;
    }
  }
}
