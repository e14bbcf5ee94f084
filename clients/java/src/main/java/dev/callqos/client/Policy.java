package dev.callqos.client;

import com.google.gson.Gson;
import com.google.gson.reflect.TypeToken;
import io.grpc.Status;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.io.UncheckedIOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Collectors;

/**
 * The retry and resume policy all four callqos clients share: {@code clients/service_config.json},
 * which the build copies onto the classpath as {@value #RESOURCE} (clients/README.md explains each
 * choice). Its {@code serviceConfig} part is a gRPC service config, handed to
 * {@code ManagedChannelBuilder.defaultServiceConfig} as it is; its {@code watchResume} part is the
 * {@link ResumePolicy} of {@link EventWatcher}, which gRPC never sees.
 */
final class Policy {
  static final String RESOURCE = "/dev/callqos/client/service_config.json";

  private static final Map<String, ?> FILE = load();

  private Policy() {}

  /** The whole file, as gRPC's service config parser wants it: maps, lists, strings, doubles. */
  static Map<String, ?> file() {
    return FILE;
  }

  /** The gRPC service config: which methods are retried, how often, on which codes. */
  @SuppressWarnings("unchecked")
  static Map<String, ?> serviceConfig() {
    return (Map<String, ?>) FILE.get("serviceConfig");
  }

  /** The watchResume part as a ResumePolicy. */
  @SuppressWarnings("unchecked")
  static ResumePolicy watchResume() {
    Map<String, ?> r = (Map<String, ?>) FILE.get("watchResume");
    Set<Status.Code> codes = ((List<String>) r.get("resumableStatusCodes")).stream()
        .map(Status.Code::valueOf)
        .collect(Collectors.toUnmodifiableSet());
    return new ResumePolicy(
        duration((String) r.get("initialBackoff")),
        duration((String) r.get("maxBackoff")),
        (Double) r.get("backoffMultiplier"),
        duration((String) r.get("healthyAfter")),
        duration((String) r.get("giveUpAfter")),
        codes);
  }

  /** A protobuf JSON duration ("0.1s", "60s"), as service configs write them. */
  static Duration duration(String text) {
    if (!text.endsWith("s")) {
      throw new IllegalStateException("service_config.json: not a duration: " + text);
    }
    BigDecimal nanos = new BigDecimal(text.substring(0, text.length() - 1)).movePointRight(9);
    return Duration.ofNanos(nanos.longValueExact());
  }

  private static Map<String, ?> load() {
    try (InputStream in = Policy.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new IllegalStateException(RESOURCE + " is not on the classpath");
      }
      try (Reader reader = new InputStreamReader(in, StandardCharsets.UTF_8)) {
        // Gson reads every JSON number as a Double, which is what gRPC's parser expects.
        return new Gson().fromJson(reader, new TypeToken<Map<String, Object>>() {}.getType());
      }
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
