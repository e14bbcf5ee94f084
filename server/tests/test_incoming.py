"""Incoming calls through the public API of a real server: bob opens a line, carol calls its
address, bob answers (with the offer or less), rejects, or lets it ring out; both legs change
and end together. conformance/SPEC.md OFFER-*, ANSWER-*, PAIR-*."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from incoming_kit import (
    BOB,
    BOB_ADDRESS,
    CAROL,
    MALLORY,
    Direction,
    Disconnect,
    E,
    Level,
    State,
    answer_request,
    call_line,
    events_of,
    get,
    kinds,
    mirror,
    open_line,
    wait_for_state,
)
from server_testkit import CAPACITY, details, flow, make_request, qos, reason, reserved, rpc_error, violated_fields

from callqos.server import testing
from callqos.v1 import call_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

ST = flowspec_pb2.ServiceType


# -- offer ---------------------------------------------------------------------------------------
async def test_a_call_to_an_open_line_rings_and_is_offered_mirrored(stub) -> None:
    line = await open_line(stub, line_id="bob", timeout_s=30)
    asked = qos(400_000, recv_rate=100_000)
    before = time.time()
    caller, callee = await call_line(stub, asked, call_id="to-bob", request_id="carol-1")

    assert caller.name == "calls/to-bob" and caller.state == State.STATE_RINGBACK
    assert caller.direction == Direction.DIRECTION_OUTGOING and caller.owner == "carol"
    assert caller.peer == callee.name and callee.peer == caller.name
    assert not caller.HasField("granted_qos") and caller.requested_qos == asked

    assert callee.state == State.STATE_OFFERING and callee.direction == Direction.DIRECTION_INCOMING
    assert callee.owner == "bob" and callee.line == line.name and callee.caller_id == "carol"
    assert callee.destination == BOB_ADDRESS and callee.provider == caller.provider
    # The caller's sending flowspec is the callee's receiving one, and the other way round.
    assert callee.requested_qos == mirror(asked)
    assert callee.requested_qos.receiving.token_rate_bytes_per_second == 400_000
    assert callee.service_level == Level.SERVICE_LEVEL_NEEDED
    assert callee.features.answer and not callee.features.set_qos and not caller.features.answer
    expires = callee.offer_expire_time.ToNanoseconds() / 1e9
    assert before + 29 < expires < time.time() + 31 and caller.offer_expire_time == callee.offer_expire_time
    assert await reserved(stub) == (0, 0), "an offer reserves nothing"

    offered, ringing = await events_of(stub)
    assert (offered.type, offered.call, offered.line) == (E.QOS_EVENT_TYPE_CALL_OFFERED, callee.name, line.name)
    assert (ringing.type, ringing.call, ringing.line) == (E.QOS_EVENT_TYPE_CALL_RINGBACK, caller.name, "")
    assert offered.request_id == ringing.request_id == "carol-1"
    assert offered.trace_id and offered.trace_id == ringing.trace_id


async def test_answering_as_offered_connects_both_legs_with_one_reservation(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000))
    answered = await stub.AnswerCall(answer_request(callee.name, request_id="bob-1"), metadata=BOB)

    assert answered.state == State.STATE_CONNECTED and not answered.features.answer
    assert not answered.HasField("offer_expire_time") and answered.features.set_qos
    caller = await get(stub, caller.name)
    assert caller.state == State.STATE_CONNECTED and not caller.HasField("offer_expire_time")
    assert answered.granted_qos == mirror(caller.granted_qos)
    assert caller.granted_qos.sending.token_rate_bytes_per_second == 400_000
    # One reservation for the pair, in the caller's terms: not 500,000 each way.
    assert await reserved(stub) == (400_000, 100_000)
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))
    assert links.links[0].reservation_count == 1

    assert kinds(await events_of(stub, callee.name)) == [E.QOS_EVENT_TYPE_CALL_OFFERED, E.QOS_EVENT_TYPE_QOS_GRANTED]
    caller_events = await events_of(stub, caller.name)
    assert kinds(caller_events) == [E.QOS_EVENT_TYPE_CALL_RINGBACK, E.QOS_EVENT_TYPE_QOS_GRANTED]
    assert caller_events[1].current_qos == caller.granted_qos and caller_events[1].request_id == "bob-1"


async def test_at_needed_an_answer_below_the_request_fails_both_legs_like_a_refused_call(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000), Level.SERVICE_LEVEL_NEEDED)
    less = flowspec_pb2.QosSpec(sending=flow(rate=100_000), receiving=flow(rate=250_000))
    error = await rpc_error(stub.AnswerCall(answer_request(callee.name, less), metadata=BOB))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(error) == "QOS_UNAVAILABLE"
    refusal = details(error)["QosRefusal"]
    assert refusal.call == callee.name
    assert refusal.counter_offer == callee.requested_qos, "bob's counter-offer: what a connecting answer needed"
    for name, counter in ((callee.name, callee.requested_qos), (caller.name, mirror(less))):
        leg = await get(stub, name)
        assert leg.state == State.STATE_DISCONNECTED
        assert leg.disconnect_reason == Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE
        events = await events_of(stub, name)
        assert kinds(events)[-2:] == [E.QOS_EVENT_TYPE_ADMISSION_FAILURE, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        assert events[-2].reason == "QOS_UNAVAILABLE" and events[-2].counter_offer == counter
        assert events[-1].disconnect_reason == Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE
    assert await reserved(stub) == (0, 0)


async def test_at_if_available_a_lower_answer_connects_and_the_caller_sees_what_it_got(stub) -> None:
    await open_line(stub)
    asked = qos(400_000, recv_rate=100_000)
    caller, callee = await call_line(stub, asked, Level.SERVICE_LEVEL_IF_AVAILABLE)
    # Bob keeps his sending direction as offered (NO_CHANGE) and receives less.
    less = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(rate=250_000))
    answered = await stub.AnswerCall(answer_request(callee.name, less), metadata=BOB)

    assert answered.state == State.STATE_CONNECTED
    caller = await get(stub, caller.name)
    assert caller.state == State.STATE_CONNECTED
    assert caller.requested_qos == asked, "the request is never rewritten: the shortfall stays visible"
    assert caller.granted_qos.sending.token_rate_bytes_per_second == 250_000
    assert caller.granted_qos.receiving.token_rate_bytes_per_second == 100_000
    assert answered.granted_qos == mirror(caller.granted_qos)
    assert await reserved(stub) == (250_000, 100_000)


async def test_an_answer_may_not_ask_for_more_than_the_offer(stub) -> None:
    await open_line(stub)
    _, callee = await call_line(stub, qos(400_000, recv_rate=100_000), Level.SERVICE_LEVEL_IF_AVAILABLE)
    more = flowspec_pb2.QosSpec(
        sending=flow(ST.SERVICE_TYPE_GUARANTEED, rate=100_000, latency_microseconds=50_000),
        receiving=flow(rate=500_000),
    )
    error = await rpc_error(stub.AnswerCall(answer_request(callee.name, more), metadata=BOB))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"qos.sending", "qos.receiving"}
    still = await get(stub, callee.name)
    assert still.state == State.STATE_OFFERING and still.etag == callee.etag
    # Falling back to a type that reserves nothing is always less.
    fallback = flowspec_pb2.QosSpec(
        sending=flow(ST.SERVICE_TYPE_BEST_EFFORT), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE)
    )
    assert (await stub.AnswerCall(answer_request(callee.name, fallback), metadata=BOB)).state == State.STATE_CONNECTED


async def test_a_provider_refusal_at_answer_fails_both_legs_with_its_counter_offer(stub) -> None:
    await stub.CreateCall(make_request(qos(CAPACITY - 100_000), destination="sip:elsewhere@example.test"))
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000, recv_rate=1_000))
    error = await rpc_error(stub.AnswerCall(answer_request(callee.name), metadata=BOB))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(error) == "QOS_UNAVAILABLE"
    counter = details(error)["QosRefusal"].counter_offer
    # The provider answered in the caller's terms; bob gets its offer in his.
    assert counter.receiving.token_rate_bytes_per_second == 100_000
    carol_events = await events_of(stub, caller.name)
    assert carol_events[-2].counter_offer == mirror(counter)
    assert carol_events[-2].counter_offer.sending.token_rate_bytes_per_second == 100_000
    for name in (caller.name, callee.name):
        assert (await get(stub, name)).disconnect_reason == Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE
    assert await reserved(stub) == (CAPACITY - 100_000, 0)


# -- reject, no answer, give up -------------------------------------------------------------------
async def test_reject_disconnects_both_legs_rejected_and_is_harmless_twice(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub)
    rejected = await stub.RejectCall(svc.RejectCallRequest(name=callee.name), metadata=BOB)
    assert rejected.state == State.STATE_DISCONNECTED
    assert rejected.disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
    assert (await get(stub, caller.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
    assert kinds(await events_of(stub, caller.name)) == [
        E.QOS_EVENT_TYPE_CALL_RINGBACK,
        E.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    ]
    again = await stub.RejectCall(svc.RejectCallRequest(name=callee.name), metadata=BOB)
    assert again == rejected
    late = await rpc_error(stub.AnswerCall(answer_request(callee.name), metadata=BOB))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(late) == "CALL_NOT_OFFERING"


async def test_dropping_the_offered_leg_rejects_it(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub)
    dropped = await stub.DropCall(svc.DropCallRequest(name=callee.name), metadata=BOB)
    assert dropped.disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
    assert (await get(stub, caller.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED


async def test_a_call_nobody_answers_rings_out_no_answer(stub) -> None:
    await open_line(stub, timeout_s=1)
    caller, callee = await call_line(stub)
    gone = await wait_for_state(stub, callee.name, State.STATE_DISCONNECTED, within=5)
    assert gone.disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
    assert (await get(stub, caller.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
    offer_events = await events_of(stub, callee.name)
    assert kinds(offer_events) == [E.QOS_EVENT_TYPE_CALL_OFFERED, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    # The ring-out continues the offer's trace.
    assert offer_events[1].trace_id == offer_events[0].trace_id
    late = await rpc_error(stub.AnswerCall(answer_request(callee.name), metadata=BOB))
    assert reason(late) == "CALL_NOT_OFFERING"


async def test_the_caller_giving_up_before_an_answer_ends_both_legs(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub)
    dropped = await stub.DropCall(svc.DropCallRequest(name=caller.name), metadata=CAROL)
    assert dropped.disconnect_reason == Disconnect.DISCONNECT_REASON_NORMAL
    assert (await get(stub, callee.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED


async def test_only_the_lines_owner_answers_rejects_and_drops_the_offer(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub)
    for attempt in (
        stub.AnswerCall(answer_request(callee.name), metadata=CAROL),
        stub.RejectCall(svc.RejectCallRequest(name=callee.name), metadata=MALLORY),
        stub.DropCall(svc.DropCallRequest(name=callee.name), metadata=MALLORY),
        stub.DropCall(svc.DropCallRequest(name=caller.name), metadata=BOB),
    ):
        error = await rpc_error(attempt)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and reason(error) == "NOT_OWNER"
    # Everyone may read both legs.
    assert (await stub.GetCall(svc.GetCallRequest(name=callee.name), metadata=MALLORY)).state == State.STATE_OFFERING
    # Answering a call that is not offered: the caller's own leg.
    error = await rpc_error(stub.AnswerCall(answer_request(caller.name), metadata=CAROL))
    assert reason(error) == "CALL_NOT_OFFERING"


async def test_answer_and_reject_are_idempotent_with_a_request_id_and_honour_etags(stub) -> None:
    await open_line(stub)
    _, callee = await call_line(stub)
    error = await rpc_error(stub.AnswerCall(answer_request(callee.name, etag="stale"), metadata=BOB))
    assert error.code() == grpc.StatusCode.ABORTED and reason(error) == "ETAG_MISMATCH"
    first = await stub.AnswerCall(answer_request(callee.name, etag=callee.etag, request_id="a-1"), metadata=BOB)
    count = len(await events_of(stub))
    again = await stub.AnswerCall(answer_request(callee.name, etag=callee.etag, request_id="a-1"), metadata=BOB)
    assert again == first and len(await events_of(stub)) == count
    reused = await rpc_error(stub.AnswerCall(answer_request(callee.name, request_id="a-1"), metadata=BOB))
    assert reason(reused) == "REQUEST_ID_REUSED"
    # Without a request_id a repeat is an answer to a call that is no longer offered.
    assert reason(await rpc_error(stub.AnswerCall(answer_request(callee.name), metadata=BOB))) == "CALL_NOT_OFFERING"
    assert await reserved(stub) == (400_000, 100_000)


async def test_a_refused_answer_is_replayed_to_its_request_id(stub) -> None:
    await open_line(stub)
    _, callee = await call_line(stub, qos(400_000))
    less = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(rate=1_000))
    first = await rpc_error(stub.AnswerCall(answer_request(callee.name, less, request_id="r"), metadata=BOB))
    again = await rpc_error(stub.AnswerCall(answer_request(callee.name, less, request_id="r"), metadata=BOB))
    assert (again.code(), again.details()) == (first.code(), first.details())


# -- both legs together ----------------------------------------------------------------------------
async def test_dropping_either_leg_disconnects_both_each_with_its_own_reason(stub) -> None:
    await open_line(stub)
    for dropper, by in (("callee", BOB), ("caller", CAROL)):
        caller, callee = await call_line(stub)
        await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        leg, other = (callee, caller) if dropper == "callee" else (caller, callee)
        dropped = await stub.DropCall(svc.DropCallRequest(name=leg.name), metadata=by)
        assert dropped.disconnect_reason == Disconnect.DISCONNECT_REASON_NORMAL
        gone = await get(stub, other.name)
        assert gone.state == State.STATE_DISCONNECTED
        assert gone.disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED
        last = (await events_of(stub, other.name))[-1]
        assert last.type == E.QOS_EVENT_TYPE_CALL_DISCONNECTED and last.previous_qos == gone.granted_qos
        assert await reserved(stub) == (0, 0)
        assert await stub.DropCall(svc.DropCallRequest(name=leg.name), metadata=by) == dropped


async def test_renegotiation_from_either_end_changes_both_legs_and_a_refusal_neither(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000))
    await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    # Bob, in his terms: he sends 200,000 now (carol receives it); his receiving stays.
    bob_asks = flowspec_pb2.QosSpec(sending=flow(rate=200_000), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE))
    bob = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=callee.name, qos=bob_asks), metadata=BOB)
    carol = await get(stub, caller.name)
    assert bob.granted_qos.sending.token_rate_bytes_per_second == 200_000
    assert carol.granted_qos == mirror(bob.granted_qos) and carol.requested_qos == mirror(bob.requested_qos)
    assert await reserved(stub) == (400_000, 200_000)
    assert kinds(await events_of(stub, caller.name))[-1] == E.QOS_EVENT_TYPE_QOS_CHANGED
    # Carol asks for more than the link has: refused, and neither leg changes.
    too_much = flowspec_pb2.QosSpec(sending=flow(rate=CAPACITY + 1), receiving=flow(ST.SERVICE_TYPE_NO_CHANGE))
    error = await rpc_error(
        stub.RenegotiateCall(svc.RenegotiateCallRequest(name=caller.name, qos=too_much), metadata=CAROL)
    )
    assert reason(error) == "QOS_UNAVAILABLE"
    assert await get(stub, caller.name) == carol and await get(stub, callee.name) == bob
    assert kinds(await events_of(stub, caller.name))[-1] == E.QOS_EVENT_TYPE_RENEGOTIATION_FAILED
    assert kinds(await events_of(stub, callee.name))[-1] == E.QOS_EVENT_TYPE_QOS_CHANGED
    assert await reserved(stub) == (400_000, 200_000)
    # Only each leg's owner renegotiates it.
    error = await rpc_error(
        stub.RenegotiateCall(svc.RenegotiateCallRequest(name=callee.name, qos=bob_asks), metadata=CAROL)
    )
    assert reason(error) == "NOT_OWNER"


async def test_provider_initiated_changes_reach_both_legs(stub) -> None:
    await open_line(stub)
    needed, needed_in = await call_line(stub, qos(300_000))
    await stub.AnswerCall(answer_request(needed_in.name), metadata=BOB)
    flexible, flexible_in = await call_line(stub, qos(600_000), Level.SERVICE_LEVEL_IF_AVAILABLE)
    await stub.AnswerCall(answer_request(flexible_in.name), metadata=BOB)
    # Shed the newest (flexible, degraded to what fits), then nothing else needs to move.
    await stub.UpdateLink(
        svc.UpdateLinkRequest(
            link=provider_pb2.Link(name="providers/reference/links/default", capacity_bytes_per_second=700_000)
        )
    )
    carol, bob = await get(stub, flexible.name), await get(stub, flexible_in.name)
    assert carol.state == bob.state == State.STATE_CONNECTED
    assert carol.granted_qos.sending.token_rate_bytes_per_second == 400_000
    assert bob.granted_qos == mirror(carol.granted_qos)
    for name in (flexible.name, flexible_in.name):
        last = (await events_of(stub, name))[-1]
        assert last.type == E.QOS_EVENT_TYPE_QOS_CHANGED
        assert last.cause == 2  # PROVIDER_INITIATED
    # Below what the NEEDED pair holds: the flexible one is degraded to best effort first, then the
    # NEEDED pair cannot be sustained: both its legs are disconnected QOS_UNAVAILABLE.
    await stub.UpdateLink(
        svc.UpdateLinkRequest(
            link=provider_pb2.Link(name="providers/reference/links/default", capacity_bytes_per_second=250_000)
        )
    )
    for name in (needed.name, needed_in.name):
        gone = await get(stub, name)
        assert gone.disconnect_reason == Disconnect.DISCONNECT_REASON_QOS_UNAVAILABLE
        assert kinds(await events_of(stub, name))[-2:] == [E.QOS_EVENT_TYPE_NOQOS, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    carol, bob = await get(stub, flexible.name), await get(stub, flexible_in.name)
    assert carol.granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert bob.granted_qos == mirror(carol.granted_qos) and bob.state == State.STATE_CONNECTED
    assert await reserved(stub) == (0, 0)


# -- watching, listing ---------------------------------------------------------------------------
async def test_watching_a_line_delivers_the_events_of_its_calls_only(stub) -> None:
    line = await open_line(stub, line_id="bob")
    await open_line(stub, "sip:dave@example.test", as_=(("x-callqos-principal", "dave"),), line_id="dave")
    await stub.CreateCall(make_request(qos(1000)), metadata=CAROL)  # a call to no line
    _, to_dave = await call_line(stub, address="sip:dave@example.test")
    _, to_bob = await call_line(stub)
    await stub.AnswerCall(answer_request(to_bob.name), metadata=BOB)
    seen = await events_of(stub, line=line.name)
    assert {event.call for event in seen} == {to_bob.name} and to_dave.name not in {e.call for e in seen}
    assert kinds(seen) == [E.QOS_EVENT_TYPE_CALL_OFFERED, E.QOS_EVENT_TYPE_QOS_GRANTED]
    # A monitor needs no permission: mallory watches bob's line too.
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, line=line.name), metadata=MALLORY)
    first = await stream.read()
    stream.cancel()
    assert first.event == seen[0]
    bad = await rpc_error(stub.WatchEvents(svc.WatchEventsRequest(line="bob")).read())
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(bad) == {"line"}


async def test_list_calls_filters_by_state_and_line(stub) -> None:
    line = await open_line(stub)
    _, first = await call_line(stub)
    _, second = await call_line(stub)
    await stub.RejectCall(svc.RejectCallRequest(name=first.name), metadata=BOB)
    offering = await stub.ListCalls(svc.ListCallsRequest(filter=f'state = OFFERING AND line = "{line.name}"'))
    assert [call.name for call in offering.calls] == [second.name]
    ringing = await stub.ListCalls(svc.ListCallsRequest(filter="state = RINGBACK"))
    assert [call.peer for call in ringing.calls] == [second.name]
    on_line = await stub.ListCalls(svc.ListCallsRequest(filter=f'line = "{line.name}"', page_size=1))
    assert [call.name for call in on_line.calls] == [second.name] and on_line.next_page_token
    rest = await stub.ListCalls(
        svc.ListCallsRequest(filter=f'line = "{line.name}"', page_size=1, page_token=on_line.next_page_token)
    )
    assert [call.name for call in rest.calls] == [first.name] and not rest.next_page_token
    bad = await rpc_error(stub.ListCalls(svc.ListCallsRequest(filter="line = bob")))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_closing_a_line_ends_what_rings_keeps_what_was_answered_and_frees_the_address(stub) -> None:
    line = await open_line(stub)
    answered_caller, answered = await call_line(stub)
    await stub.AnswerCall(answer_request(answered.name), metadata=BOB)
    ringing_caller, ringing = await call_line(stub, qos(1000))
    closed = await stub.CloseLine(svc.CloseLineRequest(name=line.name), metadata=BOB)
    assert closed.state == closed.State.STATE_CLOSED and closed.HasField("close_time")
    for name in (ringing.name, ringing_caller.name):
        assert (await get(stub, name)).disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
    assert (await get(stub, answered.name)).state == State.STATE_CONNECTED
    assert (await get(stub, answered_caller.name)).state == State.STATE_CONNECTED
    # A call to the address now goes out to the provider like any other.
    plain = await stub.CreateCall(make_request(qos(1000), destination=BOB_ADDRESS), metadata=CAROL)
    assert plain.state == State.STATE_CONNECTED and not plain.peer
    # And the address may be opened again.
    again = await open_line(stub)
    assert again.name != line.name and again.state == again.State.STATE_OPEN


async def test_a_call_at_best_effort_is_offered_and_connects_without_a_reservation(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub, qos(400_000), Level.SERVICE_LEVEL_BEST_EFFORT)
    await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    assert (await get(stub, caller.name)).granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert await reserved(stub) == (0, 0)


async def test_a_provider_that_cannot_renegotiate_carries_pairs_too(tmp_path) -> None:
    async with (
        testing.InProcessServer(tmp_path, default_provider="no-qos") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        await open_line(stub)
        caller, callee = await call_line(stub, qos(None), Level.SERVICE_LEVEL_NEEDED)
        answered = await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        assert answered.state == State.STATE_CONNECTED and not answered.features.set_qos
        error = await rpc_error(
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=callee.name, qos=qos(None)), metadata=BOB)
        )
        assert reason(error) == "RENEGOTIATION_UNSUPPORTED"
        assert (await get(stub, caller.name)).provider == "providers/no-qos"


async def test_two_answers_at_once_connect_once(stub) -> None:
    await open_line(stub)
    _, callee = await call_line(stub)
    results = await asyncio.gather(
        *(stub.AnswerCall(answer_request(callee.name), metadata=BOB) for _ in range(5)), return_exceptions=True
    )
    connected = [r for r in results if isinstance(r, call_pb2.Call)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(connected) == 1 and all(reason(e) == "CALL_NOT_OFFERING" for e in failed)
    assert await reserved(stub) == (400_000, 100_000)


@pytest.mark.parametrize("answer_first", [True, False])
async def test_an_answer_racing_the_ring_out_ends_one_way(tmp_path, answer_first: bool) -> None:
    async with (
        testing.InProcessServer(tmp_path) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        await open_line(stub, timeout_s=1)
        caller, callee = await call_line(stub)
        await asyncio.sleep(0.95 if answer_first else 1.05)
        try:
            await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        except grpc.aio.AioRpcError as error:
            assert reason(error) == "CALL_NOT_OFFERING"
        await asyncio.sleep(0.5)
        legs = [await get(stub, caller.name), await get(stub, callee.name)]
        assert legs[0].state == legs[1].state in (State.STATE_CONNECTED, State.STATE_DISCONNECTED)
        expected = (400_000, 100_000) if legs[0].state == State.STATE_CONNECTED else (0, 0)
        assert await reserved(stub) == expected
