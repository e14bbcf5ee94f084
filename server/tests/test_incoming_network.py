"""Calls arriving from a provider's network (capability incoming_calls, ProviderHost.offer_call;
conformance/SPEC.md PROV-14): offered on the open line of their destination, admitted by
the provider once answered (AdmissionRequest.incoming), its offer_ended told when they end
unanswered, withdrawn when the caller gives up — each both with the provider in process and with
the same provider out of process, served by the Python kit over callqos.provider.v1 (WatchOffers,
OfferEnded, AdmitRequest.incoming; REMOTE-8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from incoming_kit import (
    BOB,
    Direction,
    Disconnect,
    E,
    Level,
    NetworkProvider,
    SilentProvider,
    State,
    answer_request,
    events_of,
    get,
    kinds,
    mirror,
    open_line,
    wait_for_state,
)
from remote_kit import dialled, kit
from server_testkit import flow, qos, reason, rpc_error

from callqos.server import testing
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import flowspec_pb2

ST = flowspec_pb2.ServiceType


@dataclass
class Network:
    stub: svc_grpc.CallQosServiceStub
    provider: NetworkProvider
    server: testing.InProcessServer
    quiet: SilentProvider  # a provider without the capability


@pytest.fixture(params=["in process", "out of process"])
async def network(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Network]:  # type: ignore[no-untyped-def]
    if request.param == "in process":
        async with (
            testing.InProcessServer(
                tmp_path,
                providers={
                    "net": {"plugin": "incoming_kit:NetworkProvider"},
                    "quiet": {"plugin": "incoming_kit:SilentProvider"},
                },
                default_provider="net",
            ) as server,
            grpc.aio.insecure_channel(server.target) as channel,
        ):
            provider = server.running.providers.get("providers/net").provider
            quiet = server.running.providers.get("providers/quiet").provider
            assert isinstance(provider, NetworkProvider) and isinstance(quiet, SilentProvider)
            yield Network(svc_grpc.CallQosServiceStub(channel), provider, server, quiet)
        return
    # The same providers served by the Python kit, each on a socket the server dials.
    async with (
        kit(NetworkProvider) as net,
        kit(SilentProvider) as silent,
        testing.InProcessServer(
            tmp_path,
            providers={"net": dialled(net.endpoint), "quiet": dialled(silent.endpoint)},
            default_provider="net",
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        assert isinstance(net.provider, NetworkProvider) and isinstance(silent.provider, SilentProvider)
        yield Network(svc_grpc.CallQosServiceStub(channel), net.provider, server, silent.provider)


async def test_a_network_call_is_offered_on_the_open_line_with_its_qos_mirrored(network: Network) -> None:
    stub, provider = network.stub, network.provider
    line = await open_line(stub)
    caller_asks = qos(300_000, recv_rate=50_000)
    name = await provider.ring(spec=caller_asks, caller_id="tel:+15550100")
    assert name is not None
    call = await get(stub, name)
    assert call.state == State.STATE_OFFERING and call.direction == Direction.DIRECTION_INCOMING
    assert call.owner == "bob" and call.line == line.name and call.caller_id == "tel:+15550100"
    assert call.provider == "providers/net" and not call.peer
    assert call.requested_qos == mirror(caller_asks)
    assert kinds(await events_of(stub, name)) == [E.QOS_EVENT_TYPE_CALL_OFFERED]
    assert provider.admitted == [], "nothing is admitted before the answer"

    answered = await stub.AnswerCall(answer_request(name), metadata=BOB)
    assert answered.state == State.STATE_CONNECTED
    (admission,) = provider.admitted
    # Admitted once, under the offered call's own name, in the answering party's terms.
    assert admission.incoming and admission.call == name and admission.qos == mirror(caller_asks)
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/net"))
    assert (links.links[0].sending_reserved_bytes_per_second, links.links[0].receiving_reserved_bytes_per_second) == (
        50_000,
        300_000,
    )
    dropped = await stub.DropCall(svc.DropCallRequest(name=name), metadata=BOB)
    assert dropped.disconnect_reason == Disconnect.DISCONNECT_REASON_NORMAL
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/net"))
    assert links.links[0].reservation_count == 0


async def test_an_offer_to_an_address_without_an_open_line_finds_nobody(network: Network) -> None:
    assert await network.provider.ring("sip:nobody@example.test") is None
    line = await open_line(network.stub)
    await network.stub.CloseLine(svc.CloseLineRequest(name=line.name), metadata=BOB)
    assert await network.provider.ring() is None
    assert not (await network.stub.ListCalls(svc.ListCallsRequest())).calls


async def test_the_provider_is_told_when_its_offer_ends_unanswered(network: Network) -> None:
    stub, provider = network.stub, network.provider
    await open_line(stub, timeout_s=1)
    rejected = await provider.ring()
    assert rejected is not None
    await stub.RejectCall(svc.RejectCallRequest(name=rejected), metadata=BOB)
    short = await provider.ring(spec=qos(300_000))
    assert short is not None
    less = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(rate=1000))
    refused = await rpc_error(stub.AnswerCall(answer_request(short, less), metadata=BOB))
    assert reason(refused) == "QOS_UNAVAILABLE"
    unanswered = await provider.ring()
    assert unanswered is not None
    await wait_for_state(stub, unanswered, State.STATE_DISCONNECTED)
    await wait_until(lambda: len(provider.ended) == 3)
    assert sorted(provider.ended) == sorted(
        [
            (rejected, Disconnect.DISCONNECT_REASON_REJECTED),
            (short, Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE),
            (unanswered, Disconnect.DISCONNECT_REASON_NO_ANSWER),
        ]
    )
    assert provider.admitted == []


async def test_a_caller_who_gives_up_withdraws_the_offer(network: Network) -> None:
    stub, provider = network.stub, network.provider
    await open_line(stub)
    name = await provider.ring()
    assert name is not None
    await provider.hang_up(name)
    gone = await wait_for_state(stub, name, State.STATE_DISCONNECTED)
    assert gone.disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED
    assert reason(await rpc_error(stub.AnswerCall(answer_request(name), metadata=BOB))) == "CALL_NOT_OFFERING"


async def test_an_invalid_offer_and_an_offer_without_the_capability_are_refused(network: Network) -> None:
    await open_line(network.stub)
    with pytest.raises(ValueError, match=r"caller_qos\.sending\.token_rate_bytes_per_second"):
        await network.provider.ring(
            spec=flowspec_pb2.QosSpec(sending=flow(rate=0), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT))
        )
    with pytest.raises(ValueError, match="level"):
        await network.provider.ring(level=Level.SERVICE_LEVEL_UNSPECIFIED)
    with pytest.raises(ValueError, match="does not advertise incoming_calls"):
        await network.quiet.ring()
    assert not (await network.stub.ListCalls(svc.ListCallsRequest())).calls


async def test_a_network_offer_without_a_direction_offers_it_best_effort(network: Network) -> None:
    """FLOW-20 for a provider's offer, as for a CreateCall: the caller's absent receiving
    direction is BEST_EFFORT, mirrored into the callee's sending."""
    stub, provider = network.stub, network.provider
    await open_line(stub)
    name = await provider.ring(spec=flowspec_pb2.QosSpec(sending=flow(rate=300_000)))
    assert name is not None
    call = await get(stub, name)
    assert call.requested_qos.receiving.token_rate_bytes_per_second == 300_000
    assert call.requested_qos.sending == flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT)
    answered = await stub.AnswerCall(answer_request(name), metadata=BOB)
    assert answered.state == State.STATE_CONNECTED
    assert answered.granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT


async def test_a_threaded_provider_offers_calls_from_its_own_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A provider with `threaded = true` runs on a loop of its own: the calls it offers from there
    are handed to the server's loop (HostOnLoop.offer_call), and its admit runs on its loop."""
    import asyncio

    settings = {"providers": {"net": {"plugin": "incoming_kit:NetworkProvider", "threaded": True}}}
    async with (
        testing.InProcessServer(tmp_path, default_provider="net", **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        info = server.running.providers.get("providers/net")
        provider = info.provider
        assert isinstance(provider, NetworkProvider) and info.thread is not None
        await open_line(stub)
        offered = asyncio.run_coroutine_threadsafe(provider.ring(), info.thread.loop)
        name = await asyncio.wrap_future(offered)
        assert name is not None and (await get(stub, name)).state == State.STATE_OFFERING
        answered = await stub.AnswerCall(answer_request(name), metadata=BOB)
        assert answered.state == State.STATE_CONNECTED
        assert provider.admitted_on == [info.thread.loop]


async def wait_until(condition, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)
