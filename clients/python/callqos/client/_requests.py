"""Request messages built from the client's keyword arguments (shared by sync and async)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from google.protobuf import duration_pb2, field_mask_pb2

from callqos.v1 import call_pb2, callqos_service_pb2, event_pb2, flowspec_pb2, line_pb2, provider_pb2

from . import specs


def call_name(name: str) -> str:
    """``abc`` or ``calls/abc`` -> ``calls/abc``."""
    return name if name.startswith("calls/") else f"calls/{name}"


def line_name(name: str) -> str:
    """``bob`` or ``lines/bob`` -> ``lines/bob``."""
    return name if name.startswith("lines/") else f"lines/{name}"


def provider_name(name: str) -> str:
    """``reference`` or ``providers/reference`` -> ``providers/reference``."""
    return name if name.startswith("providers/") else f"providers/{name}"


def new_request_id() -> str:
    """A fresh AIP-155 request_id (UUID4), so that a retried create or renegotiate is safe."""
    return str(uuid.uuid4())


def _qos(
    qos: flowspec_pb2.QosSpec | None,
    sending: flowspec_pb2.FlowSpec | None,
    receiving: flowspec_pb2.FlowSpec | None,
) -> flowspec_pb2.QosSpec:
    """The QoS to send. A direction not given is left out: the server reads an absent direction
    as best effort in a new call and as "keep it" in a renegotiation (SPEC.md FLOW-20)."""
    if qos is not None:
        if sending is not None or receiving is not None:
            raise TypeError("pass either qos= or sending=/receiving=, not both")
        return qos
    result = flowspec_pb2.QosSpec()
    if sending is not None:
        result.sending.CopyFrom(sending)
    if receiving is not None:
        result.receiving.CopyFrom(receiving)
    return result


def create_call(
    destination: str,
    *,
    qos: flowspec_pb2.QosSpec | None,
    sending: flowspec_pb2.FlowSpec | None,
    receiving: flowspec_pb2.FlowSpec | None,
    level: specs.EnumLike | None,
    provider: str | None,
    call_id: str | None,
    request_id: str | None,
    lease: float | None = None,
) -> callqos_service_pb2.CreateCallRequest:
    call = call_pb2.Call(
        destination=destination,
        provider=provider_name(provider) if provider else "",
        requested_qos=_qos(qos, sending, receiving),
    )
    if level is not None:
        call.service_level = specs.parse_service_level(level)  # type: ignore[assignment]
    if lease is not None:
        call.lease_duration.CopyFrom(duration(lease))
    return callqos_service_pb2.CreateCallRequest(
        call=call, call_id=call_id or "", request_id=request_id or new_request_id()
    )


def renegotiate_call(
    name: str,
    *,
    qos: flowspec_pb2.QosSpec | None,
    sending: flowspec_pb2.FlowSpec | None,
    receiving: flowspec_pb2.FlowSpec | None,
    level: specs.EnumLike | None,
    etag: str | None,
    request_id: str | None,
) -> callqos_service_pb2.RenegotiateCallRequest:
    # A direction the caller leaves out is kept as it is (the server reads it as NO_CHANGE).
    request = callqos_service_pb2.RenegotiateCallRequest(
        name=call_name(name),
        qos=_qos(qos, sending, receiving),
        etag=etag or "",
        request_id=request_id or new_request_id(),
    )
    if level is not None:
        request.service_level = specs.parse_service_level(level)  # type: ignore[assignment]
    return request


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a protobuf Duration."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def extend_call(
    name: str, *, lease: float | None, etag: str | None, request_id: str | None
) -> callqos_service_pb2.ExtendCallRequest:
    """An extension: the lease renewed to ``lease`` seconds from now (None: the call's own length)."""
    request = callqos_service_pb2.ExtendCallRequest(
        name=call_name(name), etag=etag or "", request_id=request_id or new_request_id()
    )
    if lease is not None:
        request.lease_duration.CopyFrom(duration(lease))
    return request


def calls_filter(state: specs.EnumLike | None, provider: str | None, line: str | None = None) -> str:
    """The AIP-160 subset ListCalls understands: ``state = X AND provider = "providers/y" AND
    line = "lines/z"``."""
    terms = []
    if state is not None:
        number = specs.parse_call_state(state)
        terms.append("state = " + call_pb2.Call.State.Name(number).removeprefix("STATE_"))
    if provider:
        terms.append(f'provider = "{provider_name(provider)}"')
    if line:
        terms.append(f'line = "{line_name(line)}"')
    return " AND ".join(terms)


def lines_filter(state: specs.EnumLike | None, address: str | None, owner: str | None) -> str:
    """The AIP-160 subset ListLines understands: ``state = OPEN AND address = "..." AND owner = "..."``."""
    terms = []
    if state is not None:
        number = specs.parse_line_state(state)
        terms.append("state = " + line_pb2.Line.State.Name(number).removeprefix("STATE_"))
    if address:
        terms.append(f'address = "{address}"')
    if owner:
        terms.append(f'owner = "{owner}"')
    return " AND ".join(terms)


def create_line(
    address: str, *, line_id: str | None, no_answer_timeout: float | None, request_id: str | None
) -> callqos_service_pb2.CreateLineRequest:
    line = line_pb2.Line(address=address)
    if no_answer_timeout is not None:
        line.no_answer_timeout.CopyFrom(duration(no_answer_timeout))
    return callqos_service_pb2.CreateLineRequest(
        line=line, line_id=line_id or "", request_id=request_id or new_request_id()
    )


def answer_call(
    name: str,
    *,
    qos: flowspec_pb2.QosSpec | None,
    sending: flowspec_pb2.FlowSpec | None,
    receiving: flowspec_pb2.FlowSpec | None,
    etag: str | None,
    request_id: str | None,
) -> callqos_service_pb2.AnswerCallRequest:
    """An answer: with no QoS at all, the offer as it is; a direction left out keeps what was
    offered (the server reads it as NO_CHANGE, SPEC.md FLOW-20)."""
    request = callqos_service_pb2.AnswerCallRequest(
        name=call_name(name), etag=etag or "", request_id=request_id or new_request_id()
    )
    if qos is not None or sending is not None or receiving is not None:
        request.qos.CopyFrom(_qos(qos, sending, receiving))
    return request


def reject_call(name: str, *, etag: str | None, request_id: str | None) -> callqos_service_pb2.RejectCallRequest:
    return callqos_service_pb2.RejectCallRequest(
        name=call_name(name), etag=etag or "", request_id=request_id or new_request_id()
    )


#: The event a line's offers stream follows.
OFFERED = event_pb2.QosEventType.QOS_EVENT_TYPE_CALL_OFFERED


def watch_events(
    after_sequence: int | None,
    call: str | None,
    types: Iterable[specs.EnumLike] | None,
    line: str | None = None,
) -> callqos_service_pb2.WatchEventsRequest:
    request = callqos_service_pb2.WatchEventsRequest(
        call=call_name(call) if call else "",
        line=line_name(line) if line else "",
        types=[specs.parse_event_type(t) for t in types or ()],  # type: ignore[misc]
    )
    if after_sequence is not None:
        request.after_sequence = after_sequence
    return request


def update_link_capacity(link: str, capacity: int) -> callqos_service_pb2.UpdateLinkRequest:
    return callqos_service_pb2.UpdateLinkRequest(
        link=provider_pb2.Link(name=link, capacity_bytes_per_second=capacity),
        update_mask=field_mask_pb2.FieldMask(paths=["capacity_bytes_per_second"]),
    )
