"""PROTO: what a provider in another process promises on the provider protocol itself
(`callqos.provider.v1`), which the API cannot show. The suite launches an instance of the provider
of its own (--provider-command), exactly as a hosting server does, and speaks the protocol to it;
the server under certification keeps its own instance, untouched."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

from callqos.conformance.checks.core_api import BE_QOS
from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import CheckContext, Level
from callqos.conformance.rules import QosSpec, best_effort
from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc

# Admit-then-Release pairs, written in bursts on one stream: a kit that answers a stream's requests
# concurrently without taking them in the stream's order loses some of the races, whichever way its
# scheduler leans. The Go kit before its fix lost 1 to 81 of these 512 and failed in 39 runs of 40.
PAIRS = 64
BURSTS = 8
PAUSE_SECONDS = 0.002
START_SECONDS = 20.0  # the provider's handshake, before --timeout-scale


@contextlib.asynccontextmanager
async def own_instance(ctx: CheckContext) -> AsyncIterator[pb_grpc.ProviderServiceStub]:
    """A fresh instance of the --provider-command provider, launched as a hosting server launches
    one (its handshake, its environment), restored with no calls; stopped when the block ends."""
    server = ctx.session.server
    settings: dict[str, Any] = server.settings if server is not None else {}
    if server is None or server.plugin != "remote" or "command" not in settings:
        raise CheckSkipped("mode: needs --provider-command (the suite launches an instance of its own to speak to)")
    # The launcher is the server's own: the suite runs a server in this mode, so it is installed.
    from callqos.server.remote.process import PluginProcess, PluginStartError

    process = PluginProcess(settings["command"], provider="providers/remote-check", env=settings.get("env"))
    try:
        handshake = await process.start(START_SECONDS * ctx.session.scale)
    except PluginStartError as failed:
        raise CheckFailed(f"a second instance of the provider did not start: {failed}") from None
    try:
        async with grpc.aio.insecure_channel(handshake.target) as channel:
            stub = pb_grpc.ProviderServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
            await stub.Restore(pb.RestoreRequest(), timeout=ctx.rpc_timeout())
            yield stub
    finally:
        await process.stop()


@dataclasses.dataclass
class Instance:
    """The suite's own instance of the provider, with what the checks on it share."""

    stub: pb_grpc.ProviderServiceStub
    info: pb.GetProviderInfoResponse
    ask: _Asker
    template: Any  # the Call the suite would create: its destination, level and feasible QoS


@contextlib.asynccontextmanager
async def own_session(ctx: CheckContext) -> AsyncIterator[Instance]:
    """`own_instance`, with its provider info, one way of asking for decisions, and the call to ask for."""
    async with own_instance(ctx) as stub:
        info = await stub.GetProviderInfo(pb.GetProviderInfoRequest(), timeout=ctx.rpc_timeout())
        ask = _Asker(ctx, stub, streamed=info.decide_stream)
        try:
            template = ctx.request(ctx.params.feasible or BE_QOS, Level.SERVICE_LEVEL_IF_AVAILABLE).call
            yield Instance(stub, info, ask, template)
        finally:
            await ask.close()


async def _admitted(own: Instance, call: str) -> pb.AdmitResponse:
    """`call` admitted with the feasible flowspec (the check does not apply where an idle instance refuses it)."""
    answer = await own.ask.decide(pb.DecideRequest(admit=_admission(own.template, call, "r1")))
    if not _granted(answer):
        raise CheckSkipped(f"not applicable: an idle instance did not grant the feasible flowspec ({_brief(answer)})")
    return answer.admit


def _granted(answer: pb.DecideResponse) -> bool:
    """Whether `answer` is an Admit's grant."""
    return answer.WhichOneof("response") == "admit" and answer.admit.WhichOneof("decision") == "grant"  # type: ignore[no-any-return]


@check(
    "PROTO-001",
    "A Release written after an Admit on the Decide stream wins: nothing stays reserved",
    MUST,
    "concurrency",
    spec=("REMOTE-4",),
    source="provider_service.proto Decide; project decision",
    timeout=60,
)
async def release_after_admit(ctx: CheckContext) -> None:
    """On a fresh instance of the provider, restored with no calls: eight bursts of 64 pairs of
    Admit(call) and Release(call), each Release written right after its Admit on one Decide stream,
    as a host does when it gives up on an admission. Every request is answered, every Release
    succeeds; afterwards ListReservations lists none of the calls, and the provider's links (if it
    has any) reserve nothing."""
    async with own_session(ctx) as own:
        if own.ask.stream is None:
            raise CheckSkipped("not applicable: the provider does not serve the Decide stream")
        calls: list[str] = []
        for _ in range(BURSTS):
            burst = [f"calls/proto-001-{ctx.unique()}" for _ in range(PAIRS)]
            await _release_right_after_admit(ctx, own.ask.stream, burst, own.template, first=2 * len(calls))
            calls += burst
        listed, links = await _holdings(ctx, own)
        held = sorted(set(listed) & set(calls))
        if held:
            raise CheckFailed(
                f"[REMOTE-4] {len(held)} of {len(calls)} calls, each released right after its Admit on the Decide "
                f"stream, are still reserved (e.g. {held[0]}): a Release did not win over the Admit written before it"
            )
        busy = _reserving(links)
        if busy:
            raise CheckFailed(f"[REMOTE-4] after every call was released, {busy[0]} still reserves capacity")


