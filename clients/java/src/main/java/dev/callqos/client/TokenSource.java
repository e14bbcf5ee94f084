package dev.callqos.client;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;

/**
 * The bearer token to send now. It is asked before every RPC, so an implementation can refresh
 * the token whenever it likes; {@link #fixed} and {@link #file} are the simple ones.
 */
@FunctionalInterface
public interface TokenSource {
  /** The current token (without "Bearer "). */
  String token() throws IOException;

  /** Always {@code token}. */
  static TokenSource fixed(String token) {
    return () -> token;
  }

  /**
   * The token in {@code path}, read again whenever the file changes (its modification time, size
   * or file key), as a rotated Kubernetes projected service-account token does.
   */
  static TokenSource file(Path path) {
    return new TokenSource() {
      private Object seen;
      private String token;

      @Override
      public synchronized String token() throws IOException {
        BasicFileAttributes attributes = Files.readAttributes(path, BasicFileAttributes.class);
        String signature = attributes.lastModifiedTime() + ":" + attributes.size() + ":" + attributes.fileKey();
        if (!signature.equals(seen)) {
          token = new String(Files.readAllBytes(path), StandardCharsets.UTF_8).strip();
          seen = signature;
        }
        return token;
      }
    };
  }

  /** {@link #token()} with the checked exception unchecked. */
  default String current() {
    try {
      return token();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
