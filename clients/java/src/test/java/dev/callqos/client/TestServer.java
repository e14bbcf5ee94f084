package dev.callqos.client;

import com.google.gson.JsonParser;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * A real callqos server on a free loopback port: {@code callqos serve --listen 127.0.0.1:0
 * --port-file F --storage memory}. The program is $CALLQOS_BIN (the pom sets it to
 * ../../.venv/bin/callqos); $CALLQOS_TARGET uses a running server instead.
 */
final class TestServer implements AutoCloseable {
  final String address;
  /**
   * For {@link #startSecure}: the files made for it by the server's test kit (ca, client_cert,
   * client_key, alice_token, bob_token; tokens of tenant acme). Empty otherwise.
   */
  final Map<String, String> files;
  private final Process process;
  private final Path dir;

  private TestServer(String address, Process process, Path dir, Map<String, String> files) {
    this.address = address;
    this.process = process;
    this.dir = dir;
    this.files = files;
  }

  private static String binary() {
    String bin = System.getenv().getOrDefault("CALLQOS_BIN", "../../.venv/bin/callqos");
    if (!Files.isExecutable(Path.of(bin))) {
      throw new IllegalStateException("no " + bin + ": run `make venv` at the top, or set CALLQOS_BIN or CALLQOS_TARGET");
    }
    return bin;
  }

  static TestServer start() throws IOException, InterruptedException {
    String addr = System.getenv(Targets.TARGET_ENV);
    if (addr != null && !addr.isEmpty()) {
      return new TestServer(addr, null, null, Map.of());
    }
    return start(binary(), Files.createTempDirectory("callqos-java-test-"), Map.of(), "--storage", "memory");
  }

  /**
   * A server requiring mTLS and accepting bearer tokens, with a CA, certificates, a JWKS and
   * tokens made by the server's own test kit ({@code python -m callqos.server.testpki}).
   */
  static TestServer startSecure() throws IOException, InterruptedException {
    String bin = binary();
    Path dir = Files.createTempDirectory("callqos-java-tls-test-");
    Path python = Path.of(bin).resolveSibling("python");
    Process made = new ProcessBuilder(python.toString(), "-m", "callqos.server.testpki", dir.resolve("pki").toString())
        .redirectError(ProcessBuilder.Redirect.INHERIT).start();
    String json = new String(made.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    if (made.waitFor() != 0) {
      throw new IllegalStateException("making the test PKI failed");
    }
    Map<String, String> files = new HashMap<>();
    JsonParser.parseString(json).getAsJsonObject().entrySet()
        .forEach(e -> files.put(e.getKey(), e.getValue().getAsString()));
    return start(bin, dir, files, "--config", files.get("config"));
  }

  private static TestServer start(String bin, Path dir, Map<String, String> files, String... args)
      throws IOException, InterruptedException {
    Path portFile = dir.resolve("port");
    List<String> command = new ArrayList<>(
        List.of(bin, "serve", "--listen", "127.0.0.1:0", "--port-file", portFile.toString()));
    command.addAll(List.of(args));
    ProcessBuilder builder = new ProcessBuilder(command).inheritIO();
    // The server reads only what it is given: no CALLQOS_* of the caller's shell.
    builder.environment().keySet().removeIf(key -> key.startsWith("CALLQOS_"));
    Process p = builder.start();
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
    while (System.nanoTime() < deadline) {
      if (!p.isAlive()) {
        throw new IllegalStateException("callqos serve exited (" + p.exitValue() + ") before serving");
      }
      if (Files.exists(portFile)) {
        String port = Files.readString(portFile).trim();
        if (!port.isEmpty()) {
          return new TestServer("127.0.0.1:" + port, p, dir, files);
        }
      }
      Thread.sleep(50);
    }
    p.destroyForcibly();
    throw new IllegalStateException("callqos serve wrote no port file within 30s");
  }

  /** SIGTERM, then SIGKILL after 10 s. */
  @Override
  public void close() throws IOException {
    if (process == null) {
      return;
    }
    process.destroy();
    try {
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        process.destroyForcibly().waitFor();
        throw new IllegalStateException("callqos serve did not stop within 10s of SIGTERM");
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      process.destroyForcibly();
    }
    try (var paths = Files.walk(dir)) {
      for (Path f : (Iterable<Path>) paths.sorted(Comparator.reverseOrder())::iterator) {
        Files.delete(f);
      }
    }
  }
}
