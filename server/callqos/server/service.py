"""The gRPC servicer: decode the request, read the caller's identity, delegate, encode the answer.

It decides nothing about a request itself. Each handler passes the request through `validation`
(what a valid request is), then hands it to the one that decides: the call manager (`calls`) for
calls, the event hub (`events`) for watch streams, the provider host (`hosting`) for providers
and links; failures become statuses as `errors` says. What stays here is request plumbing:
decoding (a corrupt body is INVALID_ARGUMENT, not UNKNOWN), the caller's principal and deadline,
the count of open watch streams, and encoding answers and pages.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from callqos.server import names, validation
from callqos.server.calls import CallManager
from callqos.server.errors import FieldViolation, Reason, ReplayedStatus, ServiceError, invalid, storage_unavailable
from callqos.server.events import EventHub
from callqos.server.hosting import CALLER_DEADLINE, HostedProviders, provider_proto
from callqos.server.ledger import Ledger
from callqos.server.store.base import StoreUnavailable
from callqos.server.validation import DEFAULT_PAGE, MAX_PAGE, MAX_PROVIDER_PAGE
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import ANONYMOUS_PRINCIPAL as ANONYMOUS
from callqos.wire import PRINCIPAL_HEADER, START_SEQUENCE_HEADER

log = logging.getLogger(__name__)


R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError | ReplayedStatus) -> None:
    status = error.status if isinstance(error, ReplayedStatus) else error.to_status()
    await context.abort_with_status(rpc_status.to_status(status))


def _internal(method: str) -> ServiceError:
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


def add_to_server(servicer: CallQosServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated add_*_to_server, but with deserializers that
    turn a corrupt body into INVALID_ARGUMENT rather than UNKNOWN."""
    descriptor = svc.DESCRIPTOR.services_by_name["CallQosService"]
    handlers = {}
    for method in descriptor.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    # As the generated code does: registered methods skip the per-call generic lookup.
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def unary(method: Handler[R]) -> Handler[R]:
    """Every failure leaves as a status with ErrorInfo; nothing escapes as UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        remaining = context.time_remaining()
        if remaining is not None:
            CALLER_DEADLINE.set(time.monotonic() + remaining)
        try:
            if isinstance(request, Undecodable):
                raise request.violation()
            return await method(self, request, context)
        except (ServiceError, ReplayedStatus) as error:
            await _abort(context, error)
        except StoreUnavailable as error:  # a read the storage failed: retryable, never INTERNAL
            await _abort(context, storage_unavailable(error.cause, f"answer {method.__name__}"))
        except Exception:
            await _abort(context, _internal(method.__name__))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def principal_of(context: grpc.aio.ServicerContext) -> str:
    """Who is calling: the principal in the request metadata (validated), or ANONYMOUS."""
    for key, value in context.invocation_metadata() or ():
        if key == PRINCIPAL_HEADER:
            return validation.principal(value, PRINCIPAL_HEADER)
    return ANONYMOUS


class CallQosServicer(svc_grpc.CallQosServiceServicer):
    def __init__(
        self, calls: CallManager, hub: EventHub, providers: HostedProviders, max_watchers: int, ledger: Ledger
    ) -> None:
        self._calls = calls
        self._hub = hub
        self._providers = providers
        self._max_watchers = max_watchers
        self._ledger = ledger
        self.open_watchers = 0

    @unary
    async def CreateCall(self, request: svc.CreateCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        principal = principal_of(context)
        # The named provider's limits (its MTU) are part of what a valid request is; a provider
        # this server does not host is NOT_FOUND, once the request is otherwise valid.
        named = self._providers.find(request.call.provider)
        validation.create(
            request,
            named.capabilities if named else None,
            named.provider.validate_provider_specific if named else None,
        )
        return await self._calls.create(request, principal, self._providers.get(request.call.provider))

    @unary
    async def GetCall(self, request: svc.GetCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        return await self._calls.get(validation.call_name(request.name))

    @unary
    async def ListCalls(
        self, request: svc.ListCallsRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListCallsResponse:
        size = validation.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        selected = validation.call_filter(request.filter)
        before = validation.page_cursor(request.page_token, selected.page_scope)
        page = await self._calls.list_calls(state=selected.state, provider=selected.provider, limit=size, before=before)
        return svc.ListCallsResponse(
            calls=page.calls, next_page_token=validation.page_token(page.next_cursor, selected.page_scope)
        )

    @unary
    async def RenegotiateCall(
        self, request: svc.RenegotiateCallRequest, context: grpc.aio.ServicerContext
    ) -> call_pb2.Call:
        principal = principal_of(context)
        validation.renegotiation(request, None)
        info = await self._calls.provider_of(request.name)
        validation.renegotiation(request, info.capabilities, info.provider.validate_provider_specific)
        return await self._calls.renegotiate(request, principal, info)

    @unary
    async def DropCall(self, request: svc.DropCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        principal = principal_of(context)
        validation.drop(request)
        return await self._calls.drop(request, principal)

    async def WatchEvents(
        self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.WatchEventsResponse]:
        # An async generator (not the context.write style), so tracing interceptors that
        # iterate the handler work (opentelemetry-python-contrib#3066).
        try:
            if isinstance(request, Undecodable):
                raise request.violation()
            accept = validation.watch_filter(request)
            if self.open_watchers >= self._max_watchers:
                raise ServiceError(
                    Reason.ERROR_REASON_TOO_MANY_WATCHERS,
                    f"{self._max_watchers} watch streams are open; try again later",
                )
            after = request.after_sequence if request.HasField("after_sequence") else None
            cursor = await self._hub.start_cursor(after)
            # Tell the client where this stream starts, so that a watch "from now" has a cursor
            # to resume from even if it breaks before its first event.
            await context.send_initial_metadata(((START_SEQUENCE_HEADER, str(cursor)),))
            self.open_watchers += 1
            try:
                async for event in self._hub.watch(cursor, accept):
                    yield svc.WatchEventsResponse(event=event)
            finally:
                self.open_watchers -= 1
        except (ServiceError, ReplayedStatus) as error:
            await _abort(context, error)
        except Exception:
            await _abort(context, _internal("WatchEvents"))

    @unary
    async def GetProvider(self, request: svc.GetProviderRequest, context: grpc.aio.ServicerContext) -> Any:
        return provider_proto(self._providers.get(validation.provider_name(request.name)))

    @unary
    async def ListProviders(
        self, request: svc.ListProvidersRequest, context: grpc.aio.ServicerContext
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
        self, request: svc.ListLinksRequest, context: grpc.aio.ServicerContext
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
    async def UpdateLink(self, request: svc.UpdateLinkRequest, context: grpc.aio.ServicerContext) -> Any:
        provider_id, link_id = validation.link_update(request)
        info = self._providers.link_admin(names.provider_name(provider_id))
        return await self._ledger.update_link(info, link_id, request.link.capacity_bytes_per_second)
