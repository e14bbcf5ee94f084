"""Standard health checking and server reflection, so grpcurl and Kubernetes probes work."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


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
