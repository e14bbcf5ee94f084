"""A grpc.aio proxy that forwards the callqos API to a real server and injects exactly one fault that
lives at the API level (validation, idempotency, ownership, events, error codes, what a response says) —
faults a provider plugin cannot produce because the server does that work, and faults of a server that
does not check its provider's answers (the suite must catch those by itself under --target).

    python -m callqos.conformance.broken.proxy --fault reorders-events --upstream 127.0.0.1:50051 \\
        --listen 127.0.0.1:0 --port-file /tmp/port

`skips-<CLAUSE>` faults (one per validation clause, e.g. `skips-FLOW-7`) are a server that forgot that
one rule: a request that breaks only it is accepted (made best effort upstream, as a lenient server would
"repair" it) instead of refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.rpc import status_pb2

from callqos.conformance.rules import request_clauses
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import ANONYMOUS_PRINCIPAL, PRINCIPAL_HEADER, START_SEQUENCE_HEADER

UNARY = (
    "CreateCall",
    "GetCall",
    "ListCalls",
    "RenegotiateCall",
    "DropCall",
    "GetProvider",
    "ListProviders",
    "ListLinks",
    "UpdateLink",
    "CreateLine",
    "GetLine",
    "ListLines",
    "CloseLine",
    "AnswerCall",
    "RejectCall",
)
VALIDATION_CLAUSES = (
    *("FLOW-3", "FLOW-4", "FLOW-5", "FLOW-6", "FLOW-7", "FLOW-8", "FLOW-11", "FLOW-12", "FLOW-13", "FLOW-14"),
    *("FLOW-15", "FLOW-16", "FLOW-17", "FLOW-19", "REQ-1", "REQ-2", "REQ-3", "REQ-4"),
)
FAULTS = (
    "none",
    "accepts-invalid-peak",
    "double-reserves-request-id",
    "never-emits-events",
    "reorders-events",
    "wrong-error-codes",
    "drops-provider-specific",
    "ignores-etag",
    "ignores-renegotiation-request-id",
    "unknown-cursor-from-now",
    "wrong-start-sequence",
    "owner-only-events",
    "grants-short",
    "inflates-counter-offer",
    "strips-qos-refusal",
    "forgets-refused-calls",
    "second-drop-fails",
    "set-qos-after-drop",
    "overwrites-call-id",
    "no-owner",
    "anyone-may-drop",
    "renegotiates-disconnected",
    "no-change-receiving-as-best-effort",
    "renegotiation-unimplemented-as-internal",
    "accepts-invalid-renegotiation",
    "ignores-level-on-renegotiation",
    "unspecified-level-as-if-available",
    "best-effort-level-reserves",
    "rewrites-requested-qos",
    "refusal-without-failure-event",
    "no-renegotiation-failed-event",
    "hides-provider-changes",
    "drops-event-request-id",
    "resume-repeats-cursor-event",
    "call-filter-ignored",
    "type-filter-ignored",
    "links-without-link-admin",
    "not-found-as-invalid",
    "ignores-page-size",
    "ignores-list-filter",
    "accepts-malformed-principal",
    "accepts-oversize-etag",
    "unbounded-watch-types",
    "renegotiation-readmits",
    "refuses-absent-direction",
    # lines and incoming calls
    "line-ignores-no-answer-timeout",
    "address-reused",
    "line-watch-unfiltered",
    "anyone-may-close",
    "offer-without-answer-feature",
    "offer-not-mirrored",
    "no-ringback-event",
    "anyone-may-answer",
    "answer-above-offer-accepted",
    "needed-short-answer-connects",
    "answer-grant-unmirrored",
    "reject-hangs-up-caller",
    "peer-dropped-as-normal",
    "reserves-each-leg",
    "pair-renegotiation-one-leg",
    "pair-change-one-leg",
    *(f"skips-{clause}" for clause in VALIDATION_CLAUSES),
)
FORWARDED_HEADERS = (PRINCIPAL_HEADER,)
DETAILS = "grpc-status-details-bin"
ST = flowspec_pb2.ServiceType
Level = call_pb2.ServiceLevel
E = event_pb2.QosEventType
Call = call_pb2.Call
PEER_DROPPED = call_pb2.DisconnectReason.DISCONNECT_REASON_PEER_DROPPED
NORMAL = call_pb2.DisconnectReason.DISCONNECT_REASON_NORMAL
RENEGOTIATED = event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_RENEGOTIATED
PROVIDER_INITIATED = event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_PROVIDER_INITIATED


def mirrored(qos: flowspec_pb2.QosSpec) -> flowspec_pb2.QosSpec:
    return flowspec_pb2.QosSpec(sending=qos.receiving, receiving=qos.sending, provider_specific=qos.provider_specific)


class Proxy(svc_grpc.CallQosServiceServicer):
    def __init__(self, upstream: grpc.aio.Channel, fault: str) -> None:
        self.up = svc_grpc.CallQosServiceStub(upstream)  # type: ignore[no-untyped-call]  # generated, untyped
        self.fault = fault
        # reserves-each-leg: the second reservation made for each answered pair, by either leg's name.
        self.shadows: dict[str, Call] = {}

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in context.invocation_metadata() or () if k in FORWARDED_HEADERS)

    @staticmethod
    def _principal(context: grpc.aio.ServicerContext) -> str:
        return dict(Proxy._metadata(context)).get(PRINCIPAL_HEADER, ANONYMOUS_PRINCIPAL)

    async def _abort(self, context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError, method: str = "") -> None:
        code, trailing = error.code(), list(error.trailing_metadata() or ())
        if self.fault == "wrong-error-codes" and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            code = grpc.StatusCode.INTERNAL  # the fault: a refusal reported as a server failure
        if self.fault == "not-found-as-invalid" and code == grpc.StatusCode.NOT_FOUND:
            code = grpc.StatusCode.INVALID_ARGUMENT
        unimplemented = code == grpc.StatusCode.UNIMPLEMENTED and method == "RenegotiateCall"
        if self.fault == "renegotiation-unimplemented-as-internal" and unimplemented:
            code = grpc.StatusCode.INTERNAL
        if self.fault in ("inflates-counter-offer", "strips-qos-refusal"):
            trailing = [(k, self._tamper_details(v) if k == DETAILS else v) for k, v in trailing]
        await context.abort(code, error.details() or "", trailing_metadata=tuple(trailing))

    def _tamper_details(self, raw: Any) -> bytes:
        status = status_pb2.Status.FromString(bytes(raw))
        kept = []
        for detail in status.details:
            if detail.Is(call_pb2.QosRefusal.DESCRIPTOR):
                if self.fault == "strips-qos-refusal":
                    continue  # the fault: the refusal's call and counter-offer are not sent
                refusal = call_pb2.QosRefusal()
                detail.Unpack(refusal)
                for direction in (refusal.counter_offer.sending, refusal.counter_offer.receiving):
                    if direction.HasField("token_rate_bytes_per_second"):
                        direction.token_rate_bytes_per_second *= 2  # the fault: offers more than it has
                        if direction.HasField("peak_bandwidth_bytes_per_second"):
                            direction.peak_bandwidth_bytes_per_second *= 2
                detail.Pack(refusal)
            kept.append(detail)
        del status.details[:]
        status.details.extend(kept)
        encoded: bytes = status.SerializeToString()
        return encoded

    async def _call(self, method: str, request: Any, context: grpc.aio.ServicerContext, principal: str = "") -> Any:
        metadata = ((PRINCIPAL_HEADER, principal),) if principal else self._metadata(context)
        return await getattr(self.up, method)(request, metadata=metadata, timeout=context.time_remaining())

    async def _forward(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            request, principal = await self._before(method, request, context)
            response = await self._instead(method, request, context)
            if response is None:
                try:
                    response = await self._call(method, request, context, principal)
                except grpc.aio.AioRpcError as error:
                    response = await self._recover(method, request, context, error)
            await self._also(method, response, context)
            return self._after(method, request, response)
        except grpc.aio.AioRpcError as error:
            await self._abort(context, error, method)

    # -- requests ---------------------------------------------------------------------------------
    async def _before(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, str]:
        """The request as the faulty server handles it, and the principal it acts as ('' : the caller's)."""
        fault, principal = self.fault, ""
        caller = dict(context.invocation_metadata() or ()).get(PRINCIPAL_HEADER, "")
        if fault == "accepts-malformed-principal" and caller and (" " in caller or len(caller) > 128):
            principal = ANONYMOUS_PRINCIPAL  # the fault: a malformed identity is taken as anonymous
        if method == "CreateCall":
            qos = request.call.requested_qos
            if fault == "refuses-absent-direction" and not (qos.HasField("sending") and qos.HasField("receiving")):
                # the fault: both directions still required (the withdrawn FLOW-18)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "both directions are required")
            self._tamper_create(request)
        elif method == "RenegotiateCall":
            self._tamper_renegotiate(request)
        elif method == "DropCall":
            if fault == "ignores-etag" or (fault == "accepts-oversize-etag" and len(request.etag) > 128):
                request.etag = ""
            if fault in ("anyone-may-drop", "second-drop-fails"):
                call = await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
                if fault == "anyone-may-drop":
                    principal = call.owner  # the fault: the owner is not checked
                elif call.state == call_pb2.Call.State.STATE_DISCONNECTED:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name} is already dropped")
        elif method == "ListCalls":
            if fault == "ignores-page-size":
                request.page_size = 0
            if fault == "ignores-list-filter":
                request.filter = ""
        elif method in ("AnswerCall", "RejectCall") and fault in ("anyone-may-answer", "needed-short-answer-connects"):
            leg = await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
            if fault == "anyone-may-answer":
                principal = leg.owner  # the fault: the leg's owner is not checked
            elif method == "AnswerCall" and leg.service_level == Level.SERVICE_LEVEL_NEEDED:
                request.ClearField("qos")  # the fault: a lower answer at NEEDED is taken as the full offer
        elif method == "CloseLine" and fault == "anyone-may-close":
            line = await self._call("GetLine", svc.GetLineRequest(name=request.name), context)
            principal = line.owner  # the fault: the line's owner is not checked
        elif method == "CreateLine" and fault == "line-ignores-no-answer-timeout":
            request.line.ClearField("no_answer_timeout")  # the fault: every line rings for the server's default
        return request, principal

    async def _instead(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Faults that answer a request with other requests upstream; None: forward it."""
        fault = self.fault
        if method == "RejectCall" and fault == "reject-hangs-up-caller":
            leg = await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
            if leg.state == Call.State.STATE_OFFERING:
                caller = await self._call("GetCall", svc.GetCallRequest(name=leg.peer), context)
                # the fault: rejecting hangs up the caller's leg instead
                await self._call("DropCall", svc.DropCallRequest(name=caller.name), context, caller.owner)
                return await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
        # (A repeated request_id is answered from the idempotency record first, as before.)
        if (
            method == "RenegotiateCall"
            and fault == "renegotiation-readmits"
            and not (request.etag or request.request_id)
        ):
            call = await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
            asked = flowspec_pb2.QosSpec()
            asked.CopyFrom(call.requested_qos)
            for direction in ("sending", "receiving"):
                given = getattr(request.qos, direction)
                if request.qos.HasField(direction) and given.service_type != ST.SERVICE_TYPE_NO_CHANGE:
                    getattr(asked, direction).CopyFrom(given)
            if request.qos.provider_specific:
                asked.provider_specific = request.qos.provider_specific
            level = request.service_level or call.service_level
            if call.state == Call.State.STATE_CONNECTED and asked == call.requested_qos and level == call.service_level:
                # the fault: every renegotiation releases and admits again, even one that changes nothing
                nothing = flowspec_pb2.QosSpec(
                    sending=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
                    receiving=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
                )
                await self._call("RenegotiateCall", svc.RenegotiateCallRequest(name=call.name, qos=nothing), context)
                return await self._call(
                    "RenegotiateCall", svc.RenegotiateCallRequest(name=call.name, qos=call.requested_qos), context
                )
        return None

    async def _also(self, method: str, response: Any, context: grpc.aio.ServicerContext) -> None:
        """Faults that do more upstream after a request succeeded."""
        if self.fault != "reserves-each-leg" or not isinstance(response, call_pb2.Call):
            return
        if method == "AnswerCall" and response.state == Call.State.STATE_CONNECTED:
            # the fault: the answering leg is reserved too, in its own terms, as a call of its own
            shadow = await self._call(
                "CreateCall",
                svc.CreateCallRequest(
                    call=Call(
                        destination=f"leg:{response.name}",
                        provider=response.provider,
                        service_level=response.service_level,
                        requested_qos=response.granted_qos,
                    )
                ),
                context,
                response.owner,
            )
            self.shadows[response.name] = self.shadows[response.peer] = shadow
        elif method == "DropCall" and response.name in self.shadows:
            shadow = self.shadows.pop(response.name)
            self.shadows.pop(response.peer, None)
            await self._call("DropCall", svc.DropCallRequest(name=shadow.name), context, shadow.owner)

    def _tamper_create(self, request: svc.CreateCallRequest) -> None:
        fault, qos = self.fault, request.call.requested_qos
        if fault == "double-reserves-request-id":
            request.request_id = ""  # every retry becomes a new call
        if fault == "drops-provider-specific" and request.call.HasField("requested_qos"):
            qos.ClearField("provider_specific")  # the fault: not passed through
        if fault == "unspecified-level-as-if-available" and not request.call.service_level:
            request.call.service_level = Level.SERVICE_LEVEL_IF_AVAILABLE
        if fault == "best-effort-level-reserves" and request.call.service_level == Level.SERVICE_LEVEL_BEST_EFFORT:
            request.call.service_level = Level.SERVICE_LEVEL_IF_AVAILABLE
        if fault == "accepts-invalid-peak":
            for direction in (qos.sending, qos.receiving):
                if (
                    direction.HasField("peak_bandwidth_bytes_per_second")
                    and direction.HasField("token_rate_bytes_per_second")
                    and direction.peak_bandwidth_bytes_per_second < direction.token_rate_bytes_per_second
                ):
                    direction.ClearField("peak_bandwidth_bytes_per_second")  # "repairs" it instead of refusing

    def _tamper_renegotiate(self, request: svc.RenegotiateCallRequest) -> None:
        fault = self.fault
        if fault == "drops-provider-specific" and request.HasField("qos"):
            request.qos.ClearField("provider_specific")
        elif fault == "ignores-etag" or (fault == "accepts-oversize-etag" and len(request.etag) > 128):
            request.etag = ""  # the fault: every change is unconditional
        elif fault == "ignores-renegotiation-request-id":
            request.request_id = ""  # the fault: every retry renegotiates again
        elif (
            fault == "no-change-receiving-as-best-effort"
            and request.qos.receiving.service_type == ST.SERVICE_TYPE_NO_CHANGE
        ):
            request.qos.receiving.CopyFrom(flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT))
        elif fault == "accepts-invalid-renegotiation":
            for direction in (request.qos.sending, request.qos.receiving):
                if direction.HasField("token_rate_bytes_per_second") and direction.token_rate_bytes_per_second == 0:
                    direction.token_rate_bytes_per_second = 1  # "repairs" it instead of refusing
        elif fault == "ignores-level-on-renegotiation":
            request.service_level = Level.SERVICE_LEVEL_UNSPECIFIED

    async def _recover(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, error: grpc.aio.AioRpcError
    ) -> Any:
        """Faults that turn an upstream error into a success; anything else is the error."""
        fault, code = self.fault, error.code()
        if method == "CreateCall" and code == grpc.StatusCode.INVALID_ARGUMENT and fault.startswith("skips-"):
            if request_clauses(request, 1500) == {fault.removeprefix("skips-")}:
                destination = request.call.destination
                repaired = svc.CreateCallRequest(
                    call=call_pb2.Call(
                        destination=destination
                        if 0 < len(destination) <= 256 and destination.isprintable()
                        else "sip:x",
                        provider=request.call.provider,
                        service_level=Level.SERVICE_LEVEL_BEST_EFFORT,
                        requested_qos=flowspec_pb2.QosSpec(
                            sending=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
                            receiving=flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT),
                        ),
                    ),
                    call_id=request.call_id if not fault.endswith("REQ-4") else "",
                )
                return await self._call("CreateCall", repaired, context)  # the fault: accepted anyway
        if method == "CreateCall" and code == grpc.StatusCode.ALREADY_EXISTS and fault == "overwrites-call-id":
            request.call_id = request.call_id[:55] + "-again"
            return await self._call("CreateCall", request, context)  # the fault: a second call, silently renamed
        if method == "RenegotiateCall" and fault == "renegotiates-disconnected":
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                return await self._call("GetCall", svc.GetCallRequest(name=request.name), context)
        if method == "ListLinks" and fault == "links-without-link-admin" and code == grpc.StatusCode.UNIMPLEMENTED:
            return svc.ListLinksResponse()
        if (
            method == "AnswerCall"
            and fault == "answer-above-offer-accepted"
            and code == grpc.StatusCode.INVALID_ARGUMENT
        ):
            request.ClearField("qos")
            return await self._call("AnswerCall", request, context)  # the fault: an answer above the offer is taken
        if method == "CreateLine" and fault == "address-reused" and code == grpc.StatusCode.ALREADY_EXISTS:
            listed = await self._call(
                "ListLines", svc.ListLinesRequest(filter=f'address = "{request.line.address}"'), context
            )
            for line in listed.lines:
                if line.state == line_pb2.Line.State.STATE_OPEN:
                    return line  # the fault: a second opener of an address gets the open line
        raise error

    # -- responses --------------------------------------------------------------------------------
    def _after(self, method: str, request: Any, response: Any) -> Any:
        fault = self.fault
        if isinstance(response, call_pb2.Call):
            if (
                fault == "grants-short"
                and method == "CreateCall"
                and response.service_level == Level.SERVICE_LEVEL_NEEDED
            ):
                spec = response.granted_qos.sending
                if spec.HasField("token_rate_bytes_per_second") and spec.token_rate_bytes_per_second > 1:
                    spec.token_rate_bytes_per_second -= 1  # a server passing its provider's short grant through
            if fault == "set-qos-after-drop":
                response.features.set_qos = True
            if fault == "no-owner":
                response.owner = ""
            if fault == "rewrites-requested-qos":
                response.requested_qos.CopyFrom(response.granted_qos)
            if fault == "offer-without-answer-feature" and response.state == Call.State.STATE_OFFERING:
                response.features.answer = False
            if fault == "offer-not-mirrored" and response.direction == Call.Direction.DIRECTION_INCOMING:
                response.requested_qos.CopyFrom(mirrored(response.requested_qos))  # the caller's terms
            if fault == "answer-grant-unmirrored" and method == "AnswerCall":
                response.granted_qos.CopyFrom(mirrored(response.granted_qos))  # the caller's terms
            if fault == "peer-dropped-as-normal" and response.disconnect_reason == PEER_DROPPED:
                response.disconnect_reason = NORMAL
        return response

    async def _unary(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = await self._forward(method, request, context)
        refused = call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
        if self.fault == "forgets-refused-calls" and method == "GetCall" and response.disconnect_reason == refused:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no call {request.name}")  # the fault: not kept
        return response

    # -- events -----------------------------------------------------------------------------------
    async def _open_watch(self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext) -> Any:
        """The upstream stream, its start-sequence header passed on (a refused stream sends none)."""
        if self.fault == "call-filter-ignored":
            request.call = ""
        if self.fault == "type-filter-ignored":
            del request.types[:]
        if self.fault == "unbounded-watch-types":
            # the fault: the list is read and de-duplicated instead of refused on its length
            kept = list(dict.fromkeys(request.types))
            del request.types[:]
            request.types.extend(kept)
        if self.fault == "line-watch-unfiltered":
            request.line = ""
        resumed = self.fault == "resume-repeats-cursor-event" and request.after_sequence > 0
        if resumed:
            request.after_sequence -= 1  # the fault: the event at the cursor is delivered again
        stream = self.up.WatchEvents(request, metadata=self._metadata(context))
        start = dict(await stream.initial_metadata() or ()).get(START_SEQUENCE_HEADER)
        if start is None and self.fault == "unknown-cursor-from-now" and request.HasField("after_sequence"):
            stream.cancel()  # the fault: a refused cursor silently becomes "from now"
            request.ClearField("after_sequence")
            return await self._open_watch(request, context)
        if start is not None:
            value = "0" if self.fault == "wrong-start-sequence" else str(int(start) + 1 if resumed else start)
            await context.send_initial_metadata(((START_SEQUENCE_HEADER, value),))
        return stream

    async def _owned(self, event: Any, context: grpc.aio.ServicerContext, owners: dict[str, str]) -> bool:
        """Whether the watcher owns the event's call (for the owner-only-events fault)."""
        if event.call not in owners:
            call = await self.up.GetCall(svc.GetCallRequest(name=event.call), metadata=self._metadata(context))
            owners[event.call] = call.owner
        return owners[event.call] == self._principal(context)

    def _hidden(self, event: event_pb2.QosEvent) -> bool:
        fault = self.fault
        if fault == "refusal-without-failure-event":
            return event.type in (E.QOS_EVENT_TYPE_ADMISSION_FAILURE, E.QOS_EVENT_TYPE_POLICY_FAILURE)
        if fault == "no-renegotiation-failed-event":
            return event.type == E.QOS_EVENT_TYPE_RENEGOTIATION_FAILED
        if fault == "hides-provider-changes":
            return event.cause == event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_PROVIDER_INITIATED or event.type in (
                E.QOS_EVENT_TYPE_NOQOS,
            )
        if fault == "no-ringback-event":
            return event.type == E.QOS_EVENT_TYPE_CALL_RINGBACK
        # An event with `line` set is of a callee's leg (LINE-3).
        if fault == "pair-renegotiation-one-leg":
            return bool(event.line) and event.cause == RENEGOTIATED
        if fault == "pair-change-one-leg":
            return bool(event.line) and (event.cause == PROVIDER_INITIATED or event.type == E.QOS_EVENT_TYPE_NOQOS)
        return False

    async def WatchEvents(
        self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.WatchEventsResponse]:
        if self.fault == "never-emits-events":
            await asyncio.Event().wait()
        stream = await self._open_watch(request, context)
        owners: dict[str, str] = {}
        held: svc.WatchEventsResponse | None = None
        try:
            while True:
                try:
                    # A held event is flushed if nothing follows it soon.
                    message = await asyncio.wait_for(stream.read(), 0.5) if held is not None else await stream.read()
                except TimeoutError:
                    assert held is not None  # only a held event is waited for with a timeout
                    yield held
                    held = None
                    continue
                if message is grpc.aio.EOF:
                    break
                if self.fault == "owner-only-events" and not await self._owned(message.event, context, owners):
                    continue  # the fault: monitors see nothing of calls they do not own
                if self._hidden(message.event):
                    continue
                if self.fault == "drops-event-request-id":
                    message.event.request_id = ""
                if self.fault != "reorders-events":
                    yield message
                elif held is None:
                    held = message
                else:
                    yield message  # the fault: the later event first
                    yield held
                    held = None
        except grpc.aio.AioRpcError as error:
            await self._abort(context, error)
        finally:
            stream.cancel()


def _bind(name: str) -> Any:
    async def method(self: Proxy, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(name, request, context)

    method.__name__ = name
    return method


for _name in UNARY:
    setattr(Proxy, _name, _bind(_name))


async def serve(faults: list[str], upstream: str, listen: str, port_file: Path | None, ports_file: Path | None) -> None:
    """One proxy server per fault, each on its own port (`listen` for the first; free ports for the
    others). `ports_file` gets {fault: port} as JSON; `port_file` the first fault's port, written last."""
    host = listen.rsplit(":", 1)[0]
    channel = grpc.aio.insecure_channel(upstream)
    servers: list[grpc.aio.Server] = []
    ports: dict[str, int] = {}
    for index, fault in enumerate(faults):
        server = grpc.aio.server()
        svc_grpc.add_CallQosServiceServicer_to_server(Proxy(channel, fault), server)  # type: ignore[no-untyped-call]  # generated
        ports[fault] = server.add_insecure_port(listen if index == 0 else f"{host}:0")
        await server.start()
        servers.append(server)
    if ports_file is not None:
        tmp = ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ports))
        tmp.replace(ports_file)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{ports[faults[0]]}\n")
        tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await asyncio.gather(*(server.stop(0.5) for server in servers))
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callqos.conformance.broken.proxy")
    parser.add_argument("--fault", choices=FAULTS, required=True, action="append", help="repeat for several proxies")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of a real callqos server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--ports-file", type=Path, help="JSON {fault: port}, for several --fault")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.fault, args.upstream, args.listen, args.port_file, args.ports_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
