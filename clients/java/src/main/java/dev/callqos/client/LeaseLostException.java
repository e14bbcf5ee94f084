package dev.callqos.client;

/**
 * A kept-alive call lost its lease: the server said LEASE_EXPIRED, the call ended otherwise, or no
 * renewal got through before the lease ended. {@link #getCause()} is the error that showed it
 * (usually a {@link CallQosException}).
 */
public final class LeaseLostException extends RuntimeException {
  private final String call;

  LeaseLostException(String call, String why, Throwable cause) {
    super(call + " lost its lease: " + why + ": " + cause.getMessage(), cause);
    this.call = call;
  }

  /** The call, {@code calls/{call}}. */
  public String call() {
    return call;
  }
}
