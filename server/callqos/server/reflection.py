"""Server reflection, `grpc.reflection.v1` and `grpc.reflection.v1alpha`, so that grpcurl, ghz
and Postman work without the proto files — including describing a method.

grpcio-reflection offers only v1alpha (current tools ask for v1 first), and it cannot describe a
method: asked for the file that contains `callqos.v1.CallQosService.CreateCall`, it looks the name
up in the Python descriptor pool, which knows services and messages but not their methods or enum
values (grpc/grpc#34743), and answers NOT_FOUND ("Symbol not found" in grpcurl, and ghz cannot run
in reflection mode). This module serves both versions from one servicer that also resolves such
a member to the file of the service or enum that holds it.

The two versions are the same protocol: grpc.reflection.v1 is v1alpha's messages under a new
package, field for field. So both are served with the v1alpha message classes, and the v1 file
is added to the descriptor pool (v1alpha's, renamed) only so that reflection can describe itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # untyped
    """grpcio-reflection's servicer, finding methods and enum values too."""

    def __init__(self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None) -> None:
        super().__init__(service_names, pool=pool)
        self.pool = pool or descriptor_pool.Default()

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        found = containing_file(self.pool, fully_qualified_name)
        if found is not None and found != fully_qualified_name:
            fully_qualified_name = found  # the service or enum that holds the member
        return super()._file_containing_symbol(request, fully_qualified_name)


def containing_file(pool: descriptor_pool.DescriptorPool, name: str) -> str | None:
    """`name` if the pool finds it as it is, else the service or enum whose method or value it
    names (`pkg.Service.Method` → `pkg.Service`), else None."""
    try:
        pool.FindFileContainingSymbol(name)
        return name
    except KeyError:
        pass
    parent, _, member = name.rpartition(".")
    try:
        if member in pool.FindServiceByName(parent).methods_by_name:
            return parent
    except KeyError:
        pass
    try:
        if member in pool.FindEnumTypeByName(parent).values_by_name:
            return parent
    except KeyError:
        pass
    return None


def _describe_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Put grpc/reflection/v1/reflection.proto in the pool: v1alpha's file, renamed."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
            method.output_type = method.output_type.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    pool.Add(proto)


def enable(server: grpc.aio.Server, service_names: Iterable[str], versions: Iterable[str] = SERVICE_NAMES) -> None:
    """Serve reflection on `server` for `service_names` (the reflection services themselves are
    added), in each of `versions` (both by default)."""
    pool = descriptor_pool.Default()
    versions = tuple(versions)
    if V1 in versions:
        _describe_v1(pool)
    servicer = ReflectionServicer([*service_names, *versions], pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(version, {_METHOD: handler}) for version in versions]
    )