@check(
    "PROTO-002",
    "A repeated Admit or Renegotiate gets the first answer and reserves once",
    MUST,
    "concurrency",
    spec=("REMOTE-4",),
    source="provider_service.proto AdmitRequest.request_id; AIP-155",
    timeout=60,
)
async def repeated_decisions(ctx: CheckContext) -> None:
    """On a fresh instance of the provider: Admit(call, request id r1) twice, then (when it
    renegotiates and the call was granted) Renegotiate(call, r2) twice, each on the way the host
    would send it (the Decide stream when served, else the RPC). Each repeat gets exactly the first
    answer, and reserves nothing more: the provider lists the call once, its links reserve what
    they did after the first; after a Release, nothing is reserved."""
    async with own_session(ctx) as own:
        info, ask, template = own.info, own.ask, own.template
        call = f"calls/proto-002-{ctx.unique()}"
        admit = _admission(template, call, "r1")
        first = await ask.decide(pb.DecideRequest(admit=admit))
        held = await _holdings(ctx, own)
        await _same_answer(ctx, own, pb.DecideRequest(admit=admit), first, held, "Admit")
        if _granted(first) and info.capabilities.renegotiation:
            qos = ctx.params.feasible or BE_QOS
            renegotiate = pb.RenegotiateRequest(
                call=call,
                request_id="r2",
                destination=template.destination,
                service_level=Level.SERVICE_LEVEL_BEST_EFFORT,
                qos=QosSpec(provider_specific=qos.provider_specific, sending=best_effort(), receiving=best_effort()),
                principal="conformance",
                current_qos=first.admit.grant.qos,
            )
            again = await ask.decide(pb.DecideRequest(renegotiate=renegotiate))
            held = await _holdings(ctx, own)
            await _same_answer(ctx, own, pb.DecideRequest(renegotiate=renegotiate), again, held, "Renegotiate")
        await ask.decide(pb.DecideRequest(release=pb.ReleaseRequest(call=call, request_id="r3")))
        listed, links = await _holdings(ctx, own)
        if call in listed or _reserving(links):
            raise CheckFailed(f"[REMOTE-4] after its Release, {call} still holds: {listed or links}")


@check(
    "PROTO-003",
    "Restore makes the provider hold exactly the calls listed",
    MUST,
    "concurrency",
    spec=("REMOTE-2",),
    source="provider_service.proto Restore; project decision",
    timeout=60,
)
async def restore_holds_what_is_listed(ctx: CheckContext) -> None:
    """On a fresh instance of the provider: Admit calls A and B; then Restore listing A (at its
    granted QoS) and C (never admitted here, as after the provider's own restart), twice (it is
    safe to repeat). Afterwards the provider lists A and C, each at what it held or re-took, unless
    the Restore answered a change dropping it, and never B; after releasing A and C, nothing."""
    async with own_session(ctx) as own:
        stub, ask, template = own.stub, own.ask, own.template
        kept, forgotten, retaken = (f"calls/proto-003-{ctx.unique()}" for _ in range(3))
        granted = {call: await _admitted(own, call) for call in (kept, forgotten)}
        held = [
            pb.HeldCall(
                call=kept,
                destination=template.destination,
                service_level=template.service_level,
                qos=granted[kept].grant.qos,
            ),
            pb.HeldCall(
                call=retaken,
                destination=template.destination,
                service_level=template.service_level,
                qos=template.requested_qos,
            ),
        ]
        for attempt in ("a Restore", "the same Restore again"):
            restored = await stub.Restore(pb.RestoreRequest(calls=held), timeout=ctx.rpc_timeout())
            dropped = {change.call for change in restored.changes if not change.HasField("qos")}
            listed, _ = await _holdings(ctx, own)
            expected = {kept, retaken} - dropped
            ours = set(listed) & {kept, forgotten, retaken}
            if ours != expected:
                raise CheckFailed(
                    f"[REMOTE-2] after {attempt} listing {kept} and {retaken} (not {forgotten}), the provider "
                    f"lists {sorted(ours)}, expected {sorted(expected)}"
                )
        for call in (kept, retaken):
            await ask.decide(pb.DecideRequest(release=pb.ReleaseRequest(call=call, request_id="r2")))
        listed, links = await _holdings(ctx, own)
        left = set(listed) & {kept, forgotten, retaken}
        if left or _reserving(links):
            raise CheckFailed(f"[REMOTE-2] after releasing what it held, the provider still holds {left or links}")


