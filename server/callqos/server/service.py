"""The gRPC servicer: decode the request and the caller, call the domain, encode the answer.

No decision is made here beyond request plumbing: validation lives in `validation`, call
behaviour in `calls`, event delivery in `events`, error statuses in `errors`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from callqos.server import names, validation
from callqos.server.calls import CallManager
from callqos.server.errors import FieldViolation, Reason, ReplayedStatus, ServiceError, invalid
from callqos.server.events import EventHub
from callqos.server.hosting import CALLER_DEADLINE, ProviderSet, provider_proto
from callqos.server.locks import to_completion
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.wire import ANONYMOUS_PRINCIPAL as ANONYMOUS
from callqos.wire import PRINCIPAL_HEADER, START_SEQUENCE_HEADER

log = logging.getLogger(__name__)

_PRINCIPAL = re.compile(r"[\x21-\x7e]{1,128}")
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_PROVIDER_PAGE = 100

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
        except Exception:
            await _abort(context, _internal(method.__name__))
        raise AssertionError("unreachable: abort raises")

    return wrapper


def principal_of(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == PRINCIPAL_HEADER:
            if not isinstance(value, str) or not _PRINCIPAL.fullmatch(value):
                raise invalid([FieldViolation(PRINCIPAL_HEADER, "1-128 printable ASCII characters, no spaces")])
            return value
    return ANONYMOUS


def _page_token(cursor: int, scope: str) -> str:
    if not cursor:
        return ""
    raw = json.dumps({"c": cursor, "s": scope}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str, scope: str) -> int:
    """AIP-158: a token is only valid with the same other parameters that produced it."""
    if not token:
        return 0
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor, token_scope = int(raw["c"]), str(raw["s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid([FieldViolation("page_token", "not a token this server issued")]) from exc
    if token_scope != scope or cursor <= 0:
        raise invalid([FieldViolation("page_token", "issued for a different filter; start again")])
    return cursor


def _page_size(requested: int, default: int, maximum: int) -> int:
    violations = list(validation.page_size_violations(requested))
    if violations:
        raise invalid(violations)
    return min(requested or default, maximum)


_FILTER_TERM = re.compile(r'\s*(\w+)\s*=\s*("([^"]*)"|[\w/.-]+)\s*')


def parse_call_filter(text: str) -> tuple[int | None, str | None]:
    """The AIP-160 subset ListCalls accepts: `state = X AND provider = "providers/y"`."""
    state: int | None = None
    provider: str | None = None
    if len(text) > validation.MAX_FILTER:
        raise invalid([FieldViolation("filter", f"at most {validation.MAX_FILTER} characters")])
    if not text.strip():
        return state, provider
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(term)
        if match is None:
            raise invalid([FieldViolation("filter", f"cannot parse {term!r}; use field = value joined by AND")])
        key, value = match.group(1), match.group(3) if match.group(3) is not None else match.group(2)
        if key == "state":
            wanted = value.upper()
            wanted = wanted if wanted.startswith("STATE_") else f"STATE_{wanted}"
            if wanted not in ("STATE_CONNECTED", "STATE_DISCONNECTED"):
                raise invalid([FieldViolation("filter", f"state must be CONNECTED or DISCONNECTED, not {value!r}")])
            state = call_pb2.Call.State.Value(wanted)
        elif key == "provider":
            if names.parse_provider(value) is None:
                raise invalid([FieldViolation("filter", "provider must be providers/{provider}")])
            provider = value
        else:
            raise invalid([FieldViolation("filter", f"unknown field {key!r}; filter on state or provider")])
    return state, provider


class CallQosServicer(svc_grpc.CallQosServiceServicer):
    def __init__(self, calls: CallManager, hub: EventHub, providers: ProviderSet, max_watchers: int) -> None:
        self._calls = calls
        self._hub = hub
        self._providers = providers
        self._max_watchers = max_watchers
        self.open_watchers = 0

    @unary
    async def CreateCall(self, request: svc.CreateCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        return await self._calls.create(request, principal_of(context))

    @unary
    async def GetCall(self, request: svc.GetCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        return await self._calls.get(request.name)

    @unary
    async def ListCalls(
        self, request: svc.ListCallsRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListCallsResponse:
        size = _page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        state, provider = parse_call_filter(request.filter)
        scope = hashlib.sha256(request.filter.encode()).hexdigest()[:16]
        before = _read_page_token(request.page_token, scope)
        page = await self._calls.store.list_calls(state=state, provider=provider, limit=size, before=before)
        return svc.ListCallsResponse(calls=page.calls, next_page_token=_page_token(page.next_cursor, scope))

    @unary
    async def RenegotiateCall(
        self, request: svc.RenegotiateCallRequest, context: grpc.aio.ServicerContext
    ) -> call_pb2.Call:
        return await self._calls.renegotiate(request, principal_of(context))

    @unary
    async def DropCall(self, request: svc.DropCallRequest, context: grpc.aio.ServicerContext) -> call_pb2.Call:
        return await self._calls.drop(request, principal_of(context))

    async def WatchEvents(
        self, request: svc.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.WatchEventsResponse]:
        # An async generator (not the context.write style), so tracing interceptors that
        # iterate the handler work (opentelemetry-python-contrib#3066).
        try:
            if isinstance(request, Undecodable):
                raise request.violation()
            accept = self._watch_filter(request)
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

    @staticmethod
    def _watch_filter(request: svc.WatchEventsRequest) -> Callable[[event_pb2.QosEvent], bool]:
        violations: list[FieldViolation] = []
        if request.call:
            violations += validation.call_name_violations(request.call, "call")
        known = set(event_pb2.QosEventType.values()) - {0}
        for index, kind in enumerate(request.types):
            if kind not in known:
                violations.append(FieldViolation(f"types[{index}]", f"unknown event type {kind}"))
        if violations:
            raise invalid(violations)
        call, types = request.call, frozenset(request.types)
        return lambda event: (not call or event.call == call) and (not types or event.type in types)

    @unary
    async def GetProvider(self, request: svc.GetProviderRequest, context: grpc.aio.ServicerContext) -> Any:
        if names.parse_provider(request.name) is None:
            raise invalid([FieldViolation("name", "must be providers/{provider}")])
        return provider_proto(self._providers.get(request.name))

    @unary
    async def ListProviders(
        self, request: svc.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListProvidersResponse:
        size = _page_size(request.page_size, MAX_PROVIDER_PAGE, MAX_PROVIDER_PAGE)
        start = _read_page_token(request.page_token, "providers")
        everything = [provider_proto(info) for info in self._providers.all()]
        page = everything[start : start + size]
        following = start + size
        return svc.ListProvidersResponse(
            providers=page, next_page_token=_page_token(following if following < len(everything) else 0, "providers")
        )

    def _link_admin(self, provider_name: str, field: str) -> Any:
        if names.parse_provider(provider_name) is None:
            raise invalid([FieldViolation(field, "must be providers/{provider}")])
        info = self._providers.get(provider_name)
        if not info.capabilities.link_admin:
            raise ServiceError(
                Reason.ERROR_REASON_LINK_ADMIN_UNSUPPORTED,
                f"provider {info.id} has no links to administer",
                metadata={"provider": provider_name},
            )
        return info

    @unary
    async def ListLinks(
        self, request: svc.ListLinksRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListLinksResponse:
        size = _page_size(request.page_size, MAX_PROVIDER_PAGE, MAX_PROVIDER_PAGE)
        info = self._link_admin(request.parent, "parent")
        start = _read_page_token(request.page_token, request.parent)
        links = await self._providers.call(info, "list_links", info.provider.list_links())
        following = start + size
        return svc.ListLinksResponse(
            links=links[start:following],
            next_page_token=_page_token(following if following < len(links) else 0, request.parent),
        )

    @unary
    async def UpdateLink(self, request: svc.UpdateLinkRequest, context: grpc.aio.ServicerContext) -> Any:
        parsed = names.parse_link(request.link.name)
        violations: list[FieldViolation] = []
        if parsed is None:
            violations.append(FieldViolation("link.name", "must be providers/{provider}/links/{link}"))
        for path in request.update_mask.paths:
            if path != "capacity_bytes_per_second":
                violations.append(
                    FieldViolation("update_mask", f"{path!r} cannot be changed; only capacity_bytes_per_second")
                )
        if violations or parsed is None:
            raise invalid(violations)
        info = self._link_admin(names.provider_name(parsed[0]), "link.name")
        links = await self._providers.call(info, "list_links", info.provider.list_links())
        if not any(link.name == request.link.name for link in links):
            raise ServiceError(
                Reason.ERROR_REASON_LINK_NOT_FOUND, f"no link {request.link.name}", metadata={"link": request.link.name}
            )
        # The provider sheds calls and reports each change: finish that even if the caller leaves.
        return await to_completion(
            self._providers.call(
                info, "update_link", info.provider.update_link(parsed[1], request.link.capacity_bytes_per_second)
            )
        )
