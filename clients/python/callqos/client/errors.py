"""Typed exceptions for every error the callqos service returns.

There is exactly one mapping from a failed RPC to an exception class, in the style of
python-api-core's ``exceptions.py``: each code-level class declares the gRPC status code it stands
for, and each specific one the ``google.rpc.ErrorInfo.reason`` (domain ``callqos.dev``) it stands
for. A reason's code is not written here: it is the ``(grpc_code)`` option on that reason in
``errors.proto`` (``callqos.wire.STATUS_CODES_BY_REASON``), and defining a reason class under the
class of another code, or for a reason errors.proto does not have, fails at import. Subclasses
register themselves when they are defined, so the table below *is* the class hierarchy.

Lookup order in :func:`from_grpc_error`:

1. ``(code, reason)`` when the ErrorInfo domain is ``callqos.dev``;
2. the class for the code alone (an unknown or foreign reason falls back here);
3. :class:`CallQosError` itself.

Status details are read from the ``grpc-status-details-bin`` trailer (a ``google.rpc.Status``, see
:func:`rich_status`) and unpacked into their message types (``ErrorInfo``, ``BadRequest``,
``callqos.v1.QosRefusal``, ``RetryInfo``, ...).

.. code-block:: python

    try:
        client.make_call("sip:bob@example.com", sending=controlled_load(900_000))
    except QosUnavailableError as exc:
        client.make_call("sip:bob@example.com", qos=exc.counter_offer)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2

from callqos import wire
from callqos.v1 import call_pb2, flowspec_pb2

from . import _policy

__all__ = [
    "DOMAIN",
    "AbortedError",
    "AddressInUseError",
    "AlreadyExistsError",
    "CallAlreadyExistsError",
    "CallNotConnectedError",
    "CallNotFoundError",
    "CallNotLeasedError",
    "CallNotOfferingError",
    "CallQosError",
    "ClientError",
    "CredentialsRefusedError",
    "CursorExpiredError",
    "CursorUnknownError",
    "DataLossError",
    "DeadlineExceededError",
    "EtagMismatchError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidRequestError",
    "LeaseExpiredError",
    "LineAlreadyExistsError",
    "LineNotFoundError",
    "LinkAdminUnsupportedError",
    "LinkNotFoundError",
    "MissingPermissionError",
    "NotFoundError",
    "NotOwnerError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ProviderContractViolationError",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "QosPolicyFailureError",
    "QosRefusedError",
    "QosUnavailableError",
    "QuotaExceededError",
    "RenegotiationUnsupportedError",
    "RequestCancelledError",
    "RequestIdReusedError",
    "ResourceExhaustedError",
    "ServerBugError",
    "ServerError",
    "ShuttingDownError",
    "StorageUnavailableError",
    "TooManyWatchersError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownError",
    "UnsupportedError",
    "WatcherTooSlowError",
    "exception_class_for",
    "from_grpc_error",
    "is_retryable",
]

#: The ErrorInfo domain of every error callqos itself raises.
DOMAIN = wire.ERROR_DOMAIN

# Filled by CallQosError.__init_subclass__: the first class to claim a key wins, so a
# subclass of a code-level class does not steal the code-level fallback.
_BY_CODE: dict[grpc.StatusCode, type[CallQosError]] = {}
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[CallQosError]] = {}

# Detail types we know how to unpack; anything else stays a google.protobuf.Any.
_DETAIL_TYPES: dict[str, type[ProtoMessage]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.RequestInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
        call_pb2.QosRefusal,
    )
}


class CallQosError(Exception):
    """Base class of every error a callqos RPC raises.

    Attributes are read from the gRPC status and its ``google.rpc.ErrorInfo`` detail.
    """

    #: The gRPC status code this class stands for (class level; the instance's actual code is
    #: in :attr:`code`, which differs only for the fallback base class).
    grpc_code: ClassVar[grpc.StatusCode | None] = None
    #: The ErrorInfo reason this class stands for, or None for a code-level class.
    error_reason: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reason = cls.__dict__.get("error_reason")
        if reason is not None:
            cls.grpc_code = _code_of_reason(cls, reason)
            _BY_REASON.setdefault((cls.grpc_code, reason), cls)
        elif "grpc_code" in cls.__dict__ and cls.grpc_code is not None:
            _BY_CODE.setdefault(cls.grpc_code, cls)
        # A class that declares neither (a mixin like QosRefusedError) registers nothing.

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[ProtoMessage] = (),
        status: status_pb2.Status | None = None,
        response: grpc.RpcError | None = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: grpc.StatusCode = code or type(self).grpc_code or grpc.StatusCode.UNKNOWN
        #: The unpacked ``google.rpc.Status.details`` (unknown types stay ``Any``).
        self.details: list[ProtoMessage] = list(details)
        #: The whole rich status, if the server sent one.
        self.status: status_pb2.Status | None = status
        #: The underlying ``grpc.RpcError`` (``grpc.aio.AioRpcError`` for the async client).
        self.response: grpc.RpcError | None = response
        self.error_info: error_details_pb2.ErrorInfo | None = self._find(error_details_pb2.ErrorInfo)

    def _find(self, kind: type[Any]) -> Any:
        """The first detail of this type (AIP-193: each type appears at most once)."""
        for detail in self.details:
            if isinstance(detail, kind):
                return detail
        return None

    @property
    def reason(self) -> str:
        """``ErrorInfo.reason`` (e.g. ``"QOS_UNAVAILABLE"``), or ``""`` when there is none."""
        return self.error_info.reason if self.error_info else ""

    @property
    def domain(self) -> str:
        """``ErrorInfo.domain``; ``"callqos.dev"`` for errors the service raised itself."""
        return self.error_info.domain if self.error_info else ""

    @property
    def metadata(self) -> Mapping[str, str]:
        """``ErrorInfo.metadata``: the context the server attached (call, provider, ...)."""
        return dict(self.error_info.metadata) if self.error_info else {}

    @property
    def retry_delay(self) -> float | None:
        """``RetryInfo.retry_delay`` in seconds, when the server suggested one."""
        info = self._find(error_details_pb2.RetryInfo)
        if info is None or not info.HasField("retry_delay"):
            return None
        seconds: float = info.retry_delay.ToTimedelta().total_seconds()
        return seconds

    def __str__(self) -> str:
        label = self.reason or self.code.name
        return f"{label}: {self.message}" if self.message else label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


def _code_of_reason(cls: type[CallQosError], reason: str) -> grpc.StatusCode:
    """The code errors.proto gives `reason`, which must be the code of the class's parents."""
    code = wire.STATUS_CODES_BY_REASON.get(reason)
    if code is None:
        raise TypeError(f"{cls.__name__}: {reason!r} is not an ErrorReason in callqos/v1/errors.proto")
    inherited = cls.grpc_code
    if inherited is not None and inherited != code:
        raise TypeError(
            f"{cls.__name__} derives from the {inherited.name} class, but errors.proto sends {reason} with {code.name}"
        )
    return code


