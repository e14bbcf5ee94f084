package dev.callqos.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import dev.callqos.v1.ErrorReason;
import dev.callqos.v1.ErrorsProto;
import dev.callqos.v1.GrpcCode;
import dev.callqos.v1.QosRefusal;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.Optional;
import java.util.Set;

/**
 * A failed RPC, with its {@code google.rpc.Status} details decoded: the {@link ErrorInfo} whose
 * reason a caller branches on (domain {@value #DOMAIN}), {@link BadRequest} for invalid requests,
 * and {@link QosRefusal} for refused QoS (thrown as {@link QosUnavailableException}).
 */
public class CallQosException extends RuntimeException {
  /** The ErrorInfo domain of every callqos error. */
  public static final String DOMAIN = "callqos.dev";

  private static final Set<String> REFUSALS =
      Set.of(reason(ErrorReason.ERROR_REASON_QOS_UNAVAILABLE), reason(ErrorReason.ERROR_REASON_QOS_POLICY_FAILURE));

  private final Status status;
  private final ErrorInfo info;
  private final BadRequest badRequest;
  private final QosRefusal refusal;

  CallQosException(StatusRuntimeException cause, Details details) {
    super(cause.getMessage(), cause);
    this.status = cause.getStatus();
    this.info = details.info;
    this.badRequest = details.badRequest;
    this.refusal = details.refusal;
  }

  /** The ErrorInfo.reason string of an ErrorReason, e.g. "QOS_UNAVAILABLE". */
  public static String reason(ErrorReason reason) {
    return reason.name().substring("ERROR_REASON_".length());
  }

  /**
   * The gRPC code the server always sends with {@code reason}: the {@code (grpc_code)} option on
   * it in errors.proto, read from the generated descriptor. UNKNOWN for a value without the option
   * (ERROR_REASON_UNSPECIFIED, or UNRECOGNIZED).
   */
  public static Status.Code codeOf(ErrorReason reason) {
    if (reason == ErrorReason.UNRECOGNIZED) {
      return Status.Code.UNKNOWN;
    }
    GrpcCode code = reason.getValueDescriptor().getOptions().getExtension(ErrorsProto.grpcCode);
    return code == GrpcCode.GRPC_CODE_UNSPECIFIED || code == GrpcCode.UNRECOGNIZED
        ? Status.Code.UNKNOWN
        : Status.fromCodeValue(code.getNumber()).getCode();
  }

  /** Decodes a gRPC failure into a CallQosException or QosUnavailableException. */
  public static CallQosException from(StatusRuntimeException e) {
    Details d = new Details(e);
    return d.info != null && REFUSALS.contains(d.info.getReason())
        ? new QosUnavailableException(e, d)
        : new CallQosException(e, d);
  }

  /** The gRPC status (code and message). */
  public Status status() {
    return status;
  }

  public Status.Code code() {
    return status.getCode();
  }

  /** ErrorInfo.reason, e.g. "NOT_OWNER"; "" when the server sent no ErrorInfo. */
  public String reason() {
    return info == null ? "" : info.getReason();
  }

  public Optional<ErrorInfo> errorInfo() {
    return Optional.ofNullable(info);
  }

  /** For INVALID_REQUEST: the invalid fields. */
  public Optional<BadRequest> badRequest() {
    return Optional.ofNullable(badRequest);
  }

  /** For refusals: the refused call and the counter-offer. */
  public Optional<QosRefusal> refusal() {
    return Optional.ofNullable(refusal);
  }

  /** The details unpacked from the grpc-status-details-bin trailer. */
  static final class Details {
    ErrorInfo info;
    BadRequest badRequest;
    QosRefusal refusal;

    Details(StatusRuntimeException e) {
      com.google.rpc.Status st = StatusProto.fromThrowable(e);
      if (st == null) {
        return;
      }
      for (Any any : st.getDetailsList()) {
        try {
          if (any.is(ErrorInfo.class)) {
            info = any.unpack(ErrorInfo.class);
          } else if (any.is(BadRequest.class)) {
            badRequest = any.unpack(BadRequest.class);
          } else if (any.is(QosRefusal.class)) {
            refusal = any.unpack(QosRefusal.class);
          }
        } catch (InvalidProtocolBufferException ignored) {
          // A detail that does not parse is left out; the status itself still stands.
        }
      }
    }
  }
}
