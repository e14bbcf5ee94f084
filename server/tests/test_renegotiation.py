"""Renegotiation (lineSetCallQualityOfService) and drop (conformance/SPEC.md SETQOS-1 … SETQOS-7, CALL-2)."""

from __future__ import annotations

import grpc
from server_testkit import CAPACITY, ST, Level, details, flow, make_request, owner, qos, reason, reserved, rpc_error

from callqos.server.qos import qos_shortfalls
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

State = call_pb2.Call.State


async def test_renegotiate_up_and_down(stub) -> None:
    call = await stub.CreateCall(make_request(qos(300_000)))
    up = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(900_000), etag=call.etag))
    assert up.granted_qos.sending.token_rate_bytes_per_second == 900_000
    assert up.etag != call.etag
    assert await reserved(stub) == (900_000, 0)
    down = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(100_000)))
    assert down.granted_qos.sending.token_rate_bytes_per_second == 100_000
    assert down.requested_qos.sending.token_rate_bytes_per_second == 100_000
    assert await reserved(stub) == (100_000, 0)


async def test_failed_renegotiation_leaves_call_byte_identical(stub) -> None:
    other = await stub.CreateCall(make_request(qos(1_000_000)))
    call = await stub.CreateCall(make_request(qos(200_000, recv_rate=50_000)))
    before = call.SerializeToString(deterministic=True)
    error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(600_000))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "QOS_UNAVAILABLE"
    refusal = details(error)["QosRefusal"]
    assert refusal.call == call.name
    # The renegotiating call's own reservation counts as free for the counter-offer.
    assert refusal.counter_offer.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000
    after = await stub.GetCall(svc.GetCallRequest(name=call.name))
    assert after.SerializeToString(deterministic=True) == before
    assert after.state == State.STATE_CONNECTED
    assert await reserved(stub) == (1_200_000, 50_000)
    # The counter-offer is admitted when tried.
    ok = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=refusal.counter_offer))
    assert ok.granted_qos.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000
    assert other.state == State.STATE_CONNECTED


async def test_failed_renegotiation_event_has_unchanged_qos(stub) -> None:
    await stub.CreateCall(make_request(qos(CAPACITY - 100)))
    call = await stub.CreateCall(make_request(qos(100)))
    await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(200))))
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=call.name))
    events = []
    async for response in stream:
        events.append(response.event)
        if len(events) == 2:
            break
    stream.cancel()
    assert [e.type for e in events] == [
        event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED,
        event_pb2.QosEventType.QOS_EVENT_TYPE_RENEGOTIATION_FAILED,
    ]
    assert events[1].previous_qos == events[1].current_qos == call.granted_qos


async def test_no_change_keeps_that_direction(stub) -> None:
    call = await stub.CreateCall(make_request(qos(300_000, recv_rate=200_000)))
    request_qos = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(rate=400_000))
    changed = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=request_qos))
    assert changed.granted_qos.sending == call.granted_qos.sending
    assert changed.granted_qos.receiving.token_rate_bytes_per_second == 400_000
    assert changed.requested_qos.sending == call.requested_qos.sending
    assert await reserved(stub) == (300_000, 400_000)


async def test_renegotiating_a_dropped_call_is_failed_precondition(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)))
    await stub.DropCall(svc.DropCallRequest(name=call.name))
    error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(2000))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(error) == "CALL_NOT_CONNECTED"
    assert await reserved(stub) == (0, 0)


async def test_provider_without_renegotiation_is_unimplemented(stub) -> None:
    call = await stub.CreateCall(make_request(qos(None), provider="providers/no-qos"))
    assert not call.features.set_qos
    error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(None))))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason(error) == "RENEGOTIATION_UNSUPPORTED"


async def test_only_the_owner_may_renegotiate_or_drop(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)), metadata=owner("alice"))
    assert call.owner == "alice"
    for attempt in (
        stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(2000)), metadata=owner("mallory")),
        stub.DropCall(svc.DropCallRequest(name=call.name), metadata=owner("mallory")),
    ):
        error = await rpc_error(attempt)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason(error) == "NOT_OWNER"
    # Monitors may still read it.
    assert (
        await stub.GetCall(svc.GetCallRequest(name=call.name), metadata=owner("mallory"))
    ).state == State.STATE_CONNECTED
    assert await reserved(stub) == (1000, 0)