class ClientError(CallQosError):
    """The request cannot succeed as sent (4xx-like codes)."""


class ServerError(CallQosError):
    """The server or a provider failed (5xx-like codes); the request may succeed later."""


# --- INVALID_ARGUMENT -------------------------------------------------------------------------


class InvalidArgumentError(ClientError):
    """INVALID_ARGUMENT."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[error_details_pb2.BadRequest.FieldViolation]:
        """The ``google.rpc.BadRequest`` field violations, one per bad field."""
        bad = self._find(error_details_pb2.BadRequest)
        return list(bad.field_violations) if bad else []

    @property
    def bad_fields(self) -> list[str]:
        """Just the field paths of :attr:`field_violations`."""
        return [violation.field for violation in self.field_violations]


class InvalidRequestError(InvalidArgumentError):
    """The request is malformed; nothing was stored or reserved."""

    error_reason = "INVALID_REQUEST"


class RequestIdReusedError(InvalidArgumentError):
    """The request_id was already used for a different request."""

    error_reason = "REQUEST_ID_REUSED"


# --- NOT_FOUND / ALREADY_EXISTS ---------------------------------------------------------------


class NotFoundError(ClientError):
    """NOT_FOUND."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class CallNotFoundError(NotFoundError):
    error_reason = "CALL_NOT_FOUND"


class ProviderNotFoundError(NotFoundError):
    error_reason = "PROVIDER_NOT_FOUND"


class LinkNotFoundError(NotFoundError):
    error_reason = "LINK_NOT_FOUND"


class LineNotFoundError(NotFoundError):
    error_reason = "LINE_NOT_FOUND"


class AlreadyExistsError(ClientError):
    """ALREADY_EXISTS."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class CallAlreadyExistsError(AlreadyExistsError):
    error_reason = "CALL_ALREADY_EXISTS"


class LineAlreadyExistsError(AlreadyExistsError):
    error_reason = "LINE_ALREADY_EXISTS"


class AddressInUseError(AlreadyExistsError):
    """Another line is open for the address (its name is in ``metadata["line"]``)."""

    error_reason = "ADDRESS_IN_USE"


# --- FAILED_PRECONDITION / PERMISSION_DENIED / ABORTED ----------------------------------------


class FailedPreconditionError(ClientError):
    """FAILED_PRECONDITION."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class CallNotConnectedError(FailedPreconditionError):
    """The call is disconnected, so it cannot be renegotiated (LINEERR_INVALCALLSTATE)."""

    error_reason = "CALL_NOT_CONNECTED"


