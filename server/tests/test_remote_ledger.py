"""The admission ledger with a provider in another process, as with one in process: reconciliation
(conformance/SPEC.md PROV-19) — the provider's `reservations()` crosses the protocol
(ListReservations, with the rates of the provider's own books), and the host releases what no call
holds and re-takes what a call lost — and durable link capacities (LINK-5), across restarts of the
server and of the provider process. Real provider processes the server launches."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from remote_kit import assert_agree, launched, remote_of, serving_launched, until
from server_testkit import make_request, qos

from callqos.server import testing
from callqos.server.providers import Holding
from callqos.v1 import call_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ACME = "providers/acme"
LINK = "providers/acme/links/default"


@pytest.fixture
async def misbooking(tmp_path: Path) -> AsyncIterator[tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]]:
    async with serving_launched(tmp_path, "remote_kit:MisbookingReference", reconcile_interval_seconds=0.3) as served:
        yield served


async def link_reserved(stub: svc_grpc.CallQosServiceStub) -> int:
    (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
    return link.sending_reserved_bytes_per_second


async def test_the_ledger_repairs_what_a_remote_providers_books_lose_or_leak(
    misbooking: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    server, stub = misbooking
    remote = remote_of(server)
    (provider,) = (await stub.ListProviders(svc.ListProvidersRequest())).providers
    assert provider.capabilities.reservation_listing  # the process's, passed on by the host
    kept = await stub.CreateCall(make_request(qos(100_000), call_id="kept"))
    # Booked twice by the provider: once for the call, once for a call nobody made.
    leaked = await stub.CreateCall(make_request(qos(200_000), destination="sip:leak@example.test", call_id="leaked"))
    # Granted, then forgotten by the provider's books (its kit still lists it, with nothing held).
    lost = await stub.CreateCall(make_request(qos(300_000), destination="sip:forget@example.test", call_id="lost"))
    assert all(c.state == call_pb2.Call.State.STATE_CONNECTED for c in (kept, leaked, lost))

    held = {item.call: item for item in await remote.reservations()}
    assert all(isinstance(item, Holding) for item in held.values())
    assert held["calls/phantom-leaked"].sending_bytes_per_second == 200_000
    assert held["calls/phantom-leaked"].link == LINK
    assert (held["calls/lost"].sending_bytes_per_second, held["calls/lost"].receiving_bytes_per_second) == (0, 0)
    assert held["calls/kept"].sending_bytes_per_second == 100_000 and held["calls/kept"].link == LINK

    # Two passes see each difference; then the phantom is released and the lost call re-taken.
    async def repaired() -> bool:
        return await link_reserved(stub) == 600_000

    await until(repaired, what="the link reserving exactly what its connected calls hold")
    held = {item.call: item for item in await remote.reservations()}
    assert set(held) == {"calls/kept", "calls/leaked", "calls/lost"}
    assert held["calls/lost"].sending_bytes_per_second == 300_000
    ledger = server.running.ledger
    assert ledger.repairs["released"] >= 1 and ledger.repairs["re-taken"] >= 1
    # The calls themselves are untouched: the repair was the provider's books, not the calls.
    for call in (kept, leaked, lost):
        assert await stub.GetCall(svc.GetCallRequest(name=call.name)) == call


async def test_a_renegotiation_a_remote_provider_grants_after_the_host_gave_up_is_put_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host gives up on a renegotiation at its deadline (the caller gets PROVIDER_UNAVAILABLE,
    the call keeps its QoS); the provider, ignoring its cancellation, grants it two seconds later
    and its kit answers on the Decide stream, though nobody waits for that answer any more. The
    host reconciles the call on that late answer: the provider holds again what the call says,
    within seconds, not at the next periodic pass (an hour away here)."""
    async with serving_launched(
        tmp_path,
        "misbehaving:LateRenegotiate",
        provider_timeout_seconds=0.5,
        provider_cancel_grace_seconds=0.2,
        reconcile_interval_seconds=3600.0,
    ) as (_, stub):
        call = await stub.CreateCall(make_request(qos(1000)))
        assert await link_reserved(stub) == 1000
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(3000)), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        kept = await stub.GetCall(svc.GetCallRequest(name=call.name))
        assert kept.granted_qos.sending.token_rate_bytes_per_second == 1000
        await asyncio.sleep(2.0)  # the provider has granted 3000 by now

        async def put_back() -> bool:
            return await link_reserved(stub) == 1000

        await until(put_back, timeout=10, what="the link reserving what the call holds again")
        assert any("after the host gave up on it" in record.getMessage() for record in caplog.records)
        now = await stub.GetCall(svc.GetCallRequest(name=call.name))
        assert now.state == call_pb2.Call.State.STATE_CONNECTED
        assert now.granted_qos.sending.token_rate_bytes_per_second == 1000


async def test_a_remote_providers_link_capacity_survives_restarts_of_the_server_and_of_the_process(
    tmp_path: Path,
) -> None:
    """LINK-5 out of process: a capacity raised with UpdateLink, and a call admitted under it, come
    back after the server restarts (the capacity is put back in the new provider process before
    the call is restored) and after the provider process is killed and relaunched."""
    server = testing.InProcessServer(
        tmp_path, storage="sqlite", providers={"acme": launched("reference")}, default_provider="acme"
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            link = provider_pb2.Link(name=LINK, capacity_bytes_per_second=3_000_000)
            await stub.UpdateLink(svc.UpdateLinkRequest(link=link))
            big = await stub.CreateCall(make_request(qos(2_500_000), call_id="big"))
        await server.restart()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
            assert (link.capacity_bytes_per_second, link.sending_reserved_bytes_per_second) == (3_000_000, 2_500_000)
            assert await stub.GetCall(svc.GetCallRequest(name=big.name)) == big  # restored, not shed
            remote = remote_of(server)
            assert remote.process is not None and remote.process.pid is not None
            pid = remote.process.pid
            os.kill(pid, signal.SIGKILL)
            await until(
                lambda: remote.ready and remote.process is not None and remote.process.pid != pid,
                what="a new provider process, restored",
            )
            assert await assert_agree(stub, remote) == {big.name: big.granted_qos}
            (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
            assert link.capacity_bytes_per_second == 3_000_000
            assert await stub.GetCall(svc.GetCallRequest(name=big.name)) == big
    finally:
        await server.close()
