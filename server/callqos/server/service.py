"""The gRPC servicer: admit the caller, decode the request, delegate, encode the answer.

It decides nothing about a request itself. Each handler passes the request through `validation`
(what a valid request is), then hands it to the one that decides: the call manager (the
switchboard, `incoming`, which is `calls` plus lines) for calls, answers and closing a line, the
line manager (`lines`) for opening and reading lines, the event hub (`events`) for watch streams,
the provider host (`hosting`) for providers and links; failures become statuses as `errors` says.
What stays here is request plumbing: decoding (a corrupt body is INVALID_ARGUMENT, not UNKNOWN),
the caller's deadline, a watch stream's slot (taken and cut by `watchers`), and encoding answers and pages.

Who the caller is comes from one place: every handler first passes the security `Guard`
(authentication, then the permission its method needs), before the request is even looked at, and
receives the resulting `Caller`, which it hands on to the call and line managers (ownership and
tenancy of calls and lines) and the event hub (a watcher sees its own tenant's events). The Guard
also writes the audit record of every mutation and every denial.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status
from opentelemetry import context as otel_context

from callqos.server import names, validation
from callqos.server.errors import FieldViolation, Reason, ReplayedStatus, ServiceError, invalid, storage_unavailable
from callqos.server.events import EventHub
from callqos.server.hosting import CALLER_DEADLINE, HostedProviders, provider_proto
from callqos.server.incoming import Switchboard
from callqos.server.ledger import Ledger
from callqos.server.lines import LineManager
from callqos.server.security.authz import MUTATIONS
from callqos.server.security.guard import Guard
from callqos.server.security.identity import Caller
from callqos.server.store.base import StoreUnavailable
from callqos.server.telemetry.interceptor import enter_rpc_trace
from callqos.server.validation import DEFAULT_PAGE, MAX_PAGE, MAX_PROVIDER_PAGE
from callqos.server.watchers import Watchers
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import START_SEQUENCE_HEADER

log = logging.getLogger(__name__)


R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError | ReplayedStatus) -> None:
    status = error.status if isinstance(error, ReplayedStatus) else error.to_status()
    await context.abort_with_status(rpc_status.to_status(status))


async def _abort_quietly(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """Abort from outside the handler (see WatchEvents): the AbortError is the handler's, not
    ours, and a stream that has ended meanwhile needs no status."""
    try:
        await _abort(context, error)
    except grpc.aio.AbortError:
        pass
    except Exception:
        log.debug("could not send the status of a cut watch stream", exc_info=True)


def _cancel_unless_done(handler: asyncio.Task[Any], sending: asyncio.Task[None]) -> None:
    if not sending.done():
        handler.cancel()
        sending.cancel()


def _unexpected(method: str, error: Exception) -> ServiceError:
    """The status of an exception no layer turned into one: the storage unavailable (a read or a
    write it could not take: retryable, never INTERNAL), or a bug."""
    if isinstance(error, StoreUnavailable):
        log.warning("%s failed: the storage is unavailable: %s", method, error.cause)
        return storage_unavailable(error.cause, f"answer {method}")
    log.exception("unexpected failure in %s", method)
    return ServiceError(Reason.ERROR_REASON_INTERNAL, f"internal error in {method}; it was logged")


class Undecodable:
    """A request body that is not valid protobuf for its method. grpc would answer UNKNOWN
    if the deserializer raised; this lets the handler answer INVALID_ARGUMENT instead."""

    def __init__(self, type_name: str, error: DecodeError) -> None:
        self.type_name, self.error = type_name, error

    def violation(self) -> ServiceError:
        return invalid([FieldViolation("request", f"not a valid {self.type_name}: {self.error}")])


def _lenient(cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except DecodeError as error:
            return Undecodable(cls.DESCRIPTOR.full_name, error)

    return parse


def _encoded(message: Message | bytes) -> bytes:
    """A response as it goes on the wire: a WatchEvents stream yields its messages encoded
    already (`Frames`); every other answer is a message."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class Frames:
    """Each event's WatchEventsResponse, encoded once and sent as the same bytes to every watcher
    (rather than a message built and serialized per watcher), for the newest `size` events."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._encoded: dict[int, bytes] = {}

    def of(self, event: event_pb2.QosEvent) -> bytes:
        encoded = self._encoded.get(event.sequence)
        if encoded is None:
            encoded = svc.WatchEventsResponse(event=event).SerializeToString()
            if len(self._encoded) >= self._size:
                # Dicts keep insertion order: the first key is the oldest event encoded.
                del self._encoded[next(iter(self._encoded))]
            self._encoded[event.sequence] = encoded
        return encoded


def add_to_server(servicer: CallQosServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated add_*_to_server, but with deserializers that
    turn a corrupt body into INVALID_ARGUMENT rather than UNKNOWN, and a serializer that sends
    what is encoded already as it is."""
    descriptor = svc.DESCRIPTOR.services_by_name["CallQosService"]
    handlers = {}
    for method in descriptor.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_cls),
            response_serializer=_encoded if method.server_streaming else response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    # As the generated code does: registered methods skip the per-call generic lookup.
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def _resource(request: Any, answer: Any = None) -> str:
    """The resource a request is about, for the audit log: the call, line or link it names or made."""
    if answer is not None and hasattr(answer, "name"):
        return str(answer.name)
    if isinstance(request, svc.UpdateLinkRequest):
        return request.link.name
    if isinstance(request, svc.CreateCallRequest):
        return names.call_name(request.call_id) if request.call_id else ""
    if isinstance(request, svc.CreateLineRequest):
        return names.line_name(request.line_id) if request.line_id else ""
    return str(getattr(request, "name", "") or getattr(request, "parent", ""))