class CallNotOfferingError(FailedPreconditionError):
    """The call is not an incoming call that is offering: it cannot be answered or rejected."""

    error_reason = "CALL_NOT_OFFERING"


class LeaseExpiredError(FailedPreconditionError):
    """The call's lease ended before the extension arrived: the call is disconnected
    LEASE_EXPIRED and what it reserved released (``metadata["lease_expire_time"]``)."""

    error_reason = "LEASE_EXPIRED"


class CallNotLeasedError(FailedPreconditionError):
    """The call has no lease to extend: made without one, or the answering leg of a call between
    two applications, whose lease is its caller's (``metadata["peer"]``)."""

    error_reason = "CALL_NOT_LEASED"


class PermissionDeniedError(ClientError):
    """PERMISSION_DENIED."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class MissingPermissionError(PermissionDeniedError):
    """None of the caller's roles grants the permission the method needs
    (``metadata["permission"]``)."""

    error_reason = "PERMISSION_DENIED"


class NotOwnerError(PermissionDeniedError):
    """Only the call's owner may change or drop it (LINEERR_NOTOWNER)."""

    error_reason = "NOT_OWNER"


class AbortedError(ClientError):
    """ABORTED."""

    grpc_code = grpc.StatusCode.ABORTED


class EtagMismatchError(AbortedError):
    """The call changed since its etag was read: read it again and retry."""

    error_reason = "ETAG_MISMATCH"


# --- QoS refusals -----------------------------------------------------------------------------


class QosRefusedError(CallQosError):
    """The provider refused the requested QoS; see :attr:`counter_offer`.

    Raised (as one of its subclasses) by ``make_call`` at level NEEDED, where the call is recorded
    DISCONNECTED, and by ``renegotiate``, where the call keeps its previous QoS.
    """

    @property
    def refusal(self) -> call_pb2.QosRefusal | None:
        """The ``callqos.v1.QosRefusal`` detail."""
        refusal: call_pb2.QosRefusal | None = self._find(call_pb2.QosRefusal)
        return refusal

    @property
    def counter_offer(self) -> flowspec_pb2.QosSpec | None:
        """The best QoS the provider could grant now; retrying with it should succeed."""
        refusal = self.refusal
        if refusal is None or not refusal.HasField("counter_offer"):
            return None
        return refusal.counter_offer

    @property
    def call(self) -> str:
        """``calls/{call}``: the refused call (disconnected after a refused create)."""
        refusal = self.refusal
        if refusal is not None and refusal.call:
            return refusal.call
        return self.metadata.get("call", "")


class ResourceExhaustedError(ClientError):
    """RESOURCE_EXHAUSTED."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QosUnavailableError(QosRefusedError, ResourceExhaustedError):
    """Admission failure: not enough capacity now (LINEERR_RESOURCEUNAVAIL)."""

    error_reason = "QOS_UNAVAILABLE"


class QosPolicyFailureError(QosRefusedError, PermissionDeniedError):
    """The provider refuses the QoS by policy (WSA_QOS_POLICY_FAILURE)."""

    error_reason = "QOS_POLICY_FAILURE"


class TooManyWatchersError(ResourceExhaustedError):
    error_reason = "TOO_MANY_WATCHERS"


class QuotaExceededError(ResourceExhaustedError):
    """A quota of the caller's tenant (active calls, reserved bytes/s) or of the caller (open
    watch streams) would be exceeded; nothing changed. :attr:`quota_failure` names it."""

    error_reason = "QUOTA_EXCEEDED"

    @property
    def quota_failure(self) -> error_details_pb2.QuotaFailure | None:
        found: error_details_pb2.QuotaFailure | None = self._find(error_details_pb2.QuotaFailure)
        return found


# --- UNIMPLEMENTED ----------------------------------------------------------------------------


class UnsupportedError(ClientError):
    """UNIMPLEMENTED: the provider (or server) does not offer this operation."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class RenegotiationUnsupportedError(UnsupportedError):
    """The call's provider cannot renegotiate (LINEERR_OPERATIONUNAVAIL)."""

    error_reason = "RENEGOTIATION_UNSUPPORTED"


class LinkAdminUnsupportedError(UnsupportedError):
    error_reason = "LINK_ADMIN_UNSUPPORTED"


# --- OUT_OF_RANGE (watch cursors) -------------------------------------------------------------


