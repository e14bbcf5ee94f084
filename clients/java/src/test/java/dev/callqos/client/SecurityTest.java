package dev.callqos.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.callqos.v1.Call;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.ErrorReason;
import io.grpc.ChannelCredentials;
import io.grpc.Status;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The client over mTLS with bearer tokens, against a server that requires both. */
class SecurityTest {
  private static TestServer server;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.startSecure();
  }

  @AfterAll
  static void stop() throws Exception {
    server.close();
  }

  private static ChannelCredentials mtls() throws Exception {
    return CallQosClient.tlsCredentials(file("ca"), file("client_cert"), file("client_key"));
  }

  private static File file(String name) {
    return new File(server.files.get(name));
  }

  private static final CreateCallRequest REQUEST = CreateCallRequest.newBuilder()
      .setCall(Call.newBuilder().setDestination("sip:bob@example.com").setRequestedQos(Qos.controlledLoad(1000)))
      .build();

  @Test
  void mtlsWithATokenFromARotatedFile() throws Exception {
    Path token = Files.createTempFile("callqos-token", "");
    Files.copy(file("alice_token").toPath(), token, StandardCopyOption.REPLACE_EXISTING);
    try (CallQosClient client = CallQosClient.builder(server.address).tls(mtls()).token(TokenSource.file(token)).build()) {
      Call call = client.createCall(REQUEST);
      assertEquals("alice", call.getOwner());
      assertEquals("acme", call.getTenant());
      Files.copy(file("bob_token").toPath(), token, StandardCopyOption.REPLACE_EXISTING); // renewed
      CallQosException e = assertThrows(CallQosException.class, () -> client.dropCall(call.getName()));
      assertEquals(Status.Code.PERMISSION_DENIED, e.code());
      assertEquals("NOT_OWNER", e.reason());
    } finally {
      Files.deleteIfExists(token);
    }
  }

  @Test
  void theCertificateAloneNamesTheCallerAndABadTokenIsUnauthenticated() throws Exception {
    try (CallQosClient byCert = CallQosClient.builder(server.address).tls(mtls()).build()) {
      assertEquals("spiffe://callqos.test/client", byCert.createCall(REQUEST).getOwner());
    }
    try (CallQosClient bad = CallQosClient.builder(server.address).tls(mtls()).token(TokenSource.fixed("x")).build()) {
      CallQosException e = assertThrows(CallQosException.class, () -> bad.createCall(REQUEST));
      assertEquals(Status.Code.UNAUTHENTICATED, e.code());
      assertEquals(CallQosException.reason(ErrorReason.ERROR_REASON_UNAUTHENTICATED), e.reason());
    }
  }

  @Test
  void withoutAClientCertificateTheHandshakeFails() throws Exception {
    ChannelCredentials serverOnly = CallQosClient.tlsCredentials(file("ca"), null, null);
    try (CallQosClient client = CallQosClient.builder(server.address).tls(serverOnly)
        .timeout(Duration.ofSeconds(3)).build()) {
      CallQosException e = assertThrows(CallQosException.class, () -> client.createCall(REQUEST));
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    }
  }

  @Test
  void aTokenNeverGoesInTheClearBeyondLoopback() {
    assertThrows(IllegalArgumentException.class,
        () -> CallQosClient.builder("callqos.example.com:50051").token(TokenSource.fixed("t")).build());
  }
}
