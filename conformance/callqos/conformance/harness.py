"""What a check works with: a gRPC client for the target bound to the suite's own principal,
unique call ids and destinations, a LIFO cleanup registry, rich-error decoding, and an event
reader with deadlines (a missing event is a failure, never a hang)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2

from callqos.client.errors import rich_status
from callqos.conformance.connection import Connection
from callqos.conformance.exceptions import CheckFailed, CheckSkipped, TargetTimeout
from callqos.conformance.params import Parameters
from callqos.v1 import (
    call_pb2,
    event_pb2,
    flowspec_pb2,
    provider_pb2,
)
from callqos.v1 import (
    callqos_service_pb2 as svc,
)
from callqos.v1 import (
    callqos_service_pb2_grpc as svc_grpc,
)
from callqos.wire import PRINCIPAL_HEADER, START_SEQUENCE_HEADER

Call = call_pb2.Call
QosEvent = event_pb2.QosEvent
EventType = event_pb2.QosEventType
Level = call_pb2.ServiceLevel
RPC_SECONDS = 5.0  # one unary RPC, before --timeout-scale


@dataclass
class RpcFailure:
    """A failed RPC, decoded: code, ErrorInfo reason/metadata, BadRequest fields, QosRefusal."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    refusal: call_pb2.QosRefusal | None = None

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason or '(no ErrorInfo)'}: {self.message}"


