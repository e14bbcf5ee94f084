"""The error mapping: unit checks against errors.proto, then typed errors from the real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from callqos import wire
from callqos.client import (
    CallNotConnectedError,
    CallNotFoundError,
    CallQosError,
    Client,
    EtagMismatchError,
    InvalidRequestError,
    NotFoundError,
    NotOwnerError,
    QosRefusedError,
    QosUnavailableError,
    best_effort,
    controlled_load,
    errors,
    flowspec,
    qos,
)
from callqos.v1 import call_pb2, errors_pb2

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# The option's extension handle (the generated .pyi types it as a plain FieldDescriptor).
GRPC_CODE: Any = errors_pb2.grpc_code


class FakeRpcError(grpc.RpcError):
    """What a failed RPC looks like to the client: code, message, rich-status trailer."""

    def __init__(self, status: status_pb2.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return _CODES[self._status.code]

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def _status(code: grpc.StatusCode, reason: str, *extra: object, domain: str = "callqos.dev") -> status_pb2.Status:
    details = []
    for message in (
        error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata={"call": "calls/x"}),
        *extra,
    ):
        packed = any_pb2.Any()
        packed.Pack(message)  # type: ignore[arg-type]
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message="refused", details=details)


def _reasons() -> list[tuple[str, grpc.StatusCode]]:
    """(reason, gRPC code) for every ErrorReason, read from its (grpc_code) option in errors.proto."""
    found = []
    for value in errors_pb2.ErrorReason.DESCRIPTOR.values:
        if value.number == 0:
            continue
        options = value.GetOptions()
        assert options.HasExtension(GRPC_CODE), f"{value.name} has no (callqos.v1.grpc_code) option in errors.proto"
        code = _CODES[options.Extensions[GRPC_CODE]]
        found.append((value.name.removeprefix("ERROR_REASON_"), code))
    return found


@pytest.mark.parametrize("reason,code", _reasons())
def test_every_reason_in_errors_proto_has_its_own_class(reason: str, code: grpc.StatusCode) -> None:
    cls = errors.exception_class_for(code, reason)
    assert cls.error_reason == reason, f"no exception class for {reason}"
    assert cls.grpc_code == code
    assert wire.STATUS_CODES_BY_REASON[reason] == code


def test_a_reason_class_under_the_wrong_code_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match=r"errors\.proto sends CALL_NOT_FOUND with NOT_FOUND"):

        class Misplaced(errors.AbortedError):
            error_reason = "CALL_NOT_FOUND"

    with pytest.raises(TypeError, match="not an ErrorReason"):

        class Invented(errors.NotFoundError):
            error_reason = "NO_SUCH_REASON"


def test_refusal_details_are_unpacked() -> None:
    offer = qos(controlled_load(400_000), best_effort())
    refusal = call_pb2.QosRefusal(call="calls/x", counter_offer=offer, detail="link full")
    exc = errors.from_grpc_error(FakeRpcError(_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "QOS_UNAVAILABLE", refusal)))
    assert type(exc) is QosUnavailableError
    assert isinstance(exc, QosRefusedError) and isinstance(exc, errors.ResourceExhaustedError)
    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (exc.reason, exc.domain, exc.metadata) == (
        "QOS_UNAVAILABLE",
        wire.ERROR_DOMAIN,
        {"call": "calls/x"},
    )
    assert exc.counter_offer == offer
    assert exc.call == "calls/x"
    assert exc.message == "refused"
    assert "QOS_UNAVAILABLE" in str(exc)


def test_unknown_reason_and_foreign_domain_fall_back_by_code() -> None:
    unknown = errors.from_grpc_error(FakeRpcError(_status(grpc.StatusCode.NOT_FOUND, "SOMETHING_NEW")))
    assert type(unknown) is NotFoundError and unknown.reason == "SOMETHING_NEW"
    foreign = errors.from_grpc_error(
        FakeRpcError(_status(grpc.StatusCode.NOT_FOUND, "CALL_NOT_FOUND", domain="example.com"))
    )
    assert type(foreign) is NotFoundError


def test_bad_request_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="call.destination", description="empty")]
    )
    exc = errors.from_grpc_error(FakeRpcError(_status(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", bad)))
    assert type(exc) is InvalidRequestError
    assert exc.bad_fields == ["call.destination"]


def test_error_without_details_maps_by_code() -> None:
    class Bare(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

        def trailing_metadata(self) -> None:
            return None

    exc = errors.from_grpc_error(Bare())
    assert type(exc) is errors.UnavailableError
    assert exc.reason == "" and exc.details == []
    assert errors.is_retryable(exc)


# --- against the real server ------------------------------------------------------------------


def test_refusal_exposes_counter_offer_and_retrying_with_it_succeeds(
    client: Client, free_sending: Callable[[Client], int]
) -> None:
    free = free_sending(client)
    with pytest.raises(QosUnavailableError) as refused:
        client.make_call("sip:too-much@example.com", sending=controlled_load(free + 100_000), level="needed")
    exc = refused.value
    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.reason == "QOS_UNAVAILABLE"
    assert exc.domain == "callqos.dev"
    assert exc.call.startswith("calls/")
    offer = exc.counter_offer
    assert offer is not None
    assert offer.sending.token_rate_bytes_per_second <= free
    # The refused call is recorded as disconnected with reason QOS_UNAVAILABLE.
    failed = client.get_call(exc.call)
    assert failed.state == call_pb2.Call.STATE_DISCONNECTED
    assert failed.disconnect_reason == call_pb2.DISCONNECT_REASON_QOS_UNAVAILABLE
    # Nothing stayed reserved, so the counter-offer is admitted.
    assert free_sending(client) == free
    call = client.make_call("sip:too-much@example.com", qos=offer, level="needed")
    try:
        assert call.state == call_pb2.Call.STATE_CONNECTED
        assert call.granted_qos.sending.token_rate_bytes_per_second == offer.sending.token_rate_bytes_per_second
    finally:
        client.drop(call.name)


def test_invalid_request_names_each_bad_field(client: Client) -> None:
    bad_sending = flowspec("controlled-load", token_rate=1000, peak=10)  # peak < token rate
    bad_receiving = flowspec("network-unavailable")  # a notification, not a request
    with pytest.raises(InvalidRequestError) as invalid:
        client.make_call("sip:bad@example.com", sending=bad_sending, receiving=bad_receiving)
    exc = invalid.value
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.reason == "INVALID_REQUEST"
    fields = " ".join(exc.bad_fields)
    assert "sending" in fields and "receiving" in fields, exc.bad_fields
    assert all(v.description for v in exc.field_violations)


def test_only_the_owner_may_renegotiate_or_drop(server, client: Client) -> None:  # type: ignore[no-untyped-def]
    call = client.make_call("sip:owned@example.com", sending=controlled_load(1_000))
    try:
        with Client(server.target, principal="mallory") as other:
            with pytest.raises(NotOwnerError) as denied:
                other.drop(call.name)
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(NotOwnerError):
                other.renegotiate(call.name, sending=controlled_load(2_000))
            # Reading is not owner-only.
            assert other.get_call(call.name).state == call_pb2.Call.STATE_CONNECTED
    finally:
        client.drop(call.name)


def test_etag_mismatch(client: Client) -> None:
    call = client.make_call("sip:etag@example.com", sending=controlled_load(1_000))
    try:
        changed = client.renegotiate(call.name, sending=controlled_load(2_000), etag=call.etag)
        assert changed.etag != call.etag
        with pytest.raises(EtagMismatchError) as stale:
            client.renegotiate(call.name, sending=controlled_load(3_000), etag=call.etag)
        assert stale.value.code == grpc.StatusCode.ABORTED
        assert client.get_call(call.name).granted_qos == changed.granted_qos
        with pytest.raises(EtagMismatchError):
            client.drop(call.name, etag=call.etag)
    finally:
        client.drop(call.name)


def test_not_found_and_not_connected(client: Client) -> None:
    with pytest.raises(CallNotFoundError) as missing:
        client.get_call(f"calls/nope-{uuid.uuid4().hex[:8]}")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    call = client.make_call("sip:gone@example.com")
    client.drop(call.name)
    with pytest.raises(CallNotConnectedError) as disconnected:
        client.renegotiate(call.name, sending=controlled_load(1_000))
    assert disconnected.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(disconnected.value, CallQosError)