def unary(method: Handler[R]) -> Handler[R]:
    """The RPC runs in its trace (made current here when no interceptor does: `enters_traces`);
    the Guard admits the caller first; every failure leaves as a status with ErrorInfo (nothing
    escapes as UNKNOWN); mutations and denials are audited."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: CallQosServicer, request: Any, context: grpc.aio.ServicerContext) -> R:
        token = enter_rpc_trace(context) if self.enters_traces else None
        remaining = context.time_remaining()
        if remaining is not None:
            CALLER_DEADLINE.set(time.monotonic() + remaining)
        caller: Caller | None = None
        try:
            caller = await self.guard.authenticate(context)
            self.guard.authorize(caller, name)
            if isinstance(request, Undecodable):
                raise request.violation()
            answer = await method(self, request, context, caller)
        except (ServiceError, ReplayedStatus) as error:
            self.guard.audit(name, caller, context.peer(), _resource(request), error)
            await _abort(context, error)
        except Exception as unexpected:
            internal = _unexpected(name, unexpected)
            self.guard.audit(name, caller, context.peer(), _resource(request), internal)
            await _abort(context, internal)
        else:
            if name in MUTATIONS and self.guard.audits_success():
                self.guard.audit(name, caller, context.peer(), _resource(request, answer), None)
            return answer
        finally:
            if token is not None:
                otel_context.detach(token)  # type: ignore[arg-type]
        raise AssertionError("unreachable: abort raises")

    return wrapper


class CallQosServicer(svc_grpc.CallQosServiceServicer):
    def __init__(
        self,
        calls: Switchboard,
        hub: EventHub,
        providers: HostedProviders,
        watchers: Watchers,
        guard: Guard,
        lines: LineManager,
        ledger: Ledger,
        *,
        enters_traces: bool,
    ) -> None:
        # True when no interceptor observes RPCs (`observes_rpcs`): each handler then makes its
        # RPC's trace current itself, so that its events and log lines carry a trace id.
        self.enters_traces = enters_traces
        self._calls = calls
        self._lines = lines
        self._hub = hub
        self._providers = providers
        self.guard = guard
        self.watchers = watchers
        self._frames = Frames()
        self._ledger = ledger

    @property
    def open_watchers(self) -> int:
        return self.watchers.open

    @unary
    async def CreateCall(
        self, request: svc.CreateCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        # The named provider's limits (its MTU) are part of what a valid request is; a provider
        # this server does not host is NOT_FOUND, once the request is otherwise valid.
        named = self._providers.find(request.call.provider)
        validation.create(
            request,
            named.capabilities if named else None,
            named.provider.validate_provider_specific if named else None,
            self._calls.lease_policy.max_seconds,
        )
        return await self._calls.create(request, caller, self._providers.get(request.call.provider))

    @unary
    async def GetCall(
        self, request: svc.GetCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        return await self._calls.get(validation.call_name(request.name), caller)

    @unary
    async def ListCalls(
        self, request: svc.ListCallsRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> svc.ListCallsResponse:
        size = validation.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        selected = validation.call_filter(request.filter)
        before = validation.page_cursor(request.page_token, selected.page_scope)
        page = await self._calls.list_calls(
            caller,
            state=selected.state,
            provider=selected.provider,
            limit=size,
            before=before,
            line=selected.line,
        )
        return svc.ListCallsResponse(
            calls=page.calls, next_page_token=validation.page_token(page.next_cursor, selected.page_scope)
        )

    @unary
    async def RenegotiateCall(
        self, request: svc.RenegotiateCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        validation.renegotiation(request, None)
        info = await self._calls.provider_of(request.name, caller)
        validation.renegotiation(request, info.capabilities, info.provider.validate_provider_specific)
        return await self._calls.renegotiate(request, caller, info)

    @unary
    async def DropCall(
        self, request: svc.DropCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        validation.drop(request)
        return await self._calls.drop(request, caller)

    @unary
    async def ExtendCall(
        self, request: svc.ExtendCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        validation.extend(request, self._calls.lease_policy.max_seconds)
        return await self._calls.extend(request, caller)

    @unary
    async def AnswerCall(
        self, request: svc.AnswerCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        validation.answer(request, None)
        # What may be answered depends on the offer (the call's requested_qos, which does not
        # change while it is offered) and its provider's limits.
        offered = await self._calls.get(request.name, caller)
        info = self._providers.get(offered.provider)
        validation.answer(request, offered.requested_qos, info.capabilities, info.provider.validate_provider_specific)
        return await self._calls.answer(request, caller)

    @unary
    async def RejectCall(
        self, request: svc.RejectCallRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> call_pb2.Call:
        validation.reject(request)
        return await self._calls.reject(request, caller)

    @unary
    async def CreateLine(
        self, request: svc.CreateLineRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> line_pb2.Line:
        validation.line_create(request)
        return await self._lines.create(request, caller)

    @unary
    async def GetLine(
        self, request: svc.GetLineRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> line_pb2.Line:
        return await self._lines.get(validation.line_name(request.name), caller)

    @unary
    async def ListLines(
        self, request: svc.ListLinesRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> svc.ListLinesResponse:
        size = validation.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        selected = validation.line_filter(request.filter)
        before = validation.page_cursor(request.page_token, selected.page_scope)
        page = await self._lines.list_lines(
            caller, state=selected.state, address=selected.address, owner=selected.owner, limit=size, before=before
        )
        return svc.ListLinesResponse(
            lines=page.lines, next_page_token=validation.page_token(page.next_cursor, selected.page_scope)
        )

    @unary
    async def CloseLine(
        self, request: svc.CloseLineRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> line_pb2.Line:
        validation.close_line(request)
        return await self._calls.close_line(request, caller)

    async def WatchEvents(
        self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # An async generator (not the context.write style), so tracing interceptors that
        # iterate the handler work (opentelemetry-python-contrib#3066).
        if self.enters_traces:
            # Not detached: a generator closed by the garbage collector runs in another Context,
            # where the token would not reset (grpc/grpc#42295). The stream is a task of its own,
            # whose Context ends with it.
            enter_rpc_trace(context)
        caller: Caller | None = None
        try:
            caller = await self.guard.authenticate(context)
            self.guard.authorize(caller, "WatchEvents")
            if isinstance(request, Undecodable):
                raise request.violation()
            accept = validation.watch_filter(request)
            # A slot is taken before the first await, in the same step as the limits are checked.
            # Every watch limit (the server's, the tenant's quota, the per-principal cap) is
            # checked in `watchers`, in one step with taking the slot.
            watcher = self.watchers.admit(caller, self.guard.quotas.of(caller.tenant).watchers_per_principal)
        except (ServiceError, ReplayedStatus) as error:
            self.guard.audit("WatchEvents", caller, context.peer(), "", error)
            await _abort(context, error)
            return
        except Exception as unexpected:
            await _abort(context, _unexpected("WatchEvents", unexpected))
            return
        try:
            after = request.after_sequence if request.HasField("after_sequence") else None
            cursor = await self._hub.start_cursor(after)
            watcher.advanced(cursor)
            # Tell the client where this stream starts, so that a watch "from now" has a cursor
            # to resume from even if it breaks before its first event.
            await context.send_initial_metadata(((START_SEQUENCE_HEADER, str(cursor)),))

            handler = asyncio.current_task()

            async def cut(error: ServiceError) -> None:
                # Called by the supervisor while this stream waits on flow control. The status
                # is queued behind the messages the client has not read yet, so it is sent from a
                # task of its own; a client that reads again within the stall period reads them,
                # then WATCHER_TOO_SLOW. One that does not is cancelled then (CANCELLED, also
                # resumable), so that the stream's buffers are freed too.
                sending = asyncio.create_task(_abort_quietly(context, error))
                if handler is not None:
                    grace = self.watchers.limits.stall_seconds
                    asyncio.get_running_loop().call_later(grace, _cancel_unless_done, handler, sending)

            watcher.cut = cut
            frames = self._frames
            async for event in self._hub.watch(cursor, accept, tenant=caller.tenant, passed=watcher.advanced):
                yield frames.of(event)  # an encoded WatchEventsResponse
        except (ServiceError, ReplayedStatus) as error:
            self.guard.audit("WatchEvents", caller, context.peer(), "", error)
            await _abort(context, error)
        except Exception as unexpected:
            await _abort(context, _unexpected("WatchEvents", unexpected))
        finally:
            watcher.cut = None
            self.watchers.release(watcher)

    @unary
    async def GetProvider(
        self, request: svc.GetProviderRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> Any:
        return provider_proto(self._providers.get(validation.provider_name(request.name)))

    @unary
    async def ListProviders(
        self, request: svc.ListProvidersRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> svc.ListProvidersResponse:
        size = validation.page_size(request.page_size, MAX_PROVIDER_PAGE, MAX_PROVIDER_PAGE)
        start = validation.page_cursor(request.page_token, "providers")
        everything = [provider_proto(info) for info in self._providers.all()]
        following = start + size
        return svc.ListProvidersResponse(
            providers=everything[start:following],
            next_page_token=validation.page_token(following if following < len(everything) else 0, "providers"),
        )

    @unary
    async def ListLinks(
        self, request: svc.ListLinksRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> svc.ListLinksResponse:
        size = validation.page_size(request.page_size, MAX_PROVIDER_PAGE, MAX_PROVIDER_PAGE)
        info = self._providers.link_admin(validation.provider_name(request.parent, "parent"))
        start = validation.page_cursor(request.page_token, request.parent)
        links = await self._providers.list_links(info)
        following = start + size
        return svc.ListLinksResponse(
            links=links[start:following],
            next_page_token=validation.page_token(following if following < len(links) else 0, request.parent),
        )

    @unary
    async def UpdateLink(
        self, request: svc.UpdateLinkRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> Any:
        provider_id, link_id = validation.link_update(request)
        info = self._providers.link_admin(names.provider_name(provider_id))
        return await self._ledger.update_link(info, link_id, request.link.capacity_bytes_per_second)
