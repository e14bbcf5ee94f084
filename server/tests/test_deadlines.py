"""The caller's deadline bounds the provider call made on its behalf (Python gRPC does not
propagate deadlines by itself), and a release is never cut short."""

from __future__ import annotations

import time

import grpc
from server_testkit import make_request, qos, reserved, rpc_error

from callqos.server import testing
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import event_pb2

SLOW_REFERENCE = "server_testkit:SlowProvider"  # the reference provider, admitting after `delay_seconds`


async def test_provider_call_is_cut_to_the_callers_deadline(tmp_path) -> None:
    async with (
        testing.InProcessServer(
            tmp_path,
            provider_timeout_seconds=30.0,
            providers={"reference": {"plugin": SLOW_REFERENCE, "delay_seconds": 20.0}},
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        started = time.monotonic()
        error = await rpc_error(stub.CreateCall(make_request(qos(1000)), timeout=0.5))
        # Whichever fires first: the client's own deadline, or the server's cut provider call
        # answering just before it (UNAVAILABLE, PROVIDER_UNAVAILABLE).
        assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        # The server gave up with the caller (not after its own 30 s provider deadline) and
        # recorded the attempt as failed, releasing whatever the provider might hold.
        stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0))
        first = await stream.read()
        stream.cancel()
        assert first.event.type == event_pb2.QosEventType.QOS_EVENT_TYPE_GENERIC_ERROR
        # (Without the cut the provider would answer after 20 s and the first event would be
        # QOS_GRANTED, for a caller long gone.)
        assert time.monotonic() - started < 15
        assert await reserved(stub) == (0, 0)


async def test_a_cancelled_make_call_still_ends_consistently(tmp_path) -> None:
    """The client cancels while the provider is deciding: the server finishes the operation, so
    the store and the provider agree, and a retry with the same request_id finds the call."""
    import asyncio

    async with (
        testing.InProcessServer(
            tmp_path, providers={"reference": {"plugin": SLOW_REFERENCE, "delay_seconds": 1.0}}
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        request = make_request(qos(1000), request_id="cancelled-once")
        attempt = stub.CreateCall(request)
        await asyncio.sleep(0.2)
        attempt.cancel()
        await asyncio.sleep(1.5)
        calls = (await stub.ListCalls(svc.ListCallsRequest())).calls
        assert len(calls) == 1 and calls[0].state == calls[0].State.STATE_CONNECTED
        assert await reserved(stub) == (1000, 0)
        retried = await stub.CreateCall(request)
        assert retried.name == calls[0].name
        assert await reserved(stub) == (1000, 0)
