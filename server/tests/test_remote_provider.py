"""A provider in another process, over callqos.provider.v1: the protocol's own rules (both ends),
and what a caller of the server notices — the same answers as from the provider in process, and
the documented failure for every way the provider can fail.

The provider here is served by the Python kit in this process, on a Unix socket the server dials
(`endpoint`); test_remote_process.py launches real provider processes and kills them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from incoming_kit import BOB, CAROL, answer_request, call_line, events_of, open_line
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from remote_kit import (
    GatedReference,
    Kit,
    assert_agree,
    connected_calls,
    dialled,
    held_by_provider,
    kit,
    protocol_stub,
    remote_of,
    until,
)
from server_testkit import CAPACITY, PickyProvider, details, make_request, qos, reason, rpc_error, violated_fields

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.server import testing
from callqos.server.errors import ServiceError
from callqos.server.providers import AdmissionRequest, Decision, ProviderChange, RefusalKind
from callqos.server.providers.noqos import NoQosProvider
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.remote import protocol
from callqos.server.remote.kit import ProviderServicer
from callqos.server.remote.settings import RemoteSettings, TlsSettings
from callqos.server.telemetry import Telemetry
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Level = call_pb2.ServiceLevel
EventType = event_pb2.QosEventType
ACME = "providers/acme"


@pytest.fixture
async def reference_kit() -> AsyncIterator[Kit]:
    async with kit(ReferenceProvider) as served:
        yield served


async def hosting(
    served: Kit, tmp_path: Path, **server_settings: Any
) -> tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub, grpc.aio.Channel]:
    """A server hosting the provider `served` as its default, `providers/acme`."""
    server = testing.InProcessServer(
        tmp_path, providers={"acme": dialled(served.endpoint)}, default_provider="acme", **server_settings
    )
    await server.start()
    channel = grpc.aio.insecure_channel(server.target)
    return server, svc_grpc.CallQosServiceStub(channel), channel


@pytest.fixture
async def host(
    reference_kit: Kit, tmp_path: Path
) -> AsyncIterator[tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]]:
    server, stub, channel = await hosting(reference_kit, tmp_path)
    try:
        yield server, stub
    finally:
        await channel.close()
        await server.close()


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


# -- the handshake and the settings -------------------------------------------------------------
def test_the_handshake_line_names_the_version_network_and_address() -> None:
    line = "CALLQOS_PROVIDER|1|unix|/tmp/x/provider.sock|grpc"
    handshake = protocol.Handshake.parse(line + "\n")
    assert (handshake.version, handshake.network, handshake.address) == (1, "unix", "/tmp/x/provider.sock")
    assert handshake.target == "unix:/tmp/x/provider.sock" and handshake.line() == line
    assert protocol.Handshake.parse("CALLQOS_PROVIDER|1|tcp|127.0.0.1:7000|grpc").target == "127.0.0.1:7000"
    for bad, words in [
        ("CALLQOS_PROVIDER|2|unix|/x|grpc", "speaks protocol version '2'; this host speaks 1"),
        ("CALLQOS_PROVIDER|1|udp|/x|grpc", "unknown network 'udp'"),
        ("CALLQOS_PROVIDER|1|unix||grpc", "no address"),
        ("CALLQOS_PROVIDER|1|unix|/x|netrpc", "unknown protocol"),
        ("1|1|unix|/x|grpc", "not a handshake line"),
    ]:
        with pytest.raises(protocol.HandshakeError, match=words):
            protocol.Handshake.parse(bad)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({}, "exactly one of endpoint"),
        ({"endpoint": "unix:///x.sock", "command": ["p"]}, "exactly one of endpoint"),
        ({"command": "provider --flag"}, "command must be a list"),
        ({"endpoint": "provider.example:7000"}, "not a loopback address: set \\[tls\\]"),
        ({"endpoint": "no-port"}, "endpoint must be unix:///path or HOST:PORT"),
        ({"command": ["p"], "comand": ["q"]}, "unknown remote provider setting\\(s\\): comand"),
        ({"command": ["p"], "tls": {"cert_file": "c.pem"}}, "cert_file and key_file go together"),
        ({"command": ["p"], "health_failures": 0}, "health_failures must be at least 1"),
        ({"command": ["p"], "start_timeout_seconds": 0}, "start_timeout_seconds must be positive"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_the_key(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RemoteSettings.parse(settings)


def test_every_remote_setting_is_in_the_example_configuration() -> None:
    example = (Path(__file__).resolve().parents[1] / "config" / "callqos.example.toml").read_text()
    for setting in dataclasses.fields(RemoteSettings):
        assert f"# {setting.name} = " in example or f"# [providers.acme.{setting.name}]" in example, setting.name
    for setting in dataclasses.fields(TlsSettings):
        assert f"# {setting.name} = " in example, setting.name


def test_settings_accept_an_endpoint_with_tls_and_loopback_without() -> None:
    tls = RemoteSettings.parse({"endpoint": "provider.example:7000", "tls": {"ca_file": "ca.pem"}})
    assert tls.tls is not None and tls.tls.ca_file == "ca.pem"
    assert RemoteSettings.parse({"endpoint": "127.0.0.1:7000"}).tls is None
    assert RemoteSettings.parse({"endpoint": "[::1]:7000"}).target == "[::1]:7000"


async def test_a_server_whose_remote_provider_cannot_be_reached_does_not_start(tmp_path: Path) -> None:
    """Its capabilities are not known, so its requests could not be validated: the start fails
    with the reason, after the start timeout."""
    server = testing.InProcessServer(
        tmp_path,
        providers={"acme": dialled(f"unix://{tmp_path}/nobody.sock", start_timeout_seconds=0.5)},
        default_provider="acme",
    )
    started = time.monotonic()
    with pytest.raises(Exception, match="providers/acme not reached at start-up"):
        await server.start()
    assert time.monotonic() - started < 5
    await server.close()


# -- the same answers as in process -------------------------------------------------------------
async def test_a_remote_reference_provider_answers_as_it_does_in_process(
    host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    server, stub = host
    assert remote_of(server).deciding_on_stream  # the kit serves Decide
    (provider,) = (await stub.ListProviders(svc.ListProvidersRequest())).providers
    assert provider.name == ACME and provider.display_name == ReferenceProvider.display_name
    assert provider.capabilities == ReferenceProvider().capabilities()

    bob = await stub.CreateCall(make_request(qos(1_000_000), call_id="bob"))
    assert bob.state == State.STATE_CONNECTED and bob.granted_qos.sending.token_rate_bytes_per_second == 1_000_000
    refused = await rpc_error(stub.CreateCall(make_request(qos(500_000), call_id="carol")))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(refused) == "QOS_UNAVAILABLE"
    offer = details(refused)["QosRefusal"].counter_offer
    assert offer.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000
    carol = await stub.CreateCall(make_request(offer, call_id="carol-2"))  # the counter-offer is admitted

    changed = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=bob.name, qos=qos(400_000)))
    assert changed.granted_qos.sending.token_rate_bytes_per_second == 400_000
    too_much = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=bob.name, qos=qos(2_000_000))))
    assert reason(too_much) == "QOS_UNAVAILABLE"
    assert (await stub.GetCall(svc.GetCallRequest(name=bob.name))).granted_qos == changed.granted_qos

    (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
    assert link.name == "providers/acme/links/default"
    assert link.sending_reserved_bytes_per_second == 400_000 + CAPACITY - 1_000_000
    await assert_agree(stub, remote_of(server))

    # The link loses capacity: bob (renegotiated last, so the newest reservation) is dropped,
    # and that is visible as soon as UpdateLink answers, as with the provider in process.
    await stub.UpdateLink(
        svc.UpdateLinkRequest(
            link=provider_pb2.Link(name=link.name, capacity_bytes_per_second=300_000),
        )
    )
    assert (await stub.GetCall(svc.GetCallRequest(name=bob.name))).state == State.STATE_DISCONNECTED
    assert (await stub.GetCall(svc.GetCallRequest(name=carol.name))).state == State.STATE_CONNECTED
    await stub.DropCall(svc.DropCallRequest(name=carol.name))
    assert await assert_agree(stub, remote_of(server)) == {}


async def test_a_provider_without_the_decide_stream_is_asked_by_rpc(tmp_path: Path) -> None:
    """Decide is optional: a provider that does not serve it gets Admit, Renegotiate and Release
    as RPCs, with the same answers."""
    async with kit(ReferenceProvider, lambda p: ProviderServicer(p, "unary", decide_stream=False)) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            assert not remote_of(server).deciding_on_stream
            call = await stub.CreateCall(make_request(qos(1_000_000)))
            refused = await rpc_error(stub.CreateCall(make_request(qos(500_000))))
            assert reason(refused) == "QOS_UNAVAILABLE"
            changed = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(200_000)))
            assert changed.granted_qos.sending.token_rate_bytes_per_second == 200_000
            assert await assert_agree(stub, remote_of(server)) == {call.name: changed.granted_qos}
            await stub.DropCall(svc.DropCallRequest(name=call.name))
            assert await assert_agree(stub, remote_of(server)) == {}
        finally:
            await channel.close()
            await server.close()


async def test_a_provider_without_renegotiation_is_refused_cleanly(tmp_path: Path) -> None:
    async with kit(NoQosProvider) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            call = await stub.CreateCall(make_request(qos(None), level=Level.SERVICE_LEVEL_IF_AVAILABLE))
            error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(None))))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED and reason(error) == "RENEGOTIATION_UNSUPPORTED"
            links = await rpc_error(stub.ListLinks(svc.ListLinksRequest(parent=ACME)))
            assert reason(links) == "LINK_ADMIN_UNSUPPORTED"
        finally:
            await channel.close()
            await server.close()


async def test_provider_specific_bytes_the_provider_refuses_are_a_bad_request_that_changes_nothing(
    tmp_path: Path,
) -> None:
    async with kit(PickyProvider) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            error = await rpc_error(stub.CreateCall(make_request(qos(1000, provider_specific=b"nope"))))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(error) == "INVALID_REQUEST"
            assert violated_fields(error) == {"call.requested_qos.provider_specific"}
            assert (await stub.ListCalls(svc.ListCallsRequest())).calls == []  # nothing stored
            call = await stub.CreateCall(make_request(qos(1000, provider_specific=b"ok")))
            again = await rpc_error(
                stub.RenegotiateCall(
                    svc.RenegotiateCallRequest(name=call.name, qos=qos(2000, provider_specific=b"bad"))
                )
            )
            assert violated_fields(again) == {"qos.provider_specific"}
            assert await stub.GetCall(svc.GetCallRequest(name=call.name)) == call  # unchanged
            await assert_agree(stub, remote_of(server))
        finally:
            await channel.close()
            await server.close()


async def test_provider_specific_bytes_refused_on_a_renegotiated_pair_are_a_bad_request_too(tmp_path: Path) -> None:
    """The same rule for a call answered on a line of this server (two legs, one reservation):
    the refusal of the bytes is INVALID_ARGUMENT, not a failed renegotiation, and neither leg
    changes."""
    async with kit(PickyProvider) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            await open_line(stub)
            caller, callee = await call_line(stub, qos(1000, provider_specific=b"ok"))
            await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
            legs = [await stub.GetCall(svc.GetCallRequest(name=leg.name)) for leg in (caller, callee)]
            events_before = await events_of(stub, caller.name)
            error = await rpc_error(
                stub.RenegotiateCall(
                    svc.RenegotiateCallRequest(name=caller.name, qos=qos(2000, provider_specific=b"bad")),
                    metadata=CAROL,
                )
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(error) == "INVALID_REQUEST"
            assert violated_fields(error) == {"qos.provider_specific"}
            assert [await stub.GetCall(svc.GetCallRequest(name=leg.name)) for leg in legs] == legs  # unchanged
            assert await events_of(stub, caller.name) == events_before  # no RENEGOTIATION_FAILED either
            # The pair's one reservation, as it was.
            assert list((await remote_of(server).list_reservations()).values()) == [legs[0].granted_qos]
        finally:
            await channel.close()
            await server.close()


async def test_provider_specific_bytes_refused_on_an_answer_are_a_bad_request_and_the_call_rings_on(
    tmp_path: Path,
) -> None:
    """The same rule for AnswerCall: the answer is INVALID_ARGUMENT, the offered call keeps
    ringing (not ended as a provider error), and an answer with bytes the provider takes connects."""
    async with kit(PickyProvider) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            await open_line(stub)
            caller, callee = await call_line(stub, qos(1000, provider_specific=b"ok"))
            bad = flowspec_pb2.QosSpec()
            bad.CopyFrom(callee.requested_qos)  # the offer, as it is, but for the bytes
            bad.provider_specific = b"bad"
            error = await rpc_error(stub.AnswerCall(answer_request(callee.name, bad), metadata=BOB))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(error) == "INVALID_REQUEST"
            assert violated_fields(error) == {"qos.provider_specific"}  # AnswerCallRequest's field
            assert (await stub.GetCall(svc.GetCallRequest(name=callee.name))) == callee  # still offered
            assert (await stub.GetCall(svc.GetCallRequest(name=caller.name))) == caller
            assert await remote_of(server).list_reservations() == {}
            answered = await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
            assert answered.state == State.STATE_CONNECTED
        finally:
            await channel.close()
            await server.close()


# -- the protocol's own rules, at the provider end ----------------------------------------------
def admit_message(call: str, request_id: str, rate: int, destination: str = "sip:a") -> pb.AdmitRequest:
    return pb.AdmitRequest(
        call=call,
        request_id=request_id,
        destination=destination,
        service_level=Level.SERVICE_LEVEL_NEEDED,
        qos=qos(rate),
    )


async def test_a_retried_admit_is_answered_again_and_reserves_once(reference_kit: Kit) -> None:
    async with protocol_stub(reference_kit.endpoint) as provider:
        await provider.Restore(pb.RestoreRequest())
        first = await provider.Admit(admit_message("calls/a", "r1", 600_000))
        again = await provider.Admit(admit_message("calls/a", "r1", 600_000))
        assert first == again and first.WhichOneof("decision") == "grant"
        (link,) = (await provider.ListLinks(pb.ListLinksRequest())).links
        assert link.name == "links/default" and link.sending_reserved_bytes_per_second == 600_000
        # The same call under another request_id: the provider holds it, the host must release first.
        with pytest.raises(grpc.aio.AioRpcError) as held:
            await provider.Admit(admit_message("calls/a", "r2", 600_000))
        assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for _ in range(2):  # releasing twice, and an unknown call, is harmless
            await provider.Release(pb.ReleaseRequest(call="calls/a", request_id="r3"))
        await provider.Release(pb.ReleaseRequest(call="calls/unknown", request_id="r4"))
        assert (await provider.ListReservations(pb.ListReservationsRequest())).reservations == []
        (link,) = (await provider.ListLinks(pb.ListLinksRequest())).links
        assert link.sending_reserved_bytes_per_second == 0


async def test_decisions_wait_for_the_restore(reference_kit: Kit) -> None:
    async with protocol_stub(reference_kit.endpoint) as provider:
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await provider.Admit(admit_message("calls/a", "r1", 1000))
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_release_cancels_an_admit_still_being_decided() -> None:
    async with kit(GatedReference) as served, protocol_stub(served.endpoint) as provider:
        await provider.Restore(pb.RestoreRequest())
        gated = served.provider
        assert isinstance(gated, GatedReference)
        gated.admitting = asyncio.Event()
        admit = asyncio.ensure_future(provider.Admit(admit_message("calls/b", "r1", 700_000, "sip:block")))
        await asyncio.wait_for(gated.admitting.wait(), 5)  # reserved, and not answering
        await provider.Release(pb.ReleaseRequest(call="calls/b", request_id="r2"))
        with pytest.raises(grpc.aio.AioRpcError):
            await admit  # cancelled: it never grants
        assert (await provider.ListReservations(pb.ListReservationsRequest())).reservations == []
        (link,) = (await provider.ListLinks(pb.ListLinksRequest())).links
        assert link.sending_reserved_bytes_per_second == 0


async def test_restore_makes_the_provider_hold_exactly_what_the_host_holds(reference_kit: Kit) -> None:
    async with protocol_stub(reference_kit.endpoint) as provider:
        assert list((await provider.Restore(pb.RestoreRequest())).changes) == []
        granted = {}
        for call, rate in (("calls/a", 100_000), ("calls/b", 200_000), ("calls/c", 300_000)):
            answer = await provider.Admit(admit_message(call, "r1", rate, "sip:x"))
            granted[call] = answer.grant.qos  # with the provider's defaults resolved, as the host keeps it
        await provider.Release(pb.ReleaseRequest(call="calls/c", request_id="r2"))

        def held(call: str, rate: int | None = None) -> pb.HeldCall:
            kept = flowspec_pb2.QosSpec()
            kept.CopyFrom(granted[call])
            if rate is not None:
                kept.sending.token_rate_bytes_per_second = rate
            return pb.HeldCall(call=call, destination="sip:x", service_level=Level.SERVICE_LEVEL_NEEDED, qos=kept)

        # The host reconnects holding b (at other QoS: the provider answers with its own), c (which
        # the provider does not hold: it re-takes it) and no longer a (released).
        again = await provider.Restore(pb.RestoreRequest(calls=[held("calls/b", 250_000), held("calls/c")]))
        assert [(c.call, c.qos) for c in again.changes] == [("calls/b", granted["calls/b"])]
        listed = await provider.ListReservations(pb.ListReservationsRequest())
        assert {r.call: r.qos for r in listed.reservations} == {
            "calls/b": granted["calls/b"],
            "calls/c": granted["calls/c"],
        }
        (link,) = (await provider.ListLinks(pb.ListLinksRequest())).links
        assert link.sending_reserved_bytes_per_second == 500_000
        # A call the provider dropped on its own (the change not yet acknowledged) stays dropped.
        await reference_kit.provider.release("calls/c")
        await reference_kit.servicer.report_change(ProviderChange("calls/c", None, "gone"))
        third = await provider.Restore(pb.RestoreRequest(calls=[held("calls/b"), held("calls/c")]))
        assert [(c.call, c.HasField("qos"), c.message) for c in third.changes] == [("calls/c", False, "gone")]
        listed = await provider.ListReservations(pb.ListReservationsRequest())
        assert {r.call for r in listed.reservations} == {"calls/b"}


async def test_changes_are_replayed_until_acknowledged_and_only_the_newest_per_call(reference_kit: Kit) -> None:
    servicer = reference_kit.servicer
    instance = servicer.instance_id

    async def changes(after: int, instance_id: str = instance, count: int = 1) -> list[pb.Change]:
        async with protocol_stub(reference_kit.endpoint) as provider:
            stream = provider.WatchChanges(pb.WatchChangesRequest(instance_id=instance_id, after_sequence=after))
            got = []
            async with asyncio.timeout(5):
                async for answer in stream:
                    got.append(answer.change)
                    if len(got) == count:
                        break
            stream.cancel()
            return got

    slim = qos(1000)
    await servicer.report_change(ProviderChange("calls/a", slim, "degraded"))
    await servicer.report_change(ProviderChange("calls/b", None, "dropped"))
    await servicer.report_change(ProviderChange("calls/a", None, "then dropped"))  # replaces a's first
    assert [(c.sequence, c.call, c.message) for c in await changes(0, count=2)] == [
        (2, "calls/b", "dropped"),
        (3, "calls/a", "then dropped"),
    ]
    assert [c.sequence for c in await changes(2)] == [3]  # after what the host applied
    assert [c.sequence for c in await changes(3, instance_id="another", count=2)] == [2, 3]  # a new instance: all
    async with protocol_stub(reference_kit.endpoint) as provider:
        await provider.AckChanges(pb.AckChangesRequest(instance_id=instance, sequence=2))
        await provider.AckChanges(pb.AckChangesRequest(instance_id="another", sequence=3))  # ignored
    assert [c.sequence for c in await changes(0)] == [3]
    assert (await changes(0))[0].event == EventType.QOS_EVENT_TYPE_NOQOS


# -- failing closed -----------------------------------------------------------------------------
async def test_an_unreachable_provider_never_admits_and_says_when_to_retry(
    reference_kit: Kit, host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]
) -> None:
    server, stub = host
    remote = remote_of(server)
    kept = await stub.CreateCall(make_request(qos(300_000), call_id="kept"))
    await reference_kit.stop()
    await until(lambda: not remote.ready, what="the host noticed the provider is gone")
    for attempt in range(3):
        error = await rpc_error(stub.CreateCall(make_request(qos(1000), call_id=f"during-{attempt}")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
        delay = retry_delay(error)
        assert delay is not None and 0 < delay <= 0.5
        renegotiation = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=kept.name, qos=qos(1))))
        assert reason(renegotiation) == "PROVIDER_UNAVAILABLE" and retry_delay(renegotiation) is not None
    assert set(await connected_calls(stub, ACME)) == {kept.name}  # nothing admitted meanwhile
    # A new provider process: it holds nothing until the host restores what it holds.
    await reference_kit.start()
    assert await assert_agree(stub, remote) == {kept.name: kept.granted_qos}
    assert (await stub.CreateCall(make_request(qos(1000), call_id="after"))).state == State.STATE_CONNECTED


async def test_a_provider_process_that_comes_back_gets_the_capacity_set_with_update_link(
    reference_kit: Kit, host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]
) -> None:
    """LINK-5 across a provider restart: the new process starts on its configured capacity, and
    the host puts back the one the operator set before anything is decided there."""
    server, stub = host
    (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
    link.capacity_bytes_per_second = 1_000
    await stub.UpdateLink(svc.UpdateLinkRequest(link=link))
    await _the_provider_process_restarts_on_the_set_capacity(reference_kit, server, stub, 1_000)
    assert (await stub.CreateCall(make_request(qos(1_000), call_id="fits"))).state == State.STATE_CONNECTED


async def _the_provider_process_restarts_on_the_set_capacity(
    served: Kit, server: testing.InProcessServer, stub: svc_grpc.CallQosServiceStub, capacity: int
) -> provider_pb2.Link:
    """Restart the provider process `server` hosts; check that it comes back on `capacity` (the
    one set with UpdateLink) and refuses a call above it. Returns the link."""
    remote = remote_of(server)
    await served.stop()
    await until(lambda: not remote.ready)
    await served.start()
    await until(lambda: remote.ready, what="restored")
    (after,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
    assert after.capacity_bytes_per_second == capacity
    refused = await rpc_error(stub.CreateCall(make_request(qos(capacity + 1), call_id="more-than-the-link")))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(refused) == "QOS_UNAVAILABLE"
    return after


async def test_the_capacity_set_with_update_link_outlives_a_server_restart_the_provider_process_outlived(
    reference_kit: Kit, tmp_path: Path
) -> None:
    """LINK-5 when the provider process outlives the server: at the server's next start the
    process still reports the capacity UpdateLink set. That is the set capacity, not a changed
    configuration: the host keeps it, so a provider process that comes back later gets it again.
    (Found by test_remote_stateful: "change capacity → server restarts → provider away → back".)"""
    server, stub, channel = await hosting(reference_kit, tmp_path, storage="sqlite")
    try:
        (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
        configured = link.capacity_bytes_per_second
        link.capacity_bytes_per_second = 1_000
        await stub.UpdateLink(svc.UpdateLinkRequest(link=link))
        await channel.close()
        await server.restart()
        channel = grpc.aio.insecure_channel(server.target)
        stub = svc_grpc.CallQosServiceStub(channel)
        after = await _the_provider_process_restarts_on_the_set_capacity(reference_kit, server, stub, 1_000)
        # Setting it back to the configured capacity is still recognised as such (and forgotten).
        after.capacity_bytes_per_second = configured
        await stub.UpdateLink(svc.UpdateLinkRequest(link=after))
        assert await server.running.store.link_capacities() == []
    finally:
        await channel.close()
        await server.close()


async def test_a_drop_while_the_provider_is_away_is_released_when_it_returns(
    reference_kit: Kit, host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]
) -> None:
    server, stub = host
    remote = remote_of(server)
    gone = await stub.CreateCall(make_request(qos(300_000), call_id="gone"))
    kept = await stub.CreateCall(make_request(qos(200_000), call_id="kept"))
    await reference_kit.stop()
    await until(lambda: not remote.ready)
    dropped = await stub.DropCall(svc.DropCallRequest(name=gone.name))
    assert dropped.state == State.STATE_DISCONNECTED
    await reference_kit.start()
    assert set(await assert_agree(stub, remote)) == {kept.name}


async def test_deadlines_reach_the_provider(tmp_path: Path) -> None:
    """The provider's admission is cut at the host's provider deadline, or earlier at the
    caller's: the kit cancels it then, not when the host gets round to releasing the call."""
    cancelled: list[float] = []

    class Slow(ReferenceProvider):
        async def admit(self, request: AdmissionRequest) -> Decision:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(time.monotonic())
                raise
            return await super().admit(request)

    async with kit(Slow) as served:
        server = testing.InProcessServer(
            tmp_path,
            providers={"acme": dialled(served.endpoint)},
            default_provider="acme",
            provider_timeout_seconds=0.6,
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = svc_grpc.CallQosServiceStub(channel)
                for timeout, budget in ((None, 0.6), (0.3, 0.3)):
                    started = time.monotonic()
                    error = await rpc_error(stub.CreateCall(make_request(qos(1000)), timeout=timeout))
                    if timeout is None or error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        # (with the caller's deadline, the server's answer may beat the client's clock)
                        assert reason(error) == "PROVIDER_UNAVAILABLE"
                    await until(lambda: bool(cancelled), 5, "the provider's admission cancelled")
                    assert cancelled[0] - started == pytest.approx(budget, abs=0.25)
                    cancelled.clear()
                await assert_agree(stub, remote_of(server))
        finally:
            await server.close()


async def test_the_providers_spans_join_the_callers_trace(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider, MeterProvider())
    own_tracer = tracer_provider.get_tracer("test.provider")

    class Traced(ReferenceProvider):
        async def admit(self, request: AdmissionRequest) -> Decision:
            with own_tracer.start_as_current_span("provider.own-work"):
                return await super().admit(request)

    served = Kit(Traced)
    served.telemetry = telemetry  # the kit's server spans and the provider's, recorded here too
    await served.start()
    server = testing.InProcessServer(
        tmp_path, telemetry=telemetry, providers={"acme": dialled(served.endpoint)}, default_provider="acme"
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            with tracer_provider.get_tracer("test.client").start_as_current_span("client") as client:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                await stub.CreateCall(make_request(qos(1000)), metadata=tuple(carrier.items()))
        by_name = {span.name: span for span in spans.get_finished_spans()}
        host_admit = by_name["callqos.provider.admit"]
        kit_admit = by_name["callqos.provider.v1.ProviderService/Admit"]
        own = by_name["provider.own-work"]
        trace_id = client.get_span_context().trace_id
        assert {host_admit.context.trace_id, kit_admit.context.trace_id, own.context.trace_id} == {trace_id}
        assert kit_admit.parent is not None and kit_admit.parent.span_id == host_admit.context.span_id
        assert own.parent is not None and own.parent.span_id == kit_admit.context.span_id
    finally:
        await server.close()
        await served.close()
        tracer_provider.shutdown()
    assert trace.get_tracer_provider() is not tracer_provider  # the global one was left alone


# -- answers that break the contract ------------------------------------------------------------
class Faulty(ProviderServicer):
    """The kit, answering Admit with one kind of broken answer (after a real admission, so
    that the host has something to release)."""

    fault = ""

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        answer = await super().Admit(request, context)
        if self.fault == "no-decision":
            return pb.AdmitResponse()
        if self.fault == "grant-without-qos":
            return pb.AdmitResponse(grant=pb.Grant())
        if self.fault == "refusal-without-kind":
            return pb.AdmitResponse(refusal=pb.Refusal(message="no"))
        if self.fault == "grant-below-request":
            smaller = flowspec_pb2.QosSpec()
            smaller.CopyFrom(answer.grant.qos)
            smaller.sending.token_rate_bytes_per_second = 1
            return pb.AdmitResponse(grant=pb.Grant(qos=smaller))
        if self.fault == "unimplemented":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no")
        if self.fault == "invalid-argument-elsewhere":
            bad = error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field="qos.sending", description="x")]
            )
            detail = any_pb2.Any()
            detail.Pack(bad)
            await context.abort_with_status(
                rpc_status.to_status(rpc_status.status_pb2.Status(code=3, message="x", details=[detail]))
            )
        if self.fault == "internal":
            await context.abort(grpc.StatusCode.INTERNAL, "the provider broke")
        return answer