class OutOfRangeError(ClientError):
    """OUT_OF_RANGE."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class CursorExpiredError(OutOfRangeError):
    """The resume cursor is older than the retained events: some events are gone."""

    error_reason = "CURSOR_EXPIRED"


class CursorUnknownError(OutOfRangeError):
    """The resume cursor is beyond the newest event the server ever stored."""

    error_reason = "CURSOR_UNKNOWN"


# --- the remaining codes ----------------------------------------------------------------------


class UnauthenticatedError(ClientError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class CredentialsRefusedError(UnauthenticatedError):
    """The server accepted no credential of the request (none sent, or a bad, expired or
    foreign token or certificate); ``metadata["cause"]`` says why."""

    error_reason = "UNAUTHENTICATED"


class RequestCancelledError(ClientError):
    """CANCELLED (the RPC was cancelled, usually by the client)."""

    grpc_code = grpc.StatusCode.CANCELLED


class DeadlineExceededError(ServerError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(ServerError):
    """UNAVAILABLE: transient; idempotent requests are retried by the channel."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class ProviderUnavailableError(UnavailableError):
    """The provider failed or did not answer in time; nothing changed."""

    error_reason = "PROVIDER_UNAVAILABLE"


class ShuttingDownError(UnavailableError):
    """The server is shutting down; reconnect (watchers resume from their cursor)."""

    error_reason = "SHUTTING_DOWN"


class WatcherTooSlowError(UnavailableError):
    """The server cut a watch stream that read nothing while events piled up behind it; a
    ``watch()`` resumes from its cursor by itself."""

    error_reason = "WATCHER_TOO_SLOW"


class StorageUnavailableError(UnavailableError):
    """The server could not read or record what the request needs (its disk is full, its storage
    failed or cannot be reached; ErrorInfo metadata ``cause`` says which); nothing changed. Retry
    later."""

    error_reason = "STORAGE_UNAVAILABLE"


class InternalError(ServerError):
    grpc_code = grpc.StatusCode.INTERNAL


class ProviderContractViolationError(InternalError):
    """The provider answered something that breaks its contract; nothing changed."""

    error_reason = "PROVIDER_CONTRACT_VIOLATION"


class ServerBugError(InternalError):
    """A server bug; the request may or may not have taken effect. Report it."""

    error_reason = "INTERNAL"


class UnknownError(ServerError):
    grpc_code = grpc.StatusCode.UNKNOWN


class DataLossError(ServerError):
    grpc_code = grpc.StatusCode.DATA_LOSS


# ----------------------------------------------------------------------------------------------


def _unpack(detail: any_pb2.Any) -> ProtoMessage:
    kind = _DETAIL_TYPES.get(detail.TypeName())
    if kind is None:
        return detail
    unpacked = kind()
    if not detail.Unpack(unpacked):  # pragma: no cover - TypeName matched, so this cannot fail
        return detail
    return unpacked


#: The trailer a gRPC server puts its google.rpc.Status in (what grpcio-status's from_call reads;
#: parsed here so that the client needs no more than grpcio, protobuf and googleapis-common-protos).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def rich_status(rpc_error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed RPC carries in its trailers, or None.

    None too when the trailer does not decode, or its code or message disagree with the status
    line (as grpcio-status would refuse it): trust the status line and go without details rather
    than raise again. Works for ``grpc.RpcError`` (a ``grpc.Call``) and ``grpc.aio.AioRpcError``
    alike: both expose code(), details() and trailing_metadata() once the RPC has failed.
    """
    try:
        trailers = rpc_error.trailing_metadata() or ()
        code: grpc.StatusCode = rpc_error.code()
        message = rpc_error.details()
    except AttributeError:  # not a call at all
        return None
    for key, value in trailers:
        if key != STATUS_DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except (DecodeError, TypeError):
            return None
        if status.code != code.value[0] or status.message != (message or ""):
            return None
        return status
    return None


def exception_class_for(code: grpc.StatusCode, reason: str = "", domain: str = DOMAIN) -> type[CallQosError]:
    """The exception class for a status code and ErrorInfo reason (the one mapping)."""
    if reason and domain == DOMAIN:
        specific = _BY_REASON.get((code, reason))
        if specific is not None:
            return specific
    return _BY_CODE.get(code, CallQosError)


def from_grpc_error(rpc_error: grpc.RpcError) -> CallQosError:
    """Build the typed exception for a failed RPC (sync or aio)."""
    code_fn = getattr(rpc_error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(rpc_error, "details", None)
    text = (details_fn() if callable(details_fn) else None) or ""
    status = rich_status(rpc_error)
    details = [_unpack(d) for d in status.details] if status is not None else []
    info = next((d for d in details if isinstance(d, error_details_pb2.ErrorInfo)), None)
    cls = exception_class_for(code, info.reason if info else "", info.domain if info else "")
    return cls(text, code=code, details=details, status=status, response=rpc_error)


#: Codes after which repeating the same request may succeed and cannot do harm twice (for
#: idempotent requests): the ones the shared retry policy (service_config.json) retries on.
_TRANSIENT_CODES = _policy.retryable_codes()


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which an idempotent request (or a watch) may be tried again."""
    return isinstance(exc, CallQosError) and exc.code in _TRANSIENT_CODES
