"""The sum of reservations never exceeds capacity, also under concurrent requests."""

from __future__ import annotations

import asyncio

import grpc
from server_testkit import CAPACITY, make_request, qos, reserved

from callqos.v1 import callqos_service_pb2 as svc


async def test_concurrent_makes_never_over_admit(stub) -> None:
    share = CAPACITY // 10
    results = await asyncio.gather(
        *(stub.CreateCall(make_request(qos(share))) for _ in range(40)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(admitted) == 10 and len(refused) == 30
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert await reserved(stub) == (CAPACITY, 0)


async def test_concurrent_renegotiations_and_makes_never_over_admit(stub) -> None:
    calls = [await stub.CreateCall(make_request(qos(CAPACITY // 10))) for _ in range(5)]
    ups = [stub.RenegotiateCall(svc.RenegotiateCallRequest(name=c.name, qos=qos(CAPACITY // 4))) for c in calls]
    makes = [stub.CreateCall(make_request(qos(CAPACITY // 10))) for _ in range(10)]
    await asyncio.gather(*ups, *makes, return_exceptions=True)
    sending, _ = await reserved(stub)
    assert sending <= CAPACITY
    connected = await stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED", page_size=500))
    assert sum(c.granted_qos.sending.token_rate_bytes_per_second for c in connected.calls) == sending


async def test_concurrent_repeats_of_one_request_id_reserve_once(stub) -> None:
    request = make_request(qos(100_000), request_id="burst")
    results = await asyncio.gather(*(stub.CreateCall(request) for _ in range(10)))
    assert len({r.name for r in results}) == 1
    assert await reserved(stub) == (100_000, 0)
