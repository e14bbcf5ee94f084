"""Every ErrorReason leaves the server with the gRPC code errors.proto gives it, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from callqos.server.errors import ServiceError
from callqos.v1 import errors_pb2

GRPC_CODE: Any = errors_pb2.grpc_code  # the generated .pyi types the handle as a plain FieldDescriptor
_CODES = {code.value[0]: code for code in grpc.StatusCode}
REASONS = [value for value in errors_pb2.ErrorReason.DESCRIPTOR.values if value.number != 0]
METHOD = "/callqos.test.Errors/Raise"


async def _raise(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Fails with a ServiceError of the reason whose number is the request, as the service does."""
    error = ServiceError(int(request.decode()), "raised by the test", metadata={"why": "test"})
    await context.abort_with_status(rpc_status.to_status(error.to_status()))
    raise AssertionError("unreachable: abort raises")


@pytest.fixture
async def errors_channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "callqos.test.Errors", {"Raise": grpc.unary_unary_rpc_method_handler(_raise)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


@pytest.mark.parametrize("value", REASONS, ids=[value.name for value in REASONS])
async def test_each_reason_leaves_with_its_code_and_error_info(errors_channel: grpc.aio.Channel, value: Any) -> None:
    options = value.GetOptions()
    assert options.HasExtension(GRPC_CODE), f"{value.name} has no (callqos.v1.grpc_code) option in errors.proto"
    expected = _CODES[options.Extensions[GRPC_CODE]]
    call = errors_channel.unary_unary(METHOD)(str(value.number).encode())
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == expected
    status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        value.name.removeprefix("ERROR_REASON_"),
        "callqos.dev",
        {"why": "test"},
    )


@pytest.mark.parametrize("reason", [0, 999])
def test_a_service_error_needs_a_reason_with_a_code(reason: int) -> None:
    with pytest.raises(ValueError, match="not an ErrorReason"):
        ServiceError(reason, "no such reason")
