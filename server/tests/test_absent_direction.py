"""An absent direction (conformance/SPEC.md FLOW-20): in CreateCall it is BEST_EFFORT with nothing
specified, at any service level — what TAPI does for a direction LINECALLPARAMS gives no flowspec
for, and safe at NEEDED, since best effort reserves nothing — and the call records it so; in
RenegotiateCall it is NO_CHANGE. The same in calls between two applications: an offer mirrors
what the caller's call recorded, and an answer's absent direction keeps the offer. And a
renegotiation that changes nothing changes nothing (SETQOS-8), on a single call or a pair: no
provider call, no event, the same etag."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from incoming_kit import BOB, CAROL, answer_request, call_line, get, mirror, open_line
from incoming_kit import events_of as events_of_kit
from server_testkit import CAPACITY, Level, flow, qos, reserved

from callqos.server import validation
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType
BE = flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT)
NO_CHANGE = flowspec_pb2.FlowSpec(service_type=ST.SERVICE_TYPE_NO_CHANGE)
LEVELS = [Level.SERVICE_LEVEL_NEEDED, Level.SERVICE_LEVEL_IF_AVAILABLE, Level.SERVICE_LEVEL_BEST_EFFORT]


def create(level: int, **directions: flowspec_pb2.FlowSpec) -> svc.CreateCallRequest:
    call = call_pb2.Call(destination="sip:absent@example.test", service_level=level)
    if directions:
        call.requested_qos.CopyFrom(flowspec_pb2.QosSpec(**directions))
    return svc.CreateCallRequest(call=call)


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: Level.Name(level))
async def test_a_call_without_qos_is_best_effort_at_any_level(stub, level: int) -> None:
    call = await stub.CreateCall(create(level))
    assert call.state == call_pb2.Call.State.STATE_CONNECTED
    assert call.requested_qos == flowspec_pb2.QosSpec(sending=BE, receiving=BE)
    assert call.granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert call.granted_qos.receiving.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert await reserved(stub) == (0, 0)


async def test_a_missing_receiving_direction_is_best_effort_and_sending_is_reserved(stub) -> None:
    call = await stub.CreateCall(create(Level.SERVICE_LEVEL_NEEDED, sending=flow(rate=100_000)))
    assert call.requested_qos.receiving == BE
    assert call.granted_qos.sending.token_rate_bytes_per_second == 100_000
    assert await reserved(stub) == (100_000, 0)


async def test_a_missing_direction_does_not_make_an_unfit_request_fit(stub) -> None:
    """NEEDED stays NEEDED for the direction that is given."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateCall(create(Level.SERVICE_LEVEL_NEEDED, receiving=flow(rate=CAPACITY + 1)))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_renegotiation_keeps_an_absent_direction_and_may_change_only_the_level(stub) -> None:
    call = await stub.CreateCall(
        create(Level.SERVICE_LEVEL_NEEDED, sending=flow(rate=100_000), receiving=flow(rate=50_000))
    )
    changed = await stub.RenegotiateCall(
        svc.RenegotiateCallRequest(name=call.name, qos=flowspec_pb2.QosSpec(sending=flow(rate=200_000)))
    )
    assert changed.granted_qos.sending.token_rate_bytes_per_second == 200_000
    assert changed.granted_qos.receiving == call.granted_qos.receiving
    level_only = await stub.RenegotiateCall(
        svc.RenegotiateCallRequest(name=call.name, service_level=Level.SERVICE_LEVEL_IF_AVAILABLE)
    )
    assert level_only.service_level == Level.SERVICE_LEVEL_IF_AVAILABLE
    assert level_only.requested_qos == changed.requested_qos


async def events_of(stub, name: str) -> list[int]:
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=name))
    last = await stub_last(stub)
    seen = []
    async for response in stream:
        seen.append(response.event.type)
        if response.event.sequence >= last:
            break
    stream.cancel()
    return seen


async def stub_last(stub) -> int:
    stream = stub.WatchEvents(svc.WatchEventsRequest())
    metadata = dict(await stream.initial_metadata())
    stream.cancel()
    return int(metadata["x-callqos-start-sequence"])


@pytest.mark.parametrize(
    "qos",
    [
        None,
        flowspec_pb2.QosSpec(),
        flowspec_pb2.QosSpec(sending=NO_CHANGE, receiving=NO_CHANGE),
        flowspec_pb2.QosSpec(sending=flow(rate=100_000), receiving=BE),  # the same, spelled out
    ],
    ids=["no-qos", "empty-qos", "no-change", "same-values"],
)
async def test_a_renegotiation_that_changes_nothing_changes_nothing(stub, qos) -> None:
    call = await stub.CreateCall(create(Level.SERVICE_LEVEL_NEEDED, sending=flow(rate=100_000)))
    request = svc.RenegotiateCallRequest(name=call.name, request_id="same-again")
    if qos is not None:
        request.qos.CopyFrom(qos)
    same = await stub.RenegotiateCall(request)
    assert same == call  # etag, update_time and all
    assert await events_of(stub, call.name) == [event_pb2.QosEventType.QOS_EVENT_TYPE_QOS_GRANTED]
    assert await stub.RenegotiateCall(request) == call  # its request_id answers the same