@check(
    "PROTO-004",
    "A change the provider made is replayed until it is acknowledged, and not after",
    MUST,
    "concurrency",
    spec=("REMOTE-3",),
    source="provider_service.proto WatchChanges, AckChanges",
    needs=("link_admin", "provider_initiated_changes"),
    timeout=60,
)
async def changes_replayed_until_acknowledged(ctx: CheckContext) -> None:
    """On a fresh instance of the provider: a call admitted, then its link shrunk to 0 with
    UpdateLink, so that the provider drops (or degrades) the call and reports the change. A
    WatchChanges stream delivers it; a second stream, opened without acknowledging it, delivers it
    again (same sequence, same change); after AckChanges up to it, a third stream does not."""
    async with own_session(ctx) as own:
        stub, info = own.stub, own.info
        call = f"calls/proto-004-{ctx.unique()}"
        await _admitted(own, call)
        busy = _reserving((await _holdings(ctx, own))[1])
        if not busy:
            raise CheckSkipped("not applicable: the feasible flowspec reserves nothing on any link")
        link = "links/" + busy[0].rpartition("/")[2]  # UpdateLinkRequest.link is `links/{link}`
        await stub.UpdateLink(
            pb.UpdateLinkRequest(link=link, capacity_bytes_per_second=0, request_id="shrink"),
            timeout=ctx.rpc_timeout(),
        )
        first = await _change_of(ctx, own, call)
        if first is None:
            raise CheckFailed(f"[REMOTE-3] shrinking {busy[0]} to 0 reported no change of {call} on WatchChanges")
        again = await _change_of(ctx, own, call)
        if again != first:
            raise CheckFailed(
                f"[REMOTE-3] a change not acknowledged was not replayed to the next WatchChanges: first "
                f"{_brief(first)}, then {_brief(again)}"
            )
        await stub.AckChanges(
            pb.AckChangesRequest(instance_id=info.instance_id, sequence=first.sequence), timeout=ctx.rpc_timeout()
        )
        after = await _change_of(ctx, own, call, wait=1.0)
        if after is not None and after.sequence <= first.sequence:
            raise CheckFailed(f"[REMOTE-3] a change acknowledged was replayed: {_brief(after)}")


async def _change_of(ctx: CheckContext, own: Instance, call: str, *, wait: float = 0.0) -> pb.Change | None:
    """The first change of `call` a new WatchChanges stream (from the start) delivers within `wait`
    seconds (the RPC deadline when 0), or None."""
    stream = own.stub.WatchChanges(pb.WatchChangesRequest(instance_id=own.info.instance_id, after_sequence=0))
    try:
        async with asyncio.timeout(wait or ctx.rpc_timeout()):
            async for response in stream:
                if response.change.call == call:
                    found: pb.Change = response.change
                    return found
    except TimeoutError:
        pass
    finally:
        stream.cancel()
    return None


def _admission(template: Any, call: str, request_id: str) -> pb.AdmitRequest:
    """An Admit of `call` asking what `template` (a Call the suite would create) asks."""
    return pb.AdmitRequest(
        call=call,
        request_id=request_id,
        destination=template.destination,
        service_level=template.service_level,
        qos=template.requested_qos,
        principal="conformance",
    )


Holdings = tuple[dict[str, int], dict[str, tuple[int, int]]]


async def _holdings(ctx: CheckContext, own: Instance) -> Holdings:
    """How many times ListReservations lists each call, and what each link reserves (if it has any)."""
    listed: dict[str, int] = {}
    for reservation in (
        await own.stub.ListReservations(pb.ListReservationsRequest(), timeout=ctx.rpc_timeout())
    ).reservations:
        listed[reservation.call] = listed.get(reservation.call, 0) + 1
    links: dict[str, tuple[int, int]] = {}
    if own.info.capabilities.link_admin:
        for link in (await own.stub.ListLinks(pb.ListLinksRequest(), timeout=ctx.rpc_timeout())).links:
            links[link.name] = (link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second)
    return listed, links


