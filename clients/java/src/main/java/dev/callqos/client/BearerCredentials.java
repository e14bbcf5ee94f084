package dev.callqos.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import java.util.concurrent.Executor;

/**
 * Sends {@code authorization: Bearer <token>} with every RPC, the token asked of a {@link
 * TokenSource} each time — only over a connection with privacy and integrity (TLS), or when the
 * target is loopback.
 */
final class BearerCredentials extends CallCredentials {
  static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final TokenSource source;
  private final boolean loopback;

  BearerCredentials(TokenSource source, boolean loopback) {
    this.source = source;
    this.loopback = loopback;
  }

  @Override
  public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
    if (info.getSecurityLevel() != SecurityLevel.PRIVACY_AND_INTEGRITY && !loopback) {
      applier.fail(Status.UNAUTHENTICATED.withDescription("callqos: a bearer token is sent only over TLS"));
      return;
    }
    executor.execute(() -> {
      try {
        Metadata headers = new Metadata();
        headers.put(AUTHORIZATION, "Bearer " + source.token());
        applier.apply(headers);
      } catch (Exception e) {
        applier.fail(Status.UNAUTHENTICATED.withDescription("callqos: token source failed").withCause(e));
      }
    });
  }
}
