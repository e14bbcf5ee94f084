"""Call leases against a real server (conformance/SPEC.md LEASE-1 … LEASE-5): a call made with a
lease lives until its lease_expire_time unless its owner extends it; a lease that ends disconnects
the call LEASE_EXPIRED, announces it, and releases its reservation to its provider; ExtendCall
renews it (owner only, request_id idempotent, the etag untouched, no event); a release the
provider fails is owed and retried as a drop's is (CALL-6); the server's
max_lease_seconds bounds every lease and is the lease of a call that asks for none.

Most tests time leases with a `ManualClock`, so that they say exactly when a lease ends without
waiting for it; `test_the_lease_timer_ends_calls_by_itself` runs the real timer on the real clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from incoming_kit import (
    BOB,
    CAROL,
    MALLORY,
    E,
    answer_request,
    call_line,
    events_of,
    get,
    kinds,
    open_line,
    wait_for_state,
)
from lease_kit import expires_ns, extension, lease_server, leased, seconds
from server_testkit import details, owner, qos, reason, reserved, rpc_error, violated_fields
from test_ledger_faults import eventually
from test_telemetry import Traced, _traced

from callqos.server.config import Config
from callqos.server.telemetry.semconv import Semconv
from callqos.server.testing import InProcessServer
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason
ALICE = owner("alice")
CODE = grpc.StatusCode


async def test_a_leased_call_ends_when_its_lease_does(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        call = await s.stub.CreateCall(leased(30), metadata=ALICE)
        assert call.state == State.STATE_CONNECTED
        assert call.lease_duration == seconds(30)
        assert expires_ns(call) == s.clock() + 30 * 10**9
        assert await reserved(s.stub) == (100_000, 0)

        assert await s.advance(29.999) == 0, "a lease ends at its lease_expire_time, not before"
        assert (await get(s.stub, call.name)).state == State.STATE_CONNECTED

        assert await s.advance(0.001) == 1
        ended = await get(s.stub, call.name)
        assert (ended.state, ended.disconnect_reason) == (
            State.STATE_DISCONNECTED,
            Disconnect.DISCONNECT_REASON_LEASE_EXPIRED,
        )
        assert ended.lease_expire_time == call.lease_expire_time, "the call keeps the time its lease ran to"
        assert not ended.features.set_qos
        assert await reserved(s.stub) == (0, 0), "the provider was told to release it"
        events = await events_of(s.stub, call.name)
        assert kinds(events) == [E.QOS_EVENT_TYPE_QOS_GRANTED, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        last = events[-1]
        assert (last.disconnect_reason, last.reason) == (Disconnect.DISCONNECT_REASON_LEASE_EXPIRED, "LEASE_EXPIRED")
        assert last.previous_qos == call.granted_qos and not last.HasField("current_qos")
        assert last.trace_id, "the expiry runs in a trace of its own"
        assert await s.advance(60) == 0, "an ended call ends once"


async def test_an_expiry_the_provider_cannot_release_is_owed_and_retried(tmp_path: Path) -> None:
    """A lease that ends is released through the one release path a drop takes (CALL-6): the call
    ends though the provider's release fails, RELEASE_PENDING says so, the release stays owed in
    the store and is retried until the provider confirms it (RELEASE_COMPLETED, nothing owed)."""
    async with lease_server(
        tmp_path,
        storage="sqlite",
        providers={"reference": {"plugin": "test_ledger_faults:FlakyRelease"}},
        provider_timeout_seconds=0.5,
        release_retry_max_seconds=0.5,
    ) as s:
        call = await s.stub.CreateCall(leased(30), metadata=ALICE)
        provider = s.server.running.providers.get("providers/reference").provider
        provider.failing = "raise"
        assert await s.advance(30) == 1
        ended = await get(s.stub, call.name)
        assert (ended.state, ended.disconnect_reason) == (
            State.STATE_DISCONNECTED,
            Disconnect.DISCONNECT_REASON_LEASE_EXPIRED,
        )
        assert kinds(await events_of(s.stub, call.name)) == [
            E.QOS_EVENT_TYPE_QOS_GRANTED,
            E.QOS_EVENT_TYPE_CALL_DISCONNECTED,
            E.QOS_EVENT_TYPE_RELEASE_PENDING,
        ]
        assert [owed.call for owed in await s.server.running.store.pending_releases()] == [call.name]
        assert await reserved(s.stub) == (100_000, 0), "the provider still holds it while the release fails"
        provider.failing = ""

        async def released() -> bool:
            return await reserved(s.stub) == (0, 0) and not await s.server.running.store.pending_releases()

        await eventually(released, "the owed release retried by the ledger")
        assert kinds(await events_of(s.stub, call.name))[-1] == E.QOS_EVENT_TYPE_RELEASE_COMPLETED


async def test_extending_renews_the_lease_from_now(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        call = await s.stub.CreateCall(leased(10), metadata=ALICE)
        await s.advance(8)
        renewed = await s.stub.ExtendCall(extension(call.name), metadata=ALICE)
        assert expires_ns(renewed) == s.clock() + 10 * 10**9, "renewed to the call's own lease_duration from now"
        assert renewed.etag == call.etag and renewed.update_time == call.update_time, "renewing changes nothing else"
        assert (await get(s.stub, call.name)) == renewed

        longer = await s.stub.ExtendCall(extension(call.name, 45.5), metadata=ALICE)
        assert longer.lease_duration == seconds(45.5), "a new length becomes the call's lease_duration"
        assert expires_ns(longer) == s.clock() + 45_500_000_000
        assert longer.etag == call.etag

        assert await s.advance(45) == 0
        assert (await get(s.stub, call.name)).state == State.STATE_CONNECTED, "extended in time, it lives on"
        assert kinds(await events_of(s.stub, call.name)) == [E.QOS_EVENT_TYPE_QOS_GRANTED], "renewals send no event"
        # The etag still guards the QoS: a renegotiation conditional on the etag read before the
        # renewals goes through.
        changed = await s.stub.RenegotiateCall(
            svc.RenegotiateCallRequest(name=call.name, qos=qos(50_000), etag=call.etag), metadata=ALICE
        )
        assert changed.granted_qos.sending.token_rate_bytes_per_second == 50_000
        assert changed.lease_expire_time == longer.lease_expire_time, "a renegotiation keeps the lease"
        assert await s.advance(0.5) == 1


async def test_an_extension_is_idempotent_by_request_id(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        call = await s.stub.CreateCall(leased(10), metadata=ALICE)
        first = await s.stub.ExtendCall(extension(call.name, request_id="keep-1"), metadata=ALICE)
        await s.advance(5)
        again = await s.stub.ExtendCall(extension(call.name, request_id="keep-1"), metadata=ALICE)
        assert again.lease_expire_time == first.lease_expire_time, "a repeat extends nothing further"
        reused = await rpc_error(s.stub.ExtendCall(extension(call.name, 20, request_id="keep-1"), metadata=ALICE))
        assert (reused.code(), reason(reused)) == (CODE.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_an_extension_after_the_lease_ended_is_refused_and_ends_the_call(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        call = await s.stub.CreateCall(leased(10), metadata=ALICE)
        s.clock.advance(10)  # the lease has ended, but the timer has not run yet
        late = await rpc_error(s.stub.ExtendCall(extension(call.name, request_id="late"), metadata=ALICE))
        assert (late.code(), reason(late)) == (CODE.FAILED_PRECONDITION, "LEASE_EXPIRED")
        ended = await get(s.stub, call.name)
        assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED, "too late ends it at once"
        assert await reserved(s.stub) == (0, 0)
        repeat = await rpc_error(s.stub.ExtendCall(extension(call.name, request_id="late"), metadata=ALICE))
        assert reason(repeat) == "LEASE_EXPIRED"
        again = await rpc_error(s.stub.ExtendCall(extension(call.name), metadata=ALICE))
        assert reason(again) == "LEASE_EXPIRED", "a call its lease ended says so to every later extension"
        assert await s.advance(1) == 0
        assert kinds(await events_of(s.stub, call.name)) == [
            E.QOS_EVENT_TYPE_QOS_GRANTED,
            E.QOS_EVENT_TYPE_CALL_DISCONNECTED,
        ]


async def test_who_may_extend_what(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        call = await s.stub.CreateCall(leased(10), metadata=ALICE)
        unleased = await s.stub.CreateCall(leased(None), metadata=ALICE)
        assert not unleased.HasField("lease_duration") and not unleased.HasField("lease_expire_time")

        other = await rpc_error(s.stub.ExtendCall(extension(call.name), metadata=MALLORY))
        assert (other.code(), reason(other)) == (CODE.PERMISSION_DENIED, "NOT_OWNER")
        none = await rpc_error(s.stub.ExtendCall(extension(unleased.name), metadata=ALICE))
        assert (none.code(), reason(none)) == (CODE.FAILED_PRECONDITION, "CALL_NOT_LEASED")
        missing = await rpc_error(s.stub.ExtendCall(extension("calls/nothing"), metadata=ALICE))
        assert (missing.code(), reason(missing)) == (CODE.NOT_FOUND, "CALL_NOT_FOUND")
        stale = await rpc_error(s.stub.ExtendCall(extension(call.name, etag="0" * 16), metadata=ALICE))
        assert (stale.code(), reason(stale)) == (CODE.ABORTED, "ETAG_MISMATCH")
        await s.stub.DropCall(svc.DropCallRequest(name=call.name), metadata=ALICE)
        dropped = await rpc_error(s.stub.ExtendCall(extension(call.name), metadata=ALICE))
        assert (dropped.code(), reason(dropped)) == (CODE.FAILED_PRECONDITION, "CALL_NOT_CONNECTED")
        assert await s.advance(20) == 0, "a dropped call's lease ends nothing"


@pytest.mark.parametrize(
    ("lease", "field"),
    [
        (seconds(0.999), "lease_duration"),
        (seconds(0), "lease_duration"),
        (seconds(366 * 86400 + 1), "lease_duration"),
        (seconds(-5), "lease_duration"),
    ],
)
async def test_a_lease_out_of_range_is_invalid_and_changes_nothing(tmp_path: Path, lease, field: str) -> None:  # type: ignore[no-untyped-def]
    async with lease_server(tmp_path) as s:
        request = leased(None)
        request.call.lease_duration.CopyFrom(lease)
        refused = await rpc_error(s.stub.CreateCall(request, metadata=ALICE))
        assert (refused.code(), violated_fields(refused)) == (CODE.INVALID_ARGUMENT, {"call." + field})
        call = await s.stub.CreateCall(leased(5), metadata=ALICE)
        bad = svc.ExtendCallRequest(name=call.name, lease_duration=lease)
        refused = await rpc_error(s.stub.ExtendCall(bad, metadata=ALICE))
        assert (refused.code(), violated_fields(refused)) == (CODE.INVALID_ARGUMENT, {field})
        assert await get(s.stub, call.name) == call
        assert await reserved(s.stub) == (100_000, 0), "only the valid call reserved anything"


async def test_malformed_durations_are_invalid(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        request = leased(None)
        request.call.lease_duration.seconds = 5
        request.call.lease_duration.nanos = -1
        refused = await rpc_error(s.stub.CreateCall(request, metadata=ALICE))
        assert violated_fields(refused) == {"call.lease_duration"}


async def test_the_server_maximum_bounds_every_lease(tmp_path: Path) -> None:
    async with lease_server(tmp_path, max_lease_seconds=60.0) as s:
        over = await rpc_error(s.stub.CreateCall(leased(60.001), metadata=ALICE))
        assert (over.code(), violated_fields(over)) == (CODE.INVALID_ARGUMENT, {"call.lease_duration"})
        assert "60 s" in details_text(over)
        assert await reserved(s.stub) == (0, 0), "refused, not cut to the maximum"
        longest = await s.stub.CreateCall(leased(60), metadata=ALICE)
        assert longest.lease_duration == seconds(60)
        # A call that asks for no lease gets the maximum: with one set, every call has a lease.
        default = await s.stub.CreateCall(leased(None), metadata=ALICE)
        assert default.lease_duration == seconds(60)
        assert expires_ns(default) == s.clock() + 60 * 10**9
        too_long = await rpc_error(s.stub.ExtendCall(extension(default.name, 61), metadata=ALICE))
        assert violated_fields(too_long) == {"lease_duration"}
        assert await s.advance(60) == 2
        assert await reserved(s.stub) == (0, 0)


async def test_a_fractional_maximum_is_the_lease_of_a_call_asking_none(tmp_path: Path) -> None:
    async with lease_server(tmp_path, max_lease_seconds=2.5) as s:
        call = await s.stub.CreateCall(leased(None), metadata=ALICE)
        assert call.lease_duration == seconds(2.5)


def details_text(error: grpc.aio.AioRpcError) -> str:
    return " ".join(v.description for v in details(error)["BadRequest"].field_violations)


async def test_a_refused_or_best_effort_call(tmp_path: Path) -> None:
    """A refused call holds no lease; a best-effort call's lease ends it like any other."""
    async with lease_server(tmp_path) as s:
        refused = await rpc_error(s.stub.CreateCall(leased(10, qos(2_000_000), call_id="big"), metadata=ALICE))
        assert reason(refused) == "QOS_UNAVAILABLE"
        big = await get(s.stub, "calls/big")
        assert not big.HasField("lease_expire_time")
        best = await s.stub.CreateCall(leased(10, qos(None)), metadata=ALICE)
        assert await s.advance(10) == 1
        assert (await get(s.stub, best.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED


async def test_the_callers_lease_governs_a_pair(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        await open_line(s.stub)
        caller, callee = await call_line(s.stub, qos(400_000, recv_rate=100_000))
        spec = qos(400_000, recv_rate=100_000)
        await s.stub.DropCall(svc.DropCallRequest(name=caller.name), metadata=CAROL)
        plain = await s.stub.CreateCall(leased(20, spec, destination=caller.destination), metadata=CAROL)
        assert plain.state == State.STATE_RINGBACK
        offered = await get(s.stub, plain.peer)
        assert offered.lease_expire_time == plain.lease_expire_time, "the answering leg shows the caller's lease"
        assert offered.lease_duration == plain.lease_duration == seconds(20)

        not_leased = await rpc_error(s.stub.ExtendCall(extension(offered.name), metadata=BOB))
        assert (not_leased.code(), reason(not_leased)) == (CODE.FAILED_PRECONDITION, "CALL_NOT_LEASED")
        assert not caller.HasField("lease_duration") and not callee.HasField("lease_duration")

        await s.advance(15)
        renewed = await s.stub.ExtendCall(extension(plain.name), metadata=CAROL)
        assert (await get(s.stub, offered.name)).lease_expire_time == renewed.lease_expire_time
        await s.stub.AnswerCall(answer_request(offered.name), metadata=BOB)
        assert await reserved(s.stub) == (400_000, 100_000)

        assert await s.advance(19.9) == 0
        assert await s.advance(0.1) == 1
        for leg in (plain.name, offered.name):
            ended = await get(s.stub, leg)
            assert (ended.state, ended.disconnect_reason) == (
                State.STATE_DISCONNECTED,
                Disconnect.DISCONNECT_REASON_LEASE_EXPIRED,
            ), "both legs end, for the same reason"
            assert kinds(await events_of(s.stub, leg))[-1] == E.QOS_EVENT_TYPE_CALL_DISCONNECTED
        assert await reserved(s.stub) == (0, 0), "the one reservation of the pair is released"


async def test_a_lease_that_ends_while_the_call_rings_ends_both_legs(tmp_path: Path) -> None:
    async with lease_server(tmp_path) as s:
        await open_line(s.stub, timeout_s=600)
        caller = await s.stub.CreateCall(leased(5, destination="sip:bob@example.test"), metadata=CAROL)
        assert await s.advance(5) == 1
        for leg in (caller.name, caller.peer):
            ended = await get(s.stub, leg)
            assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
            assert not ended.features.answer and not ended.HasField("offer_expire_time")
        late = await rpc_error(s.stub.AnswerCall(answer_request(caller.peer), metadata=BOB))
        assert reason(late) == "CALL_NOT_OFFERING"
        assert await reserved(s.stub) == (0, 0)


async def test_the_lease_timer_ends_calls_by_itself(tmp_path: Path) -> None:
    """The real timer on the real clock: the call with the shortest lease — made after one with a
    longer lease, so the timer must wake earlier than it planned — ends on time (within a
    generous tolerance for a busy machine), with its event on the stream, and the longer one,
    extended, lives on."""
    async with (
        InProcessServer(tmp_path) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        long = await stub.CreateCall(leased(30), metadata=ALICE)
        stream = stub.WatchEvents(svc.WatchEventsRequest(types=[E.QOS_EVENT_TYPE_CALL_DISCONNECTED]), metadata=ALICE)
        await stream.initial_metadata()
        short = await stub.CreateCall(leased(1), metadata=ALICE)
        message = await asyncio.wait_for(stream.read(), 10)
        noticed = time.time_ns()
        assert message.event.call == short.name
        assert message.event.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
        late_s = (noticed - expires_ns(short)) / 1e9
        assert 0 <= late_s < 3, f"ended {late_s:.3f} s after its lease"
        stream.cancel()
        assert (await get(stub, long.name)).state == State.STATE_CONNECTED
        assert await reserved(stub) == (100_000, 0)


@pytest.fixture
async def traced(config: Config) -> AsyncIterator[Traced]:
    async for value in _traced(config, Semconv()):
        yield value


async def test_an_expiry_is_traced_and_counted(traced: Traced) -> None:
    """An expiry runs in a trace of its own (`callqos.lease.expire`), the release to the provider
    inside it (the commit has no span: it decides nothing) and its event in that trace, and
    `callqos.leases.expired` counts it."""
    call = await traced.stub.CreateCall(leased(1), metadata=ALICE)
    ended = await wait_for_state(traced.stub, call.name, State.STATE_DISCONNECTED)
    assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
    [expiry] = [span for span in traced.finished() if span.name == "callqos.lease.expire"]
    assert expiry.attributes["callqos.call"] == call.name
    inside = {s.name for s in traced.finished() if s.parent and s.parent.span_id == expiry.context.span_id}
    assert "callqos.provider.release" in inside
    [event] = [e for e in await events_of(traced.stub, call.name) if e.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    assert event.trace_id == format(expiry.context.trace_id, "032x")
    [(attributes, point)] = traced.metric("callqos.leases.expired")
    assert (attributes, point.value) == ({"callqos.provider": "providers/reference"}, 1)
