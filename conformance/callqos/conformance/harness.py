"""What a check works with: a gRPC client for the target bound to the suite's own principal,
unique call ids and destinations, a LIFO cleanup registry, rich-error decoding, an event reader
with deadlines (a missing event is a failure, never a hang), and — for every grant, refusal and
counter-offer a check receives — the suite's own verdict on it (`verify`): a check fails on a bad
answer even when the server in front of the provider let it through."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2

from callqos.client.errors import rich_status
from callqos.conformance.connection import Connection
from callqos.conformance.exceptions import CheckFailed, CheckSkipped, TargetTimeout
from callqos.conformance.params import Parameters
from callqos.conformance.rules import ST, qos_rates
from callqos.conformance.verify import Limits, grant_problems, refusal_problems
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

if TYPE_CHECKING:
    from callqos.conformance.target import SpawnedServer

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
    descriptions: list[str] = field(default_factory=list)  # of the BadRequest's violations, in order
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
            failure.descriptions = [v.description for v in bad.field_violations]
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
    # The server the suite started and may restart (--provider); None for --target.
    server: SpawnedServer | None = None
    target: str = ""  # HOST:PORT
    # Seconds the model-based checker may spend generating histories (0: its default), or a number
    # of histories to run whatever the time.
    budget_seconds: float = 0.0
    histories: int = 0
    seed: int = 0
    # How many histories the model-based checker ran (the failing one included): with the seed, what
    # `--histories N` needs to run them again, whatever the time budget let it run.
    histories_run: int = 0
    # Set when the target holds capacity for no call and could not be made to release it (CORE-IDLE-001).
    leaked: str = ""
    # What the provider advertised, for verifying every answer.
    limits: Limits = field(default_factory=lambda: Limits(frozenset(), 0, 0, 0, False))
    # The owners the target recorded on calls the suite made: its principals, or under --token the
    # names the server gave the suite's credentials (SEC-1), which the suite is not told otherwise.
    owners: set[str] = field(default_factory=set)

    def ours(self, owner: str) -> bool:
        """Whether a call with this owner is one the suite made."""
        return owner in (self.principal, self.intruder) or owner in self.owners

    @property
    def principal(self) -> str:
        return f"conformance-{self.run_token}"

    @property
    def restartable(self) -> bool:
        return self.server is not None

    async def restart(self) -> None:
        """Restart the server the suite owns (SIGTERM, then start on the same data directory and
        port) and reconnect. Only with `--provider`."""
        if self.server is None:
            raise CheckSkipped("mode: the suite does not own the target's server (--target), so it cannot restart it")
        # The old channel stays open while the server shuts down, so its open streams see how the
        # server ends them (WATCH-9); it is closed once the new one is up.
        old = self.channel
        await asyncio.to_thread(self.server.restart)
        await old.close()
        self.channel = grpc.aio.insecure_channel(self.server.target)
        self.stub = svc_grpc.CallQosServiceStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        await asyncio.wait_for(self.channel.channel_ready(), RPC_SECONDS * self.scale)

    @property
    def intruder(self) -> str:
        return f"conformance-{self.run_token}-intruder"


class CheckContext:
    """What one check uses. Everything it creates is registered and undone in reverse order."""

    def __init__(self, session: Session, check_id: str) -> None:
        self.session = session
        self.check_id = check_id
        self.caps = session.caps
        self.params = session.params
        self.provider = session.provider
        self._cleanups: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        # The service level of each call this check made, for verifying its renegotiations.
        self._levels: dict[str, int] = {}
        # A runnable reproduction of the failure, when the check can write one (model-based checker),
        # and what a passing check wants said about what it did (how many histories it ran).
        self.reproduction = ""
        self.detail = ""

    @property
    def stub(self) -> svc_grpc.CallQosServiceStub:
        return self.session.stub  # replaced when the server restarts

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
            if method == "CreateCall" and request.call_id:
                self.verify_failure(f"calls/{request.call_id}", failure)
            elif method == "RenegotiateCall":
                self.verify_failure(request.name, failure)
            return failure
        if isinstance(result, Call) and method == "CreateCall":
            self.register(result)
        raise CheckFailed(f"{what or method}: expected {code.name} {'/'.join(reasons)}, but it succeeded")

    def register(self, call: Call) -> None:
        name = call.name
        if call.owner:
            self.session.owners.add(call.owner)

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
            self.verify_failure(f"calls/{request.call_id}" if request.call_id else "", out.failure)
            raise CheckFailed(
                f"CreateCall({_brief(request.call.requested_qos)}, {Level.Name(request.call.service_level)}) failed: "
                f"{out.failure}"
            ) from None
        self.register(call)
        if call.state != Call.State.STATE_CONNECTED:
            raise CheckFailed(f"CreateCall returned {call.name} in state {Call.State.Name(call.state)}, not CONNECTED")
        self.verify_created(request, call)
        return call

    async def try_create(
        self, qos: flowspec_pb2.QosSpec, level: call_pb2.ServiceLevel = Level.SERVICE_LEVEL_NEEDED, **kw: Any
    ) -> Call | RpcFailure:
        """CreateCall whose refusal is a legitimate answer: returns the call or the failure."""
        request = kw.pop("request", None) or self.request(qos, level, **kw)
        try:
            call: Call = await self.rpc("CreateCall", request)
        except RpcFailed as out:
            self.verify_failure(f"calls/{request.call_id}" if request.call_id else "", out.failure)
            return out.failure
        self.register(call)
        if call.state == Call.State.STATE_CONNECTED:
            self.verify_created(request, call)
        return call

    # -- the suite's own verdict on every answer (verify.py) ------------------------------
    def verify_created(self, request: svc.CreateCallRequest, call: Call) -> None:
        """A connected call's grant, judged against what was asked at its level."""
        level = request.call.service_level or Level.SERVICE_LEVEL_NEEDED
        self._levels[call.name] = level
        # A direction the request left out asked for best effort (FLOW-20).
        asked = flowspec_pb2.QosSpec()
        asked.CopyFrom(request.call.requested_qos)
        for direction in ("sending", "receiving"):
            if not asked.HasField(direction):
                getattr(asked, direction).service_type = ST.SERVICE_TYPE_BEST_EFFORT
        problems = grant_problems(level, asked, call.granted_qos, self.session.limits)
        if call.service_level != level:
            clause = {Level.SERVICE_LEVEL_IF_AVAILABLE: "LEVEL-2", Level.SERVICE_LEVEL_BEST_EFFORT: "LEVEL-3"}.get(
                level, "LEVEL-4" if not request.call.service_level else "LEVEL-1"
            )
            problems.append(
                f"[{clause}] the call was recorded at {Level.Name(call.service_level)}, asked {Level.Name(level)}"
            )
        if problems:
            raise CheckFailed(
                f"CreateCall({_brief(request.call.requested_qos)}, {Level.Name(level)}) → {call.name} granted "
                f"{_brief(call.granted_qos)}: " + "; ".join(problems)
            )

    def verify_failure(self, name: str, failure: RpcFailure) -> None:
        """A QoS refusal names the call and offers only what can be granted."""
        if failure.reason in ("QOS_UNAVAILABLE", "QOS_POLICY_FAILURE") and name:
            problems = refusal_problems(name, failure.refusal, self.session.limits)
            if problems:
                raise CheckFailed(f"the refusal of {name} ({failure}): " + "; ".join(problems))

    def verify_renegotiated(self, name: str, asked: flowspec_pb2.QosSpec, level: int, call: Call) -> None:
        """A renegotiation's grant: the directions asked NO_CHANGE are judged by the checks that
        know the call's previous QoS; the others like a new call's."""
        resolved = flowspec_pb2.QosSpec()
        resolved.CopyFrom(asked)
        for direction in ("sending", "receiving"):
            # NO_CHANGE, or a direction left out (FLOW-20), keeps what the call had.
            if not asked.HasField(direction) or getattr(asked, direction).service_type == ST.SERVICE_TYPE_NO_CHANGE:
                getattr(resolved, direction).CopyFrom(getattr(call.granted_qos, direction))
        problems = grant_problems(level, resolved, call.granted_qos, self.session.limits)
        if problems:
            raise CheckFailed(
                f"RenegotiateCall({name} → {_brief(asked)}) granted {_brief(call.granted_qos)}: " + "; ".join(problems)
            )

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
        """RenegotiateCall: the changed call, or the failure (a refusal being a legitimate answer);
        either is verified like a new call's answer."""
        try:
            changed: Call = await self.rpc("RenegotiateCall", svc.RenegotiateCallRequest(name=name, qos=qos, **kw))
        except RpcFailed as out:
            self.verify_failure(name, out.failure)
            return out.failure
        level = kw.get("service_level") or self._levels.get(name, 0)
        if level:
            self._levels[name] = level
            self.verify_renegotiated(name, qos, level, changed)
        return changed

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

    async def connected_calls(self, *, strict: bool = True) -> list[Call]:
        """Every connected call of the provider under test, whoever owns it (ListCalls, paged). A call the
        filter should have left out fails the check (API-6); not `strict` (the idle verification, which
        must work even then), such calls are only left out."""
        calls: list[Call] = []
        token = ""
        for _ in range(1000):  # bounded: 500 calls a page
            page = await self.rpc(
                "ListCalls",
                svc.ListCallsRequest(
                    page_size=500, page_token=token, filter=f'state = CONNECTED AND provider = "{self.provider}"'
                ),
            )
            for call in page.calls:
                if call.state != Call.State.STATE_CONNECTED or call.provider != self.provider:
                    if not strict:
                        continue
                    raise CheckFailed(
                        f"[API-6] ListCalls(filter = state = CONNECTED AND provider = {self.provider!r}) returned "
                        f"{call.name}, {Call.State.Name(call.state)} on {call.provider}"
                    )
            calls.extend(c for c in page.calls if c.state == Call.State.STATE_CONNECTED and c.provider == self.provider)
            token = page.next_page_token
            if not token:
                break
        return calls

    async def accounting(self) -> str:
        """Whether the links report exactly what the connected calls hold (SPEC.md LINK-2, GRANT-1):
        '' when they do, else what differs. The sums are compared over all links, so the check
        needs no knowledge of how the provider routes a destination."""
        links = await self.links()
        calls = await self.connected_calls()
        held = [0, 0]
        for call in calls:
            for index, rate in enumerate(qos_rates(call.granted_qos)):
                held[index] += rate
        reported = [
            sum(link.sending_reserved_bytes_per_second for link in links),
            sum(link.receiving_reserved_bytes_per_second for link in links),
        ]
        if reported == held:
            return ""
        return (
            f"the links report {reported[0]} B/s sending and {reported[1]} B/s receiving reserved, while the "
            f"{len(calls)} connected calls hold {held[0]} and {held[1]} B/s by their granted QoS (GRANT-1)"
        )

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

    async def watch_failure(self, after: int, principal: str | None = None) -> RpcFailure:
        """WatchEvents(after) that must end in an error status: the decoded failure. An event,
        the end of the stream or silence until the deadline fails the check."""
        stream = self.watch(after, principal=principal)
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


def needs_capacity(ctx: CheckContext, *, whole: bool = True) -> int:
    """The per-direction capacity the check sizes its calls by. A check that needs the `whole` of it free
    (fills, shedding, admitting what fits) does not run on a target that leaked capacity it could not be
    made to release (see idle.py): it would only fail for want of it."""
    if not ctx.params.reserving:
        raise CheckSkipped(
            "no per-direction capacity is known (max_reservable_bytes_per_second not advertised and no "
            "capacity_bytes_per_second parameter)"
        )
    if whole and ctx.session.leaked:
        raise CheckSkipped(f"not run: it needs the whole capacity free, and {ctx.session.leaked}")
    return ctx.params.capacity


def same(a: Any, b: Any) -> bool:
    """Byte-identical protobuf messages (deterministic serialisation)."""
    return bool(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True))