def decode(error: grpc.aio.AioRpcError) -> RpcFailure:
    failure = RpcFailure(error.code(), error.details() or "")
    status = rich_status(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            failure.reason, failure.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            failure.fields = [v.field for v in bad.field_violations]
        elif detail.Is(call_pb2.QosRefusal.DESCRIPTOR):
            failure.refusal = call_pb2.QosRefusal()
            detail.Unpack(failure.refusal)
    return failure


class RpcFailed(Exception):
    """An RPC ended in an error status; carries the decoded failure."""

    def __init__(self, failure: RpcFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


@dataclass
class Session:
    """One run against one target: shared by every check."""

    channel: grpc.aio.Channel
    stub: svc_grpc.CallQosServiceStub
    provider: str  # providers/{id} under test
    caps: provider_pb2.ProviderCapabilities
    params: Parameters
    run_token: str  # unique per run (not seeded: ids must never collide with a previous run)
    rng: random.Random  # seeded: generated values are reproducible
    scale: float = 1.0
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Events before this sequence belong to others; every watch resumes from here.
    cursor: int = 0
    # The highest sequence any watch of this run has delivered.
    newest: int = 0
    # TLS and bearer tokens of --target (None: plaintext, callers named by header only).
    connection: Connection | None = None

    @property
    def principal(self) -> str:
        return f"conformance-{self.run_token}"

    @property
    def intruder(self) -> str:
        return f"conformance-{self.run_token}-intruder"


class CheckContext:
    """What one check uses. Everything it creates is registered and undone in reverse order."""

    def __init__(self, session: Session, check_id: str) -> None:
        self.session = session
        self.check_id = check_id
        self.stub = session.stub
        self.caps = session.caps
        self.params = session.params
        self.provider = session.provider
        self._cleanups: list[tuple[str, Callable[[], Awaitable[Any]]]] = []

    # -- identities -----------------------------------------------------------------------
    def metadata(self, principal: str | None = None) -> tuple[tuple[str, str], ...]:
        who = principal or self.session.principal
        tokens = self.session.connection.bearer(who == self.session.intruder) if self.session.connection else ()
        return ((PRINCIPAL_HEADER, who), *tokens)

    def unique(self) -> str:
        return f"cq{self.session.run_token}-{next(self.session.counter)}"

    def destination(self) -> str:
        return self.params.destination.replace("{unique}", self.unique())

    def rpc_timeout(self) -> float:
        return RPC_SECONDS * self.session.scale

    # -- cleanup --------------------------------------------------------------------------
    def defer(self, description: str, undo: Callable[[], Awaitable[Any]]) -> None:
        self._cleanups.append((description, undo))

    async def cleanup(self) -> list[str]:
        """Undo everything in reverse order; return what could not be undone."""
        errors: list[str] = []
        while self._cleanups:
            description, undo = self._cleanups.pop()
            try:
                await asyncio.wait_for(undo(), self.rpc_timeout() + 1)
            except Exception as exc:  # every failure is reported, none stops the others
                errors.append(f"{description}: {type(exc).__name__}: {exc}")
        return errors

    # -- RPCs -----------------------------------------------------------------------------
    async def rpc(self, method: str, request: Any, principal: str | None = None) -> Any:
        """Call a unary method; an error status raises RpcFailed, a missed deadline TargetTimeout."""
        try:
            return await getattr(self.stub, method)(
                request, metadata=self.metadata(principal), timeout=self.rpc_timeout()
            )
        except grpc.aio.AioRpcError as error:
            failure = decode(error)
            if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TargetTimeout(f"{method} did not answer within {self.rpc_timeout():g}s") from None
            if failure.reason == "PROVIDER_UNAVAILABLE" and failure.metadata.get("cause") == "timeout":
                raise TargetTimeout(f"{method}: the provider did not answer in time ({failure.message})") from None
            raise RpcFailed(failure) from None

    async def expect_error(
        self,
        method: str,
        request: Any,
        code: grpc.StatusCode,
        reason: str | Sequence[str] | None = None,
        principal: str | None = None,
        what: str = "",
    ) -> RpcFailure:
        """The RPC must fail with `code` (and ErrorInfo reason); anything else fails the check."""
        reasons = (reason,) if isinstance(reason, str) else tuple(reason or ())
        try:
            result = await self.rpc(method, request, principal)
        except RpcFailed as out:
            failure = out.failure
            if failure.code != code or (reasons and failure.reason not in reasons):
                raise CheckFailed(
                    f"{what or method}: expected {code.name} {'/'.join(reasons)}, got {failure}"
                ) from None
            return failure
        if isinstance(result, Call) and method == "CreateCall":
            self.register(result)
        raise CheckFailed(f"{what or method}: expected {code.name} {'/'.join(reasons)}, but it succeeded")

    def register(self, call: Call) -> None:
        name = call.name

        async def undo() -> None:
            dropped = await self.rpc("DropCall", svc.DropCallRequest(name=name))
            if dropped.state != Call.State.STATE_DISCONNECTED:
                raise CheckFailed(f"DropCall({name}) left it {Call.State.Name(dropped.state)}")

        self.defer(f"drop {name}", undo)

    def request(
        self,
        qos: flowspec_pb2.QosSpec,
        level: call_pb2.ServiceLevel = Level.SERVICE_LEVEL_NEEDED,
        *,
        call_id: str | None = None,
        request_id: str = "",
        destination: str | None = None,
    ) -> svc.CreateCallRequest:
        return svc.CreateCallRequest(
            call=Call(
                destination=destination or self.destination(),
                provider=self.provider,
                service_level=level,
                requested_qos=qos,
            ),
            call_id=self.unique() if call_id is None else call_id,
            request_id=request_id,
        )

    async def create(
        self, qos: flowspec_pb2.QosSpec, level: call_pb2.ServiceLevel = Level.SERVICE_LEVEL_NEEDED, **kw: Any
    ) -> Call:
        """CreateCall that must succeed (connected); registered for cleanup."""
        request = kw.pop("request", None) or self.request(qos, level, **kw)
        try:
            call: Call = await self.rpc("CreateCall", request)
        except RpcFailed as out:
            raise CheckFailed(
                f"CreateCall({_brief(request.call.requested_qos)}, {Level.Name(level)}) failed: {out.failure}"
            ) from None
        self.register(call)
        if call.state != Call.State.STATE_CONNECTED:
            raise CheckFailed(f"CreateCall returned {call.name} in state {Call.State.Name(call.state)}, not CONNECTED")
        return call

    async def try_create(
        self, qos: flowspec_pb2.QosSpec, level: call_pb2.ServiceLevel = Level.SERVICE_LEVEL_NEEDED, **kw: Any
    ) -> Call | RpcFailure:
        """CreateCall whose refusal is a legitimate answer: returns the call or the failure."""
        request = kw.pop("request", None) or self.request(qos, level, **kw)
        try:
            call: Call = await self.rpc("CreateCall", request)
        except RpcFailed as out:
            return out.failure
        self.register(call)
        return call

    async def get(self, name: str) -> Call:
        try:
            got: Call = await self.rpc("GetCall", svc.GetCallRequest(name=name))
            return got
        except RpcFailed as out:
            raise CheckFailed(f"GetCall({name}) failed: {out.failure}") from None

    async def drop(self, name: str, principal: str | None = None) -> Call:
        try:
            dropped: Call = await self.rpc("DropCall", svc.DropCallRequest(name=name), principal)
            return dropped
        except RpcFailed as out:
            raise CheckFailed(f"DropCall({name}) failed: {out.failure}") from None

    async def renegotiate(self, name: str, qos: flowspec_pb2.QosSpec, **kw: Any) -> Call | RpcFailure:
        try:
            changed: Call = await self.rpc("RenegotiateCall", svc.RenegotiateCallRequest(name=name, qos=qos, **kw))
            return changed
        except RpcFailed as out:
            return out.failure

    # -- links (only when link_admin is advertised) ---------------------------------------
    async def links(self) -> list[provider_pb2.Link]:
        try:
            response = await self.rpc("ListLinks", svc.ListLinksRequest(parent=self.provider))
        except RpcFailed as out:
            raise CheckFailed(
                f"ListLinks({self.provider}) failed although link_admin is advertised: {out.failure}"
            ) from None
        return list(response.links)

    async def reserved(self) -> dict[str, tuple[int, int]]:
        """link name → (sending, receiving) reserved bytes/s."""
        return {
            link.name: (link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second)
            for link in await self.links()
        }

    # -- events ---------------------------------------------------------------------------
    def watch(self, after: int | None, call: str | None = None, principal: str | None = None) -> Any:
        """Open WatchEvents: after `after`, or "from now" when None. The caller cancels it."""
        request = svc.WatchEventsRequest(call=call or "")
        if after is not None:
            request.after_sequence = after
        return self.stub.WatchEvents(request, metadata=self.metadata(principal))

    async def start_sequence(self, stream: Any) -> int | None:
        """The stream's x-callqos-start-sequence initial metadata as a number (None when absent)."""
        try:
            metadata = await asyncio.wait_for(stream.initial_metadata(), self.rpc_timeout())
        except TimeoutError:
            raise TargetTimeout(f"WatchEvents sent no initial metadata within {self.rpc_timeout():g}s") from None
        values = [v for k, v in metadata or () if k == START_SEQUENCE_HEADER]
        if not values:
            return None
        try:
            return int(values[0])
        except ValueError:
            raise CheckFailed(f"{START_SEQUENCE_HEADER} is {values[0]!r}, not a sequence number") from None

    async def watch_failure(self, after: int) -> RpcFailure:
        """WatchEvents(after) that must end in an error status: the decoded failure. An event,
        the end of the stream or silence until the deadline fails the check."""
        stream = self.watch(after)
        try:
            message = await asyncio.wait_for(stream.read(), self.rpc_timeout())
        except grpc.aio.AioRpcError as error:
            return decode(error)
        except TimeoutError:
            raise CheckFailed(
                f"WatchEvents(after_sequence={after}) stayed open without an error for {self.rpc_timeout():g}s"
            ) from None
        finally:
            stream.cancel()
        got = "ended without an error" if message is grpc.aio.EOF else f"delivered {describe([message.event])}"
        raise CheckFailed(f"WatchEvents(after_sequence={after}) {got}")

    async def events(
        self,
        call: str | None,
        *,
        until: Callable[[list[QosEvent]], bool],
        settle: float = 0.25,
        after: int | None = None,
        what: str = "events",
        principal: str | None = None,
    ) -> list[QosEvent]:
        """Events (of `call`, or of every call when None) after the session cursor, read until
        `until(events)` holds and then for `settle` more seconds to catch anything extra."""
        stream = self.watch(self.session.cursor if after is None else after, call, principal)
        try:
            return await self.read(stream, until=until, settle=settle, what=what)
        finally:
            stream.cancel()

    async def read(
        self,
        stream: Any,
        *,
        until: Callable[[list[QosEvent]], bool],
        settle: float = 0.25,
        what: str = "events",
    ) -> list[QosEvent]:
        """Read an open watch until `until(events)` holds, then for `settle` more seconds."""
        wait = self.rpc_timeout()
        got: list[QosEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        settling = False
        while True:
            if not settling and until(got):
                settling, deadline = True, loop.time() + settle * self.session.scale
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                message = await asyncio.wait_for(stream.read(), remaining)
            except TimeoutError:
                break
            except grpc.aio.AioRpcError as error:
                raise CheckFailed(f"WatchEvents failed: {decode(error)}") from None
            if message is grpc.aio.EOF:
                break
            got.append(message.event)
            self.session.newest = max(self.session.newest, message.event.sequence)
        if not until(got):
            raise CheckFailed(f"{what}: expected events did not arrive within {wait:g}s; got {describe(got)}")
        return got


def describe(events: Sequence[QosEvent]) -> str:
    if not events:
        return "[]"
    return (
        "[" + ", ".join(f"#{e.sequence} {EventType.Name(e.type).removeprefix('QOS_EVENT_TYPE_')}" for e in events) + "]"
    )


def _brief(qos: flowspec_pb2.QosSpec) -> str:
    def one(spec: flowspec_pb2.FlowSpec) -> str:
        name = (
            flowspec_pb2.ServiceType.Name(spec.service_type).removeprefix("SERVICE_TYPE_")
            if spec.service_type in flowspec_pb2.ServiceType.values()
            else str(spec.service_type)
        )
        return f"{name}@{spec.token_rate_bytes_per_second}" if spec.HasField("token_rate_bytes_per_second") else name

    return f"send {one(qos.sending)} / recv {one(qos.receiving)}"


def brief(qos: flowspec_pb2.QosSpec) -> str:
    return _brief(qos)


def needs_capacity(ctx: CheckContext) -> int:
    if not ctx.params.reserving:
        raise CheckSkipped(
            "no per-direction capacity is known (max_reservable_bytes_per_second not advertised and no "
            "capacity_bytes_per_second parameter)"
        )
    return ctx.params.capacity


def same(a: Any, b: Any) -> bool:
    """Byte-identical protobuf messages (deterministic serialisation)."""
    return bool(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True))
