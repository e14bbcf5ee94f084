"""Incoming calls across restarts of a real server process on SQLite (conformance/SPEC.md OFFER-4,
PAIR-2): an offered call survives a SIGKILL and can be answered after it; its no-answer timer is
stored with it, so it rings out on time across a restart, or at start when its time passed while
the server was down; an answered pair is restored with ONE reservation."""

from __future__ import annotations

import asyncio
import time

import grpc
from incoming_kit import (
    BOB,
    CAROL,
    Disconnect,
    State,
    answer_request,
    call_line,
    events_of,
    get,
    open_line,
    wait_for_state,
)
from server_testkit import make_request, qos, reason, reserved, rpc_error

from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


async def test_an_offered_call_survives_sigkill_and_is_answered_after_it(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        line = await open_line(stub, timeout_s=60)
        caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000), call_id="to-bob", request_id="c-1")
    server_process.kill()

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        assert await get(stub, callee.name) == callee and await get(stub, caller.name) == caller
        assert await stub.GetLine(svc.GetLineRequest(name=line.name)) == line
        busy = await rpc_error(open_line(stub, as_=CAROL))
        assert reason(busy) == "ADDRESS_IN_USE", "the line is still open after the restart"
        # The retried CreateCall finds the ringing call, and makes no second offer.
        again = await stub.CreateCall(
            make_request(qos(400_000, recv_rate=100_000), destination=line.address, call_id="to-bob", request_id="c-1"),
            metadata=CAROL,
        )
        assert again == caller
        answered = await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        assert answered.state == State.STATE_CONNECTED
        assert (await get(stub, caller.name)).state == State.STATE_CONNECTED
        assert await reserved(stub) == (400_000, 100_000)


async def test_an_answered_pair_is_restored_with_one_reservation(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        await open_line(stub)
        caller, callee = await call_line(stub, qos(400_000, recv_rate=100_000))
        await stub.AnswerCall(answer_request(callee.name), metadata=BOB)
        connected = [await get(stub, caller.name), await get(stub, callee.name)]
        before = await events_of(stub)
    server_process.kill()

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        assert [await get(stub, caller.name), await get(stub, callee.name)] == connected
        assert await reserved(stub) == (400_000, 100_000), "a restored pair holds one reservation, not two"
        assert await events_of(stub) == before
        await stub.DropCall(svc.DropCallRequest(name=callee.name), metadata=BOB)
        assert (await get(stub, caller.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED
        assert await reserved(stub) == (0, 0)


async def test_an_offer_whose_time_passed_while_the_server_was_down_rings_out_at_start(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        await open_line(stub, timeout_s=1)
        caller, callee = await call_line(stub)
        offered = (await events_of(stub, callee.name))[0]
    await asyncio.to_thread(server_process.stop)
    await asyncio.sleep(max(0.0, callee.offer_expire_time.ToNanoseconds() / 1e9 - time.time()) + 0.2)

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        # Ended before the server served its first request.
        for name in (caller.name, callee.name):
            gone = await get(stub, name)
            assert gone.state == State.STATE_DISCONNECTED
            assert gone.disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
        ended = (await events_of(stub, callee.name))[-1]
        assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
        assert ended.trace_id == offered.trace_id


async def test_the_no_answer_timer_keeps_running_across_a_restart(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        await open_line(stub, timeout_s=6)
        caller, callee = await call_line(stub)
    server_process.kill()
    server_process.start()
    deadline = callee.offer_expire_time.ToNanoseconds() / 1e9
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        if time.time() < deadline - 0.5:  # the restart was quick enough to see it still ringing
            assert (await get(stub, callee.name)).state == State.STATE_OFFERING
        await wait_for_state(stub, callee.name, State.STATE_DISCONNECTED, within=max(0.0, deadline - time.time()) + 5)
        assert time.time() >= deadline - 0.05, "rang out before its offer_expire_time"
        assert (await get(stub, caller.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_NO_ANSWER
