"""Calls from the network of a provider in another process (conformance/SPEC.md REMOTE-8): the
protocol's own rules for offers, at both ends. What a caller notices — an offer rings, is
answered, rejected, rung out, withdrawn — is test_incoming_network.py, run both in process and
out of process; here: each offer is offered once however the connection breaks, a provider that
offers is answered even after the host reconnects, and an ended offer the provider could not be
told is told when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from incoming_kit import (
    BOB,
    BOB_ADDRESS,
    Disconnect,
    Level,
    NetworkProvider,
    SilentProvider,
    State,
    open_line,
    wait_for_state,
)
from remote_kit import Kit, dialled, kit, protocol_stub, remote_of, until
from server_testkit import qos

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.server import testing
from callqos.server.providers import IncomingOffer
from callqos.server.remote.kit import ProviderServicer
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

NET = "providers/net"


@pytest.fixture
async def network_kit() -> AsyncIterator[Kit]:
    async with kit(NetworkProvider) as served:
        yield served


def offer(destination: str = BOB_ADDRESS) -> IncomingOffer:
    return IncomingOffer(destination, "tel:+15550100", Level.SERVICE_LEVEL_NEEDED, qos(300_000, recv_rate=50_000))


async def offered_calls(stub: svc_grpc.CallQosServiceStub) -> list[str]:
    page = await stub.ListCalls(svc.ListCallsRequest(filter="state = OFFERING"))
    return [call.name for call in page.calls]


# -- the provider's end (the kit), driven by a host written here ---------------------------------
async def started(endpoint: str) -> None:
    async with protocol_stub(endpoint) as stub:
        await stub.Restore(pb.RestoreRequest(), timeout=5)


async def test_an_offer_no_host_answered_is_sent_again_to_the_next_stream(network_kit: Kit) -> None:
    """The provider's offer waits for an answer across a broken stream: sent on the first, sent
    again (same offer_id) on the next, and resolved by the host's answer there."""
    await started(network_kit.endpoint)
    ringing = asyncio.create_task(network_kit.servicer.offer_call(offer()))
    async with protocol_stub(network_kit.endpoint) as host:
        first = host.WatchOffers()
        sent = await first.read()
        assert sent.offer.destination == BOB_ADDRESS and sent.offer.caller_qos == qos(300_000, recv_rate=50_000)
        first.cancel()  # the connection breaks before the host answers
        second = host.WatchOffers()
        again = await second.read()
        assert again.offer_id == sent.offer_id and again.offer == sent.offer
        assert not ringing.done()
        await second.write(pb.WatchOffersRequest(offer_id=again.offer_id, call="calls/offered"))
        assert await asyncio.wait_for(ringing, 5) == "calls/offered"
        # The other answers: no line (None) and an invalid offer (ValueError, with the host's words).
        for outcome, expect in [({"not_offered": "no line"}, None), ({"invalid": "caller_qos.sending: bad"}, "bad")]:
            pending = asyncio.create_task(network_kit.servicer.offer_call(offer()))
            sent = await second.read()
            await second.write(pb.WatchOffersRequest(offer_id=sent.offer_id, **outcome))  # type: ignore[arg-type]
            if expect is None:
                assert await asyncio.wait_for(pending, 5) is None
            else:
                with pytest.raises(ValueError, match=expect):
                    await asyncio.wait_for(pending, 5)
        second.cancel()


async def test_offer_ended_reaches_the_provider_once_and_only_with_the_capability(network_kit: Kit) -> None:
    await started(network_kit.endpoint)
    provider = network_kit.provider
    assert isinstance(provider, NetworkProvider)
    async with protocol_stub(network_kit.endpoint) as host:
        for _ in range(2):  # a retried notice
            ended = pb.OfferEndedRequest(call="calls/x", reason=Disconnect.DISCONNECT_REASON_REJECTED, request_id="r")
            await host.OfferEnded(ended, timeout=5)
    assert provider.ended == [("calls/x", Disconnect.DISCONNECT_REASON_REJECTED)]
    async with kit(SilentProvider) as quiet, protocol_stub(quiet.endpoint) as host:
        await started(quiet.endpoint)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await host.OfferEnded(pb.OfferEndedRequest(call="calls/x"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(ValueError, match="does not advertise incoming_calls"):
            await quiet.servicer.offer_call(offer())


# -- the host's end -----------------------------------------------------------------------------
class Stutter(ProviderServicer):
    """A provider end that sends every offer twice, as one sent again after a reconnection is."""

    async def WatchOffers(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await super().WatchOffers(request_iterator, _Twice(context))


class _Twice:
    """A servicer context whose every write is sent twice."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    async def write(self, message: pb.WatchOffersResponse) -> None:
        await self._context.write(message)
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[tuple[Kit, testing.InProcessServer, svc_grpc.CallQosServiceStub]]:
    async with (
        kit(NetworkProvider, lambda provider: Stutter(provider, "test")) as served,
        testing.InProcessServer(
            tmp_path, providers={"net": dialled(served.endpoint)}, default_provider="net"
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        yield served, server, svc_grpc.CallQosServiceStub(channel)


async def test_an_offer_sent_twice_is_offered_once(
    network: tuple[Kit, testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    served, _, stub = network
    await open_line(stub)
    name = await served.servicer.offer_call(offer())
    assert name is not None
    assert await offered_calls(stub) == [name]
    second = await served.servicer.offer_call(offer())  # a new offer: a new call
    assert second not in (None, name)
    assert sorted(await offered_calls(stub)) == sorted([name, second])


async def test_an_offer_that_ends_while_the_provider_is_away_is_told_when_it_is_back(
    network: tuple[Kit, testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    served, server, stub = network
    remote = remote_of(server, "net")
    await open_line(stub)
    name = await served.servicer.offer_call(offer())
    assert name is not None
    await served.stop()
    await until(lambda: not remote.ready, what="the host noticed the provider is gone")
    await stub.RejectCall(svc.RejectCallRequest(name=name), metadata=BOB)
    await wait_for_state(stub, name, State.STATE_DISCONNECTED)
    await served.start()  # the provider is back (a new process): it is told
    provider = served.provider
    assert isinstance(provider, NetworkProvider)
    await until(lambda: provider.ended == [(name, Disconnect.DISCONNECT_REASON_REJECTED)], what="offer_ended told")
    # And it offers again through the new connection.
    again = await served.servicer.offer_call(offer())
    assert again is not None and again != name