async def test_a_degraded_if_available_call_may_ask_again_for_what_it_asked(stub) -> None:
    """Asking an IF_AVAILABLE call's own request again is how it gets what was not free before."""
    hog = await stub.CreateCall(create(Level.SERVICE_LEVEL_NEEDED, sending=flow(rate=CAPACITY - 100_000)))
    wanted = flowspec_pb2.QosSpec(sending=flow(rate=300_000))
    call = await stub.CreateCall(
        svc.CreateCallRequest(
            call=call_pb2.Call(
                destination="sip:x", service_level=Level.SERVICE_LEVEL_IF_AVAILABLE, requested_qos=wanted
            )
        )
    )
    assert call.granted_qos.sending.token_rate_bytes_per_second == 100_000
    await stub.DropCall(svc.DropCallRequest(name=hog.name))
    again = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=wanted))
    assert again.granted_qos.sending.token_rate_bytes_per_second == 300_000


@settings(max_examples=200, deadline=None)
@given(
    sending=st.sampled_from([None, BE, flow(rate=1000)]),
    receiving=st.sampled_from([None, BE, flow(ST.SERVICE_TYPE_CONTROLLED_LOAD)]),
    level=st.sampled_from(LEVELS),
)
def test_validation_fills_exactly_the_absent_directions(sending, receiving, level) -> None:
    """Over every combination: a valid request stays valid, a given direction is untouched, and an
    absent one becomes BEST_EFFORT (create) or NO_CHANGE (renegotiate) — nothing else moves."""
    directions = {k: v for k, v in (("sending", sending), ("receiving", receiving)) if v is not None}
    request = create(level, **directions)
    before = svc.CreateCallRequest()
    before.CopyFrom(request)
    validation.create(request, None)
    for name in ("sending", "receiving"):
        expected = directions.get(name, BE)
        assert getattr(request.call.requested_qos, name) == expected
    assert request.call.destination == before.call.destination and request.call.service_level == level
    renegotiation = svc.RenegotiateCallRequest(name="calls/x", qos=flowspec_pb2.QosSpec(**directions))
    validation.renegotiation(renegotiation, None)
    for name in ("sending", "receiving"):
        assert getattr(renegotiation.qos, name) == directions.get(name, NO_CHANGE)


# -- calls between two applications (FLOW-20 with OFFER-2, ANSWER-2, SETQOS-8 on pairs) ----------
async def test_a_call_to_a_line_without_receiving_is_offered_with_a_best_effort_direction(stub) -> None:
    """The caller's absent receiving direction is recorded BEST_EFFORT, and the offer mirrors
    what was recorded: the callee is offered best effort in what it sends."""
    await open_line(stub)
    caller, callee = await call_line(stub, flowspec_pb2.QosSpec(sending=flow(rate=100_000)))
    assert caller.requested_qos.receiving == BE
    assert callee.requested_qos == mirror(caller.requested_qos)
    assert callee.requested_qos.sending == BE


async def test_an_answer_that_leaves_out_a_direction_keeps_it_as_offered(stub) -> None:
    """An answer's absent direction is read as NO_CHANGE: as offered, exactly like spelling it."""
    await open_line(stub)
    asked = qos(400_000, recv_rate=100_000)
    legs = [await call_line(stub, asked, Level.SERVICE_LEVEL_IF_AVAILABLE) for _ in range(2)]
    lower = flow(rate=250_000)
    left_out = await stub.AnswerCall(
        answer_request(legs[0][1].name, flowspec_pb2.QosSpec(receiving=lower)), metadata=BOB
    )
    spelled = await stub.AnswerCall(
        answer_request(legs[1][1].name, flowspec_pb2.QosSpec(sending=NO_CHANGE, receiving=lower)), metadata=BOB
    )
    assert left_out.state == spelled.state == call_pb2.Call.State.STATE_CONNECTED
    assert left_out.granted_qos == spelled.granted_qos
    offered = legs[0][1].requested_qos.sending
    kept = left_out.granted_qos.sending  # as offered, with the provider's defaults filled in
    assert (kept.service_type, kept.token_rate_bytes_per_second) == (
        offered.service_type,
        offered.token_rate_bytes_per_second,
    )
    assert left_out.granted_qos.receiving.token_rate_bytes_per_second == 250_000


async def test_a_pair_renegotiation_that_changes_nothing_changes_neither_leg(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000))
    answered = await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    caller = await get(stub, caller.name)
    before = {name: len(await events_of_kit(stub, name)) for name in (caller.name, callee.name)}
    for leg, who in ((caller, CAROL), (answered, BOB)):
        request = svc.RenegotiateCallRequest(name=leg.name, qos=flowspec_pb2.QosSpec())
        assert await stub.RenegotiateCall(request, metadata=who) == leg
    assert await get(stub, caller.name) == caller and await get(stub, callee.name) == answered
    assert {name: len(await events_of_kit(stub, name)) for name in before} == before, "no event on either leg"
