package dev.callqos.client;

import java.util.Map;
import java.util.function.Function;

/**
 * The address convention, shared by the server, the CLI, every client, their tests and the
 * examples ({@code callqos.wire} in the Python distribution is its home): the server listens on
 * {@code CALLQOS_LISTEN}; a client connects to {@code CALLQOS_TARGET}, else to the address in
 * {@code CALLQOS_LISTEN} (a wildcard host read as loopback), else to {@link #DEFAULT_ADDRESS}.
 */
public final class Targets {
  /** Where a client connects. */
  public static final String TARGET_ENV = "CALLQOS_TARGET";
  /** Where the server listens; clients fall back to it. */
  public static final String LISTEN_ENV = "CALLQOS_LISTEN";
  /** Where the server listens and clients connect when told nothing else. */
  public static final String DEFAULT_ADDRESS = "127.0.0.1:50051";

  private static final Map<String, String> WILDCARD_HOSTS =
      Map.of("", "127.0.0.1", "0.0.0.0", "127.0.0.1", "[::]", "[::1]", "::", "[::1]");

  private Targets() {}

  /** The target of the address convention, from the process environment. */
  public static String defaultTarget() {
    return defaultTarget(System::getenv);
  }

  /** The target of the address convention, from {@code env}. */
  public static String defaultTarget(Function<String, String> env) {
    String target = env.apply(TARGET_ENV);
    if (target != null && !target.isBlank()) {
      return target.strip();
    }
    String listen = env.apply(LISTEN_ENV);
    if (listen != null && !listen.isBlank()) {
      listen = listen.strip();
      int colon = listen.lastIndexOf(':');
      if (colon >= 0) {
        String host = listen.substring(0, colon);
        return WILDCARD_HOSTS.getOrDefault(host, host) + listen.substring(colon);
      }
    }
    return DEFAULT_ADDRESS;
  }
}
