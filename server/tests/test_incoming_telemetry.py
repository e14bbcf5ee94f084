"""A call's set-up is one trace (the offer's): answering, rejecting and ringing out continue it and
link to the RPC that caused them; and the incoming-call counter counts offers and how each ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from incoming_kit import BOB, CAROL, answer_request, call_line, events_of, open_line, wait_for_state
from opentelemetry.sdk.trace import ReadableSpan
from server_testkit import flow, qos, rpc_error
from test_telemetry import SERVICE, Traced, _traced, trace_id

from callqos.server.config import Config
from callqos.server.telemetry.semconv import Semconv
from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

ST = flowspec_pb2.ServiceType


@pytest.fixture
async def traced(config: Config) -> AsyncIterator[Traced]:
    async for value in _traced(config, Semconv()):
        yield value


def spans_named(traced: Traced, name: str) -> list[ReadableSpan]:
    return [span for span in traced.finished() if span.name == name]


async def test_the_answer_continues_the_offers_trace_and_links_to_its_rpc(traced: Traced) -> None:
    stub = traced.stub
    await open_line(stub)
    caller, callee = await call_line(stub)
    await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    offer_rpc = await traced.rpc("CreateCall")
    answer_rpc = await traced.rpc("AnswerCall")
    assert trace_id(offer_rpc) != trace_id(answer_rpc), "two RPCs, two client traces"
    (answer,) = spans_named(traced, "callqos.answer")
    assert answer.context.trace_id == offer_rpc.context.trace_id
    assert answer.parent is not None and answer.parent.span_id == offer_rpc.context.span_id
    assert [link.context.span_id for link in answer.links] == [answer_rpc.context.span_id]
    # The provider's decision and the commit happen inside the answer's span.
    children = {s.name for s in traced.finished() if s.parent and s.parent.span_id == answer.context.span_id}
    assert {"callqos.provider.admit", "callqos.store.commit"} <= children
    # So every set-up event of both legs carries the offer's trace id.
    events = await events_of(stub)
    assert {event.trace_id for event in events} == {trace_id(offer_rpc)}
    assert callee.offer_traceparent == caller.offer_traceparent
    assert callee.offer_traceparent.split("-")[1:3] == [trace_id(offer_rpc), format(offer_rpc.context.span_id, "016x")]


async def test_reject_and_ring_out_continue_the_offers_trace_too(traced: Traced) -> None:
    stub = traced.stub
    await open_line(stub, timeout_s=1)
    _, rejected = await call_line(stub)
    await stub.RejectCall(svc.RejectCallRequest(name=rejected.name), metadata=BOB)
    _, unanswered = await call_line(stub)
    await wait_for_state(stub, unanswered.name, call_pb2.Call.State.STATE_DISCONNECTED)
    for name, span_name in ((rejected.name, "callqos.reject"), (unanswered.name, "callqos.no_answer")):
        offered, ended = await events_of(stub, name)
        assert offered.trace_id == ended.trace_id
        assert [format(s.context.trace_id, "032x") for s in spans_named(traced, span_name)].count(offered.trace_id) == 1


async def test_the_incoming_call_counter_counts_offers_and_their_ends(traced: Traced) -> None:
    stub = traced.stub
    await open_line(stub, timeout_s=1)
    _, answered = await call_line(stub)
    await stub.AnswerCall(answer_request(answered.name), metadata=BOB)
    _, rejected = await call_line(stub)
    await stub.RejectCall(svc.RejectCallRequest(name=rejected.name), metadata=BOB)
    _, short = await call_line(stub, qos(300_000))
    less = flowspec_pb2.QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=flow(rate=1))
    await rpc_error(stub.AnswerCall(answer_request(short.name, less), metadata=BOB))
    _, unanswered = await call_line(stub, qos(1000))
    await wait_for_state(stub, unanswered.name, call_pb2.Call.State.STATE_DISCONNECTED)
    counts = {
        attributes["callqos.outcome"]: point.value for attributes, point in traced.metric("callqos.incoming_calls")
    }
    assert counts == {"offered": 4, "answered": 1, "rejected": 1, "refused": 1, "no_answer": 1}
    # The answer's admission is an admission like any other.
    admissions = {
        attributes["callqos.outcome"]: point.value for attributes, point in traced.metric("callqos.admissions")
    }
    assert admissions == {"granted": 1}
    assert f"{SERVICE}/AnswerCall" in {s.name for s in traced.finished()}


async def test_without_tracing_the_set_up_events_still_share_the_offers_trace_id(stub) -> None:
    await open_line(stub)
    caller, callee = await call_line(stub)
    await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
    events = await events_of(stub)
    assert len(events) == 4 and len({event.trace_id for event in events}) == 1 and events[0].trace_id
    # Later operations run in traces of their own, as for any call.
    await stub.DropCall(svc.DropCallRequest(name=caller.name), metadata=CAROL)
    assert (await events_of(stub))[-1].trace_id != events[0].trace_id
