package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Map;
import org.junit.jupiter.api.Test;

/** The address convention: the same table as the Python client's test of callqos.wire. */
class TargetsTest {
  @Test
  void defaultTargetFollowsTheAddressConvention() {
    Object[][] cases = {
      {Map.of(), "127.0.0.1:50051"},
      {Map.of("CALLQOS_TARGET", "10.0.0.1:7000"), "10.0.0.1:7000"},
      {Map.of("CALLQOS_TARGET", "10.0.0.1:7000", "CALLQOS_LISTEN", "127.0.0.1:6000"), "10.0.0.1:7000"},
      {Map.of("CALLQOS_LISTEN", "127.0.0.1:6000"), "127.0.0.1:6000"},
      {Map.of("CALLQOS_LISTEN", "0.0.0.0:6000"), "127.0.0.1:6000"},
      {Map.of("CALLQOS_LISTEN", "[::]:6000"), "[::1]:6000"},
      {Map.of("CALLQOS_LISTEN", "[::1]:6000"), "[::1]:6000"},
      {Map.of("CALLQOS_LISTEN", "server.example:6000"), "server.example:6000"},
      {Map.of("CALLQOS_TARGET", " ", "CALLQOS_LISTEN", "127.0.0.1:6000"), "127.0.0.1:6000"},
    };
    for (Object[] c : cases) {
      @SuppressWarnings("unchecked")
      Map<String, String> env = (Map<String, String>) c[0];
      assertEquals(c[1], Targets.defaultTarget(env::get), env.toString());
    }
  }
}
