"""Provider.validate_provider_specific: a provider's own check of its provider_specific bytes runs
in validation, before anything is reserved; each problem is one BadRequest field violation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from server_testkit import make_request, qos, rpc_error, violated_fields

from callqos.server import app
from callqos.server.config import Config
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


@pytest.fixture
async def picky(tmp_path: Path) -> AsyncIterator[svc_grpc.CallQosServiceStub]:
    config = Config(
        listen="127.0.0.1:0",
        storage="memory",
        data_dir=tmp_path,
        providers={"picky": {"plugin": "server_testkit:PickyProvider"}},
        default_provider="picky",
        shutdown_grace_seconds=1.0,
    )
    running = await app.start(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield svc_grpc.CallQosServiceStub(channel)
    finally:
        await running.stop()


async def reserved(stub: svc_grpc.CallQosServiceStub) -> int:
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/picky"))
    return links.links[0].sending_reserved_bytes_per_second


async def test_create_refuses_what_the_provider_refuses_before_reserving(picky: svc_grpc.CallQosServiceStub) -> None:
    error = await rpc_error(picky.CreateCall(make_request(qos(provider_specific=b"bad x"), call_id="c1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"call.requested_qos.provider_specific"}
    assert "must start with 'ok'" in error.details() and "must not contain 'x'" in error.details()
    assert await reserved(picky) == 0
    assert (await rpc_error(picky.GetCall(svc.GetCallRequest(name="calls/c1")))).code() == grpc.StatusCode.NOT_FOUND
    # Accepted bytes, and empty ones (nothing provider-specific), pass.
    await picky.CreateCall(make_request(qos(provider_specific=b"ok"), call_id="c2"))
    await picky.CreateCall(make_request(qos(), call_id="c3"))
    assert await reserved(picky) == 200_000


async def test_renegotiation_checks_new_bytes_and_keeps_the_call(picky: svc_grpc.CallQosServiceStub) -> None:
    call = await picky.CreateCall(make_request(qos(provider_specific=b"ok 1"), call_id="r1"))
    error = await rpc_error(
        picky.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(200_000, provider_specific=b"no")))
    )
    assert violated_fields(error) == {"qos.provider_specific"}
    assert (await picky.GetCall(svc.GetCallRequest(name=call.name))).etag == call.etag
    # Empty bytes keep the call's own (not checked again); new acceptable bytes replace them.
    kept = await picky.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(150_000)))
    assert kept.granted_qos.provider_specific == b"ok 1"
    changed = await picky.RenegotiateCall(
        svc.RenegotiateCallRequest(name=call.name, qos=qos(150_000, provider_specific=b"ok 2"))
    )
    assert changed.granted_qos.provider_specific == b"ok 2"
