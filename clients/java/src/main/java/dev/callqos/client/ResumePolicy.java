package dev.callqos.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Set;

/**
 * How an {@link EventWatcher} reopens a broken WatchEvents stream. All four callqos clients follow
 * the same rule, whose defaults ({@link #defaults()}) are the {@code watchResume} part of
 * {@code clients/service_config.json}: reopen after a failure with one of {@code resumableCodes},
 * or when the server ends the stream, after the last sequence delivered; wait a full-jitter
 * exponential backoff between attempts (uniformly random below a bound that starts at
 * {@code initialBackoff} and is multiplied by {@code multiplier} after each failure, up to
 * {@code maxBackoff}); give up with the last error once failures have gone on for
 * {@code giveUpAfter} ({@link Duration#ZERO}: never). A stream that stayed open
 * {@code healthyAfter} before failing counts as having worked (a quiet stream delivers no event to
 * prove it), so the backoff starts afresh. Any other error ends the watch at once.
 */
public record ResumePolicy(
    Duration initialBackoff,
    Duration maxBackoff,
    double multiplier,
    Duration healthyAfter,
    Duration giveUpAfter,
    Set<Status.Code> resumableCodes) {

  public ResumePolicy {
    resumableCodes = Set.copyOf(resumableCodes);
  }

  /** The rule in clients/service_config.json. */
  public static ResumePolicy defaults() {
    return Policy.watchResume();
  }

  /** This policy, giving up after {@code d} of continuous failure instead. */
  public ResumePolicy withGiveUpAfter(Duration d) {
    return new ResumePolicy(initialBackoff, maxBackoff, multiplier, healthyAfter, d, resumableCodes);
  }

  /** This policy, with waits of at most {@code d}. */
  public ResumePolicy withMaxBackoff(Duration d) {
    return new ResumePolicy(initialBackoff, d, multiplier, healthyAfter, giveUpAfter, resumableCodes);
  }
}
