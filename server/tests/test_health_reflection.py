"""Standard health checking and server reflection, so grpcurl and Kubernetes probes work."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_testkit import ROOT

from callqos.server import reflection


async def test_health_serving_then_not_serving_on_shutdown(server, channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "callqos.v1.CallQosService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    await server.health.enter_graceful_shutdown()
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_unknown_health_service_is_not_found(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    try:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"))
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("expected NOT_FOUND")


async def test_reflection_lists_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"callqos.v1.CallQosService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def ask(channel, service: str, request: reflection_pb2.ServerReflectionRequest):
    """One reflection request to `service` (v1 and v1alpha share their messages, field for field)."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def requests():
        yield request

    async for response in call(requests()):
        return response
    raise AssertionError("no answer")


@pytest.mark.parametrize("version", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
async def test_both_reflection_versions_describe_methods_and_enum_values(channel, version: str) -> None:
    """grpc.reflection.v1 (what grpcurl and ghz ask first) and v1alpha: services listed, and a
    method or an enum value resolves to the file that defines it (grpc-python alone answers
    NOT_FOUND for those, grpc/grpc#34743)."""
    listed = await ask(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    for symbol, file in [
        ("callqos.v1.CallQosService.CreateCall", "callqos/v1/callqos_service.proto"),
        ("callqos.v1.CallQosService", "callqos/v1/callqos_service.proto"),
        ("callqos.v1.Call", "callqos/v1/call.proto"),
        ("callqos.v1.ErrorReason.ERROR_REASON_WATCHER_TOO_SLOW", "callqos/v1/errors.proto"),
        ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", "grpc/reflection/v1/reflection.proto"),
    ]:
        answer = await ask(channel, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        assert answer.WhichOneof("message_response") == "file_descriptor_response", (symbol, answer)
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw).name
            for raw in answer.file_descriptor_response.file_descriptor_proto
        ]
        assert file in files, (symbol, files)
    missing = await ask(
        channel,
        version,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="callqos.v1.CallQosService.Nope"),
    )
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


GRPCURL = ROOT / "clients" / "go" / ".bin" / "grpcurl"


@pytest.mark.skipif(
    not GRPCURL.exists() and not shutil.which("go"), reason="grpcurl comes from `go install` (make -C clients/go tools)"
)
def test_grpcurl_describes_a_method_over_each_reflection_version(tmp_path) -> None:
    """A stock grpcurl: `describe` of a method works, over v1 (what it asks first) and, against a
    server that offers only v1alpha (as grpcio-reflection alone does), over v1alpha."""
    if not GRPCURL.exists():
        subprocess.run(["make", "-C", str(ROOT / "clients" / "go"), "tools"], check=True, timeout=600)

    async def run() -> None:
        for versions in (reflection.SERVICE_NAMES, (reflection.V1ALPHA,)):
            server = grpc.aio.server()
            reflection.enable(server, ("callqos.v1.CallQosService",), versions=versions)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                result = await asyncio.to_thread(
                    subprocess.run,
                    [
                        str(GRPCURL),
                        "-plaintext",
                        "-max-time",
                        "10",
                        f"127.0.0.1:{port}",
                        "describe",
                        "callqos.v1.CallQosService.CreateCall",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            finally:
                await server.stop(0)
            assert result.returncode == 0, (versions, result.stderr)
            assert "rpc CreateCall ( .callqos.v1.CreateCallRequest ) returns ( .callqos.v1.Call )" in result.stdout

    asyncio.run(run())