def _reserving(links: dict[str, tuple[int, int]]) -> list[str]:
    """The links (of `_holdings`) that reserve anything, in either direction."""
    return [name for name, reserved in links.items() if any(reserved)]


async def _same_answer(
    ctx: CheckContext, own: Instance, request: pb.DecideRequest, first: pb.DecideResponse, held: Holdings, method: str
) -> None:
    """`request` sent again gets `first` again, and the provider holds what it held before."""
    repeat = await own.ask.decide(request)
    first.id = repeat.id = 0
    if repeat != first:
        raise CheckFailed(
            f"[REMOTE-4] a repeated {method} (same call and request id) was answered {_brief(repeat)}, "
            f"the first time {_brief(first)}"
        )
    now = await _holdings(ctx, own)
    if now != held:
        raise CheckFailed(f"[REMOTE-4] a repeated {method} changed what the provider holds: {held} before, {now} after")
    listed = now[0]
    twice = [call for call, count in listed.items() if count > 1]
    if twice:
        raise CheckFailed(f"[REMOTE-4] ListReservations lists {twice[0]} {listed[twice[0]]} times")


def _brief(message: Message | None) -> str:
    """`message` on one line, cut to 300 characters, for a failure's reason."""
    if message is None:
        return "nothing"
    return " ".join(str(message).split())[:300] or "(empty)"


class _Asker:
    """One decision at a time, the way the host sends it: on one Decide stream when the provider
    serves it, else by RPC."""

    def __init__(self, ctx: CheckContext, stub: pb_grpc.ProviderServiceStub, *, streamed: bool) -> None:
        self.ctx = ctx
        self.stub = stub
        self.stream: Any = stub.Decide() if streamed else None
        self.next = 0

    async def decide(self, request: pb.DecideRequest) -> pb.DecideResponse:
        timeout = self.ctx.rpc_timeout()
        which = request.WhichOneof("request")
        if self.stream is None:
            try:
                if which == "admit":
                    return pb.DecideResponse(admit=await self.stub.Admit(request.admit, timeout=timeout))
                if which == "renegotiate":
                    return pb.DecideResponse(
                        renegotiate=await self.stub.Renegotiate(request.renegotiate, timeout=timeout)
                    )
                return pb.DecideResponse(release=await self.stub.Release(request.release, timeout=timeout))
            except grpc.aio.AioRpcError as failed:
                return pb.DecideResponse(
                    failure=pb.DecideFailure(code=failed.code().value[0], message=failed.details() or "")
                )
        self.next += 1
        request.id = self.next
        await self.stream.write(request)
        async with asyncio.timeout(timeout):
            answer = await self.stream.read()
        if answer is grpc.aio.EOF or answer.id != request.id:
            raise CheckFailed(f"[REMOTE-4] the Decide stream answered {answer!r} to request {request.id}")
        assert isinstance(answer, pb.DecideResponse)
        return answer

    async def close(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stream.done_writing()
            self.stream.cancel()


async def _release_right_after_admit(
    ctx: CheckContext, stream: Any, calls: list[str], template: Any, *, first: int
) -> None:
    """Write Admit(call) and at once Release(call) for each of `calls` (request ids from
    `first` + 1), then read every answer: each request answered, each Release a success (an Admit
    may be granted, refused or aborted)."""
    for number, call in enumerate(calls):
        admit = _admission(template, call, f"admit-{number}")
        await stream.write(pb.DecideRequest(id=first + 2 * number + 1, admit=admit))
        release = pb.ReleaseRequest(call=call, request_id=f"release-{number}")
        await stream.write(pb.DecideRequest(id=first + 2 * number + 2, release=release))
        # A pause after each pair: the two arrive together and the provider has taken them before
        # the next pair comes, the moment a kit that hands each request to a task of its own is
        # likeliest to start the Release first (Go's scheduler runs the newest goroutine first).
        await asyncio.sleep(PAUSE_SECONDS)
    answered: dict[int, pb.DecideResponse] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ctx.rpc_timeout() * 2):
            while len(answered) < 2 * len(calls):
                answer = await stream.read()
                if answer is grpc.aio.EOF:
                    break
                answered[answer.id] = answer
    missing = 2 * len(calls) - len(answered)
    if missing:
        raise CheckFailed(f"[REMOTE-4] {missing} of {2 * len(calls)} requests on the Decide stream got no answer")
    for number, call in enumerate(calls):
        released = answered.get(first + 2 * number + 2)
        if released is None or released.WhichOneof("response") != "release":
            raise CheckFailed(f"[REMOTE-4] the Release of {call}, written right after its Admit, failed: {released}")
