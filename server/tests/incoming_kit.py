"""Helpers for the incoming-call tests: principals, lines and calls to them through the public API,
a call's events read back from the stream, and a provider that offers calls from a network."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2
from server_testkit import make_request, owner, qos

from callqos.server.providers import AdmissionRequest, Decision, IncomingOffer
from callqos.server.providers.reference import ReferenceProvider
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, line_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc

Call = call_pb2.Call
State = call_pb2.Call.State
Direction = call_pb2.Call.Direction
Level = call_pb2.ServiceLevel
Disconnect = call_pb2.DisconnectReason
EventType = event_pb2.QosEventType
E = EventType
ST = flowspec_pb2.ServiceType
BOB, CAROL, MALLORY = owner("bob"), owner("carol"), owner("mallory")
BOB_ADDRESS = "sip:bob@example.test"


def mirror(spec: flowspec_pb2.QosSpec) -> flowspec_pb2.QosSpec:
    """Written out here rather than imported: the tests state the rule themselves."""
    return flowspec_pb2.QosSpec(
        sending=spec.receiving, receiving=spec.sending, provider_specific=spec.provider_specific
    )


async def open_line(
    stub: Any,
    address: str = BOB_ADDRESS,
    *,
    as_: Sequence[tuple[str, str]] = BOB,
    line_id: str = "",
    timeout_s: float | None = None,
    request_id: str = "",
) -> line_pb2.Line:
    line = line_pb2.Line(address=address)
    if timeout_s is not None:
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(timeout_s * 1e9))
        line.no_answer_timeout.CopyFrom(duration)
    request = svc.CreateLineRequest(line=line, line_id=line_id, request_id=request_id)
    opened: line_pb2.Line = await stub.CreateLine(request, metadata=as_)
    return opened


async def call_line(
    stub: Any,
    spec: flowspec_pb2.QosSpec | None = None,
    level: int = Level.SERVICE_LEVEL_NEEDED,
    *,
    address: str = BOB_ADDRESS,
    as_: Sequence[tuple[str, str]] = CAROL,
    **kw: Any,
) -> tuple[Call, Call]:
    """Carol calls `address`: (her leg, the offered leg)."""
    caller: Call = await stub.CreateCall(
        make_request(spec or qos(400_000, recv_rate=100_000), level, destination=address, **kw), metadata=as_
    )
    callee: Call = await stub.GetCall(svc.GetCallRequest(name=caller.peer))
    return caller, callee


def answer_request(name: str, spec: flowspec_pb2.QosSpec | None = None, **kw: Any) -> svc.AnswerCallRequest:
    request = svc.AnswerCallRequest(name=name, **kw)
    if spec is not None:
        request.qos.CopyFrom(spec)
    return request


async def get(stub: Any, name: str) -> Call:
    call: Call = await stub.GetCall(svc.GetCallRequest(name=name))
    return call


async def events_of(stub: Any, call: str = "", *, line: str = "", idle: float = 0.4) -> list[event_pb2.QosEvent]:
    """Every retained event (of `call`, or of calls on `line`), read until the stream is idle."""
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=call, line=line))
    events: list[event_pb2.QosEvent] = []
    try:
        while True:
            try:
                message = await asyncio.wait_for(stream.read(), idle)
            except TimeoutError:
                return events
            events.append(message.event)
    finally:
        stream.cancel()


def kinds(events: Sequence[event_pb2.QosEvent]) -> list[int]:
    return [event.type for event in events]


async def wait_for_state(stub: Any, name: str, state: int, within: float = 10.0) -> Call:
    async with asyncio.timeout(within):
        while True:
            call = await get(stub, name)
            if call.state == state:
                return call
            await asyncio.sleep(0.05)


class NetworkProvider(ReferenceProvider):
    """The reference provider with a network that calls come in from: a test offers a call with
    `ring(...)`, as the provider would when its network delivers one, and reads what the host
    told it (`admitted`, `ended`)."""

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.admitted: list[AdmissionRequest] = []
        self.admitted_on: list[asyncio.AbstractEventLoop] = []  # the loop each admit ran on
        self.ended: list[tuple[str, int]] = []

    def capabilities(self) -> provider_pb2.ProviderCapabilities:
        caps = super().capabilities()
        caps.incoming_calls = True
        return caps

    async def admit(self, request: AdmissionRequest) -> Decision:
        self.admitted.append(request)
        self.admitted_on.append(asyncio.get_running_loop())
        return await super().admit(request)

    async def offer_ended(self, call: str, reason: int) -> None:
        self.ended.append((call, reason))

    async def ring(
        self,
        destination: str = BOB_ADDRESS,
        spec: flowspec_pb2.QosSpec | None = None,
        level: int = Level.SERVICE_LEVEL_NEEDED,
        caller_id: str = "tel:+15550100",
    ) -> str | None:
        return await self.host.offer_call(
            IncomingOffer(destination, caller_id, level, spec or qos(300_000, recv_rate=50_000))
        )

    async def hang_up(self, call: str) -> None:
        from callqos.server.providers import ProviderChange

        await self.host.report_change(ProviderChange(call, None, "the caller hung up"))


class SilentProvider(ReferenceProvider):
    """A provider that does not advertise incoming_calls but tries to offer one anyway."""

    async def ring(self) -> str | None:
        return await self.host.offer_call(IncomingOffer(BOB_ADDRESS, "x", Level.SERVICE_LEVEL_NEEDED, qos(1000)))
