package dev.callqos.client;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/**
 * A real callqos server on a free loopback port: {@code callqos serve --listen 127.0.0.1:0
 * --port-file F --storage memory}. The program is $CALLQOS_BIN (the pom sets it to
 * ../../.venv/bin/callqos); $CALLQOS_TARGET uses a running server instead.
 */
final class TestServer implements AutoCloseable {
  final String address;
  private final Process process;
  private final Path dir;

  private TestServer(String address, Process process, Path dir) {
    this.address = address;
    this.process = process;
    this.dir = dir;
  }

  static TestServer start() throws IOException, InterruptedException {
    String addr = System.getenv(Targets.TARGET_ENV);
    if (addr != null && !addr.isEmpty()) {
      return new TestServer(addr, null, null);
    }
    String bin = System.getenv().getOrDefault("CALLQOS_BIN", "../../.venv/bin/callqos");
    if (!Files.isExecutable(Path.of(bin))) {
      throw new IllegalStateException("no " + bin + ": run `make venv` at the top, or set CALLQOS_BIN or CALLQOS_TARGET");
    }
    Path dir = Files.createTempDirectory("callqos-java-test-");
    Path portFile = dir.resolve("port");
    ProcessBuilder builder = new ProcessBuilder(bin, "serve", "--listen", "127.0.0.1:0", "--port-file",
        portFile.toString(), "--storage", "memory").inheritIO();
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
          return new TestServer("127.0.0.1:" + port, p, dir);
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
    try (var files = Files.list(dir)) {
      for (Path f : (Iterable<Path>) files::iterator) {
        Files.delete(f);
      }
    }
    Files.delete(dir);
  }
}
