package dev.callqos.client;

import dev.callqos.v1.AnswerCallRequest;
import dev.callqos.v1.CreateCallRequest;
import dev.callqos.v1.CreateLineRequest;
import dev.callqos.v1.ExtendCallRequest;
import dev.callqos.v1.RejectCallRequest;
import dev.callqos.v1.RenegotiateCallRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.MethodDescriptor;
import java.util.UUID;

/**
 * Gives every CreateCall, RenegotiateCall, ExtendCall, CreateLine, AnswerCall and RejectCall a {@code
 * request_id} (AIP-155) when the caller set none, so that the channel's retry policy may repeat
 * them: a retry whose first attempt did reach the server gets that attempt's outcome back instead
 * of making a second call, renegotiating or answering twice. An interceptor runs above the channel's retries, so every attempt carries the same id.
 * The caller's message is not changed (messages are immutable); a copy is sent.
 */
final class RequestIds implements ClientInterceptor {
  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions options, Channel next) {
    return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
      @Override
      public void sendMessage(ReqT message) {
        super.sendMessage(withRequestId(message));
      }
    };
  }

  @SuppressWarnings("unchecked")
  static <T> T withRequestId(T message) {
    if (message instanceof CreateCallRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    if (message instanceof RenegotiateCallRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    if (message instanceof ExtendCallRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    if (message instanceof CreateLineRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    if (message instanceof AnswerCallRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    if (message instanceof RejectCallRequest r && r.getRequestId().isEmpty()) {
      return (T) r.toBuilder().setRequestId(UUID.randomUUID().toString()).build();
    }
    return message;
  }
}