@pytest.mark.parametrize(
    ("fault", "code", "why"),
    [
        ("no-decision", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("grant-without-qos", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("refusal-without-kind", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("grant-below-request", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("unimplemented", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("invalid-argument-elsewhere", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
        ("internal", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    ],
)
async def test_a_broken_answer_fails_the_call_and_leaves_nothing_reserved(
    tmp_path: Path, fault: str, code: grpc.StatusCode, why: str
) -> None:
    def faulty(provider: Any) -> ProviderServicer:
        servicer = Faulty(provider, "faulty")
        servicer.fault = fault
        return servicer

    async with kit(ReferenceProvider, faulty) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            error = await rpc_error(stub.CreateCall(make_request(qos(100_000), call_id="broken")))
            assert (error.code(), reason(error)) == (code, why)
            call = await stub.GetCall(svc.GetCallRequest(name="calls/broken"))
            assert (call.state, call.disconnect_reason) == (
                State.STATE_DISCONNECTED,
                call_pb2.DisconnectReason.DISCONNECT_REASON_PROVIDER_ERROR,
            )
            assert await held_by_provider(served.endpoint) == {}  # the host released what it had reserved
            assert await assert_agree(stub, remote_of(server)) == {}
        finally:
            await channel.close()
            await server.close()


async def test_an_answer_that_does_not_decode_is_a_contract_violation(tmp_path: Path) -> None:
    """Bytes that are no AdmitResponse at all (a provider built against another protocol)."""

    servicer = ProviderServicer(ReferenceProvider(), "garbage", decide_stream=False)  # Admit by RPC
    provider_server = grpc.aio.server()
    provider_server.add_generic_rpc_handlers((garbage_admit_handlers(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, provider_server)
    await health_servicer.set(protocol.HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    socket = Path(tempfile.mkdtemp(prefix="cq-garbage-", dir="/tmp")) / "provider.sock"
    provider_server.add_insecure_port(f"unix:{socket}")
    await provider_server.start()
    server = testing.InProcessServer(tmp_path, providers={"acme": dialled(f"unix://{socket}")}, default_provider="acme")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            error = await rpc_error(stub.CreateCall(make_request(qos(100_000))))
            assert (error.code(), reason(error)) == (grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION")
            assert await assert_agree(stub, remote_of(server)) == {}
    finally:
        await server.close()
        await provider_server.stop(0)
        shutil.rmtree(socket.parent, ignore_errors=True)


def garbage_admit_handlers(servicer: ProviderServicer) -> grpc.GenericRpcHandler:
    """The kit's service, except that Admit answers (after admitting) with bytes no protobuf
    parser accepts: a length-delimited field whose length runs past the end."""

    async def admit(request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> bytes:
        await servicer.Admit(request, context)
        return b"\x0a\x7f\x01"

    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["ProviderService"].methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        behaviour = admit if method.name == "Admit" else getattr(servicer, method.name)
        serializer = (lambda raw: raw) if method.name == "Admit" else response_class.SerializeToString
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behaviour, request_deserializer=request_class.FromString, response_serializer=serializer
        )
    return grpc.method_handlers_generic_handler(pb.DESCRIPTOR.services_by_name["ProviderService"].full_name, handlers)


# -- the change stream --------------------------------------------------------------------------
class CutsItsStream(ProviderServicer):
    """The kit, ending each change stream with UNAVAILABLE right after sending one change (as a
    connection that breaks would), before the host can acknowledge it."""

    async def WatchChanges(self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext) -> Any:
        async for answer in super().WatchChanges(request, context):
            yield answer
            await asyncio.sleep(0.05)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the stream broke")


async def test_a_broken_change_stream_loses_no_change_and_applies_none_twice(tmp_path: Path) -> None:
    async with kit(ReferenceProvider, lambda provider: CutsItsStream(provider, "cuts")) as served:
        server, stub, channel = await hosting(served, tmp_path)
        try:
            calls = [await stub.CreateCall(make_request(qos(300_000), call_id=f"c{i}")) for i in range(4)]
            (link,) = (await stub.ListLinks(svc.ListLinksRequest(parent=ACME))).links
            # Down to room for one call: three are dropped, three changes on a stream that breaks
            # after each.
            link.capacity_bytes_per_second = 300_000
            await stub.UpdateLink(svc.UpdateLinkRequest(link=link))
            remote = remote_of(server)
            await until(lambda: len(served.servicer.journal.after(0)) == 0, what="every change acknowledged")
            host = await assert_agree(stub, remote)
            assert set(host) == {calls[0].name}
            stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0))
            events: list[event_pb2.QosEvent] = []
            async with asyncio.timeout(5):
                async for answer in stream:
                    events.append(answer.event)
                    if len(events) == 4 + 3 * 2:
                        break
            stream.cancel()
            disconnected = [e.call for e in events if e.type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED]
            assert sorted(disconnected) == sorted(c.name for c in calls[1:])  # each once
        finally:
            await channel.close()
            await server.close()


async def test_a_change_the_provider_makes_while_the_host_is_away_arrives_after(tmp_path: Path) -> None:
    async with kit(ReferenceProvider) as served:
        server, stub, channel = await hosting(served, tmp_path, storage="sqlite")
        first = await stub.CreateCall(make_request(qos(300_000), call_id="first"))
        await channel.close()
        await server.stop()  # the host goes away (a restart), the provider keeps running
        await served.provider.release(first.name)  # as a provider shedding a call on its own does
        await served.servicer.report_change(ProviderChange(first.name, None, "the provider dropped it"))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.target) as again:
                stub = svc_grpc.CallQosServiceStub(again)
                await until(
                    lambda: _state(stub, first.name, State.STATE_DISCONNECTED), what="the change applied after restart"
                )
                assert await assert_agree(stub, remote_of(server)) == {}
        finally:
            await server.close()


async def _state(stub: svc_grpc.CallQosServiceStub, name: str, state: int) -> bool:
    return (await stub.GetCall(svc.GetCallRequest(name=name))).state == state


def test_the_kit_refusal_kinds_cover_the_contracts() -> None:
    assert {kind.name for kind in RefusalKind} == {"ADMISSION", "POLICY"}


async def test_a_decision_cancelled_at_any_moment_leaves_the_provider_connected(
    host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    """A caller's deadline can end a decision at any moment, also while its request is being written
    on the Decide stream (a busy machine makes that moment long). Only that request is given up: the
    stream the other decisions share stays open and the provider stays connected; the host releases
    the call as it does after any failed decision."""
    server, stub = host
    remote = remote_of(server)
    assert remote.deciding_on_stream
    for steps in range(40):  # cancelled after 0, 1, 2, … turns of the event loop: before, during, after the write
        request = AdmissionRequest(f"calls/cut-{steps}", "sip:cut", Level.SERVICE_LEVEL_NEEDED, qos(1000), "alice")
        deciding = asyncio.ensure_future(remote.admit(request))
        for _ in range(steps):
            await asyncio.sleep(0)
        deciding.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServiceError):
            await deciding
        await remote.release(request.call)
        await asyncio.sleep(0.01)  # a lost connection is noticed in a few turns; a reconnection takes 50 ms
        assert remote.ready, f"cancelled after {steps} turns of the event loop, the provider is no longer connected"
    call = await stub.CreateCall(make_request(qos(1000), call_id="after"))
    assert call.state == State.STATE_CONNECTED
    assert await assert_agree(stub, remote) == {call.name: call.granted_qos}


async def test_only_stopping_the_server_ends_the_supervision(
    reference_kit: Kit,
    host: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC raises CancelledError in the awaiting task for a call cancelled under it; that is a lost
    connection like any other, not the server stopping the provider for good."""
    server, stub = host
    remote = remote_of(server)
    connect = remote._connect
    cancelled: list[bool] = []

    async def cancelled_once() -> None:
        if not cancelled:
            cancelled.append(True)
            raise asyncio.CancelledError  # as from a gRPC call cancelled under the supervisor
        await connect()

    monkeypatch.setattr(remote, "_connect", cancelled_once)
    await reference_kit.stop()
    await until(lambda: not remote.ready, what="the host noticed the provider is gone")
    await reference_kit.start()
    await until(lambda: bool(cancelled) and remote.ready, what="connected again after the cancelled attempt")
    call = await stub.CreateCall(make_request(qos(1000), call_id="after"))
    assert call.state == State.STATE_CONNECTED