async def test_stale_etag_is_aborted_and_changes_nothing(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)))
    await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(2000)))
    error = await rpc_error(
        stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(3000), etag=call.etag))
    )
    assert error.code() == grpc.StatusCode.ABORTED and reason(error) == "ETAG_MISMATCH"
    error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name, etag=call.etag)))
    assert error.code() == grpc.StatusCode.ABORTED
    assert await reserved(stub) == (2000, 0)


async def test_invalid_renegotiation_is_rejected_before_the_provider(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)))
    bad = flowspec_pb2.QosSpec(sending=flow(rate=0), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE))
    error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details(error)["BadRequest"].field_violations} == {
        "qos.sending.token_rate_bytes_per_second"
    }
    assert (await stub.GetCall(svc.GetCallRequest(name=call.name))).etag == call.etag


async def test_drop_releases_and_twice_is_harmless(stub) -> None:
    calls = [await stub.CreateCall(make_request(qos(CAPACITY // 4, recv_rate=CAPACITY // 4))) for _ in range(4)]
    assert reason(await rpc_error(stub.CreateCall(make_request(qos(1))))) == "QOS_UNAVAILABLE"
    for call in reversed(calls):
        dropped = await stub.DropCall(svc.DropCallRequest(name=call.name))
        assert dropped.state == State.STATE_DISCONNECTED
        assert dropped.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_NORMAL
        again = await stub.DropCall(svc.DropCallRequest(name=call.name))
        assert again == dropped
    assert await reserved(stub) == (0, 0)
    # The same fill succeeds again: nothing leaked.
    for _ in range(4):
        await stub.CreateCall(make_request(qos(CAPACITY // 4, recv_rate=CAPACITY // 4)))


async def test_renegotiate_can_change_service_level(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)))
    changed = await stub.RenegotiateCall(
        svc.RenegotiateCallRequest(name=call.name, qos=qos(10_000_000), service_level=Level.SERVICE_LEVEL_IF_AVAILABLE)
    )
    assert changed.service_level == Level.SERVICE_LEVEL_IF_AVAILABLE
    assert changed.granted_qos.sending.token_rate_bytes_per_second == CAPACITY


async def test_repeated_renegotiation_request_id_applies_once(stub) -> None:
    call = await stub.CreateCall(make_request(qos(1000)))
    request = svc.RenegotiateCallRequest(name=call.name, qos=qos(5000), request_id="reneg-1")
    first = await stub.RenegotiateCall(request)
    second = await stub.RenegotiateCall(request)
    assert first == second
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=call.name))
    seen = [(await stream.read()).event.type for _ in range(2)]
    stream.cancel()
    assert seen == [
        event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED,
        event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_CHANGED,
    ]
    error = await rpc_error(
        stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(6000), request_id="reneg-1"))
    )
    assert reason(error) == "REQUEST_ID_REUSED"
    assert (await stub.GetCall(svc.GetCallRequest(name=call.name))).granted_qos == first.granted_qos


async def test_no_change_at_needed_never_leaves_the_call_below_its_request(stub) -> None:
    """Found by the ledger's state machine: an IF_AVAILABLE call granted less than it asked,
    renegotiated to NEEDED keeping that direction (NO_CHANGE), keeps its grant — and its request
    in that direction becomes the grant, so a NEEDED call is never connected below its request
    (LEVEL-1, EVENT-4)."""
    await stub.CreateCall(make_request(qos(1_000_000)))
    flexible = await stub.CreateCall(make_request(qos(1_000_000), level=Level.SERVICE_LEVEL_IF_AVAILABLE))
    assert flexible.granted_qos.sending.token_rate_bytes_per_second == 250_000
    keep = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT))
    needed = await stub.RenegotiateCall(
        svc.RenegotiateCallRequest(name=flexible.name, qos=keep, service_level=Level.SERVICE_LEVEL_NEEDED)
    )
    assert needed.granted_qos.sending == flexible.granted_qos.sending
    assert needed.requested_qos.sending == flexible.granted_qos.sending
    assert qos_shortfalls(needed.granted_qos, needed.requested_qos) == []
