"""callqos.wire: the reason → gRPC code table comes from the (grpc_code) option, and insists on it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import code_pb2

from callqos import wire
from callqos.v1 import errors_pb2

GRPC_CODE: Any = errors_pb2.grpc_code  # the generated .pyi types the handle as a plain FieldDescriptor


def _enum(name: str, codes: dict[str, int | None]) -> Any:
    """An enum like ErrorReason, added to the default pool, whose values carry the given codes."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"callqos_wire_test/{name.lower()}.proto",
        package="callqos_wire_test",
        syntax="proto3",
        dependency=[errors_pb2.DESCRIPTOR.name],
    )
    enum = file.enum_type.add(name=name)
    enum.value.add(name=f"{name.upper()}_UNSPECIFIED", number=0)
    for number, (value, code) in enumerate(codes.items(), start=1):
        added = enum.value.add(name=f"{name.upper()}_{value}", number=number)
        if code is not None:
            added.options.Extensions[GRPC_CODE] = code
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindEnumTypeByName(f"callqos_wire_test.{name}")


def test_every_error_reason_has_a_code() -> None:
    numbers = {value.number for value in errors_pb2.ErrorReason.DESCRIPTOR.values} - {0}
    assert set(wire.STATUS_CODES) == numbers
    assert wire.STATUS_CODES[errors_pb2.ERROR_REASON_QOS_UNAVAILABLE] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert wire.STATUS_CODES_BY_REASON["CURSOR_EXPIRED"] == grpc.StatusCode.OUT_OF_RANGE


def test_the_table_is_read_from_the_option() -> None:
    enum = _enum("Coded", {"A": errors_pb2.GRPC_CODE_NOT_FOUND, "B": errors_pb2.GRPC_CODE_ABORTED})
    assert wire.reason_codes(enum) == {1: grpc.StatusCode.NOT_FOUND, 2: grpc.StatusCode.ABORTED}


@pytest.mark.parametrize("code", [None, errors_pb2.GRPC_CODE_UNSPECIFIED])
def test_a_reason_without_a_code_is_refused(code: int | None) -> None:
    name = f"Uncoded{code}"
    enum = _enum(name, {"HAS_ONE": errors_pb2.GRPC_CODE_INTERNAL, "LACKS_ONE": code})
    with pytest.raises(LookupError, match=f"{name.upper()}_LACKS_ONE has no"):
        wire.reason_codes(enum)


def test_grpc_code_has_google_rpc_codes_names_and_numbers() -> None:
    # errors.proto defines its own GrpcCode (so the API builds offline, with no import to fetch);
    # it must mean exactly google.rpc.Code, 0 aside (OK is never an error's code).
    ours = {v.number: v.name.removeprefix("GRPC_CODE_") for v in errors_pb2.GrpcCode.DESCRIPTOR.values}
    google = {v.number: v.name for v in code_pb2.Code.DESCRIPTOR.values}
    assert ours.pop(0) == "UNSPECIFIED" and google.pop(0) == "OK"
    assert ours == google


@pytest.mark.parametrize(
    ("env", "target"),
    [
        ({}, "127.0.0.1:50051"),
        ({"CALLQOS_TARGET": "10.0.0.1:7000"}, "10.0.0.1:7000"),
        ({"CALLQOS_TARGET": "10.0.0.1:7000", "CALLQOS_LISTEN": "127.0.0.1:6000"}, "10.0.0.1:7000"),
        ({"CALLQOS_LISTEN": "127.0.0.1:6000"}, "127.0.0.1:6000"),
        ({"CALLQOS_LISTEN": "0.0.0.0:6000"}, "127.0.0.1:6000"),
        ({"CALLQOS_LISTEN": "[::]:6000"}, "[::1]:6000"),
        ({"CALLQOS_LISTEN": "[::1]:6000"}, "[::1]:6000"),
        ({"CALLQOS_LISTEN": "server.example:6000"}, "server.example:6000"),
        ({"CALLQOS_TARGET": " ", "CALLQOS_LISTEN": "127.0.0.1:6000"}, "127.0.0.1:6000"),
    ],
)
def test_the_address_convention(env: dict[str, str], target: str) -> None:
    """A client connects to CALLQOS_TARGET, else to where CALLQOS_LISTEN makes the server listen
    (a wildcard host read as loopback), else to the default address."""
    assert wire.default_target(env) == target
