"""PROTO: what a provider in another process promises on the provider protocol itself
(`callqos.provider.v1`), which the API cannot show. The suite launches an instance of the provider
of its own (--provider-command), exactly as a hosting server does, and speaks the protocol to it;
the server under certification keeps its own instance, untouched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

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
BE_QOS = QosSpec(sending=best_effort(), receiving=best_effort())


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
    async with own_instance(ctx) as stub:
        info = await stub.GetProviderInfo(pb.GetProviderInfoRequest(), timeout=ctx.rpc_timeout())
        if not info.decide_stream:
            raise CheckSkipped("not applicable: the provider does not serve the Decide stream")
        template = ctx.request(ctx.params.feasible or BE_QOS, Level.SERVICE_LEVEL_IF_AVAILABLE).call
        calls: list[str] = []
        stream = stub.Decide()
        for _ in range(BURSTS):
            burst = [f"calls/proto-001-{ctx.unique()}" for _ in range(PAIRS)]
            await _release_right_after_admit(ctx, stream, burst, template, first=2 * len(calls))
            calls += burst
        await stream.done_writing()
        stream.cancel()
        listed = await stub.ListReservations(pb.ListReservationsRequest(), timeout=ctx.rpc_timeout())
        held = sorted({reservation.call for reservation in listed.reservations} & set(calls))
        if held:
            raise CheckFailed(
                f"[REMOTE-4] {len(held)} of {len(calls)} calls, each released right after its Admit on the Decide "
                f"stream, are still reserved (e.g. {held[0]}): a Release did not win over the Admit written before it"
            )
        if info.capabilities.link_admin:
            links = await stub.ListLinks(pb.ListLinksRequest(), timeout=ctx.rpc_timeout())
            busy = [
                link.name
                for link in links.links
                if link.sending_reserved_bytes_per_second or link.receiving_reserved_bytes_per_second
            ]
            if busy:
                raise CheckFailed(f"[REMOTE-4] after every call was released, {busy[0]} still reserves capacity")


async def _release_right_after_admit(
    ctx: CheckContext, stream: Any, calls: list[str], template: Any, *, first: int
) -> None:
    """Write Admit(call) and at once Release(call) for each of `calls` (request ids from
    `first` + 1), then read every answer: each request answered, each Release a success (an Admit
    may be granted, refused or aborted)."""
    for number, call in enumerate(calls):
        admit = pb.AdmitRequest(
            call=call,
            request_id=f"admit-{number}",
            destination=template.destination,
            service_level=template.service_level,
            qos=template.requested_qos,
            principal="conformance",
        )
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
