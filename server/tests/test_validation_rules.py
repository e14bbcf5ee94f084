"""Malformed requests get INVALID_ARGUMENT with a field violation per bad field, and change
nothing (conformance/SPEC.md FLOW-1, FLOW-2 and the FLOW and REQ clauses)."""

from __future__ import annotations

import grpc
import pytest
from server_testkit import ST, flow, make_request, qos, reason, reserved, rpc_error, violated_fields

from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import flowspec_pb2

CL = ST.SERVICE_TYPE_CONTROLLED_LOAD
BE = ST.SERVICE_TYPE_BEST_EFFORT


def spec(sending: flowspec_pb2.FlowSpec, receiving: flowspec_pb2.FlowSpec | None = None, **kw) -> flowspec_pb2.QosSpec:
    return flowspec_pb2.QosSpec(sending=sending, receiving=receiving or flow(BE), **kw)


CASES = {
    "sending token rate 0": (spec(flow(CL, 0)), {"call.requested_qos.sending.token_rate_bytes_per_second"}),
    "sending token rate unspecified": (spec(flow(CL)), {"call.requested_qos.sending.token_rate_bytes_per_second"}),
    "guaranteed receiver without token rate": (
        spec(flow(CL, 100), flow(ST.SERVICE_TYPE_GUARANTEED, latency_microseconds=100_000)),
        {"call.requested_qos.receiving.token_rate_bytes_per_second"},
    ),
    "peak below token rate": (
        spec(flow(CL, 1000, peak_bandwidth_bytes_per_second=999)),
        {"call.requested_qos.sending.peak_bandwidth_bytes_per_second"},
    ),
    "peak both bounded and unbounded": (
        spec(flow(CL, 1000, peak_bandwidth_bytes_per_second=2000, peak_bandwidth_unbounded=True)),
        {"call.requested_qos.sending.peak_bandwidth_bytes_per_second"},
    ),
    "minimum policed above max sdu": (
        spec(flow(CL, 1000, max_sdu_size_bytes=500, minimum_policed_size_bytes=501)),
        {"call.requested_qos.sending.minimum_policed_size_bytes"},
    ),
    "minimum policed 0": (
        spec(flow(CL, 1000, minimum_policed_size_bytes=0)),
        {"call.requested_qos.sending.minimum_policed_size_bytes"},
    ),
    "max sdu above the provider's MTU": (
        spec(flow(CL, 1000, max_sdu_size_bytes=9000)),
        {"call.requested_qos.sending.max_sdu_size_bytes"},
    ),
    "raw QOS_NOT_SPECIFIED sentinel": (
        spec(flow(CL, 1000, latency_microseconds=0xFFFFFFFF)),
        {"call.requested_qos.sending.latency_microseconds"},
    ),
    "raw POSITIVE_INFINITY_RATE sentinel": (
        spec(flow(CL, 1000, peak_bandwidth_bytes_per_second=0xFFFFFFFE)),
        {"call.requested_qos.sending.peak_bandwidth_bytes_per_second"},
    ),
    "service type unspecified": (spec(flow(ST.SERVICE_TYPE_UNSPECIFIED)), {"call.requested_qos.sending.service_type"}),
    "unknown service type number": (spec(flow(77)), {"call.requested_qos.sending.service_type"}),
    "NETWORK_UNAVAILABLE is a notification": (
        spec(flow(BE), flow(ST.SERVICE_TYPE_NETWORK_UNAVAILABLE)),
        {"call.requested_qos.receiving.service_type"},
    ),
    "GENERAL_INFORMATION is a notification": (
        spec(flow(ST.SERVICE_TYPE_GENERAL_INFORMATION)),
        {"call.requested_qos.sending.service_type"},
    ),
    "NONCONFORMING is a notification": (
        spec(flow(ST.SERVICE_TYPE_NONCONFORMING)),
        {"call.requested_qos.sending.service_type"},
    ),
    "NO_CHANGE when creating": (spec(flow(ST.SERVICE_TYPE_NO_CHANGE)), {"call.requested_qos.sending.service_type"}),
    "oversized provider_specific": (
        spec(flow(CL, 1000), provider_specific=b"x" * 4097),
        {"call.requested_qos.provider_specific"},
    ),
    "two bad fields at once": (
        spec(flow(CL, 0), flow(ST.SERVICE_TYPE_NONCONFORMING)),
        {"call.requested_qos.sending.token_rate_bytes_per_second", "call.requested_qos.receiving.service_type"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_invalid_flowspec_is_rejected_naming_the_field(stub, case: str) -> None:
    bad, fields = CASES[case]
    error = await rpc_error(stub.CreateCall(make_request(bad, request_id=f"bad-{len(case)}")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "INVALID_REQUEST"
    assert violated_fields(error) == fields
    # Nothing stored, nothing reserved, and the request_id was not consumed.
    assert (await stub.ListCalls(svc.ListCallsRequest())).calls == []
    assert await reserved(stub) == (0, 0)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"destination": ""}, "call.destination"),
        ({"destination": "x" * 257}, "call.destination"),
        ({"destination": "bad\x00char"}, "call.destination"),
        ({"provider": "reference"}, "call.provider"),
        ({"service_level": 9}, "call.service_level"),
        ({"call_id": "Not_Valid"}, "call_id"),
        ({"request_id": "r" * 65}, "request_id"),
    ],
)
async def test_invalid_call_fields_are_rejected(stub, request_fields: dict, field: str) -> None:
    request = make_request(qos(1000))
    for key, value in request_fields.items():
        target = request if key in ("call_id", "request_id") else request.call
        setattr(target, key, value)
    error = await rpc_error(stub.CreateCall(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(error)
    assert (await stub.ListCalls(svc.ListCallsRequest())).calls == []


async def test_missing_call_is_rejected(stub) -> None:
    # (A missing QoS is no error: an absent direction is best effort, test_absent_direction.py.)
    error = await rpc_error(stub.CreateCall(svc.CreateCallRequest()))
    assert violated_fields(error) == {"call"}


@pytest.mark.parametrize(
    ("rpc", "message", "field"),
    [
        ("GetCall", svc.GetCallRequest(name="call/1"), "name"),
        ("DropCall", svc.DropCallRequest(name=""), "name"),
        ("RenegotiateCall", svc.RenegotiateCallRequest(name="calls/UPPER", qos=qos(1)), "name"),
        ("ListCalls", svc.ListCallsRequest(page_size=-1), "page_size"),
        ("ListCalls", svc.ListCallsRequest(page_token="garbage"), "page_token"),
        ("ListCalls", svc.ListCallsRequest(filter="color = red"), "filter"),
        ("ListCalls", svc.ListCallsRequest(filter="state = RINGING"), "filter"),
        ("GetProvider", svc.GetProviderRequest(name="reference"), "name"),
        ("ListLinks", svc.ListLinksRequest(parent="x"), "parent"),
    ],
)
async def test_bad_names_and_paging_are_rejected(stub, rpc: str, message, field: str) -> None:
    error = await rpc_error(getattr(stub, rpc)(message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(error)


async def test_unknown_resources_are_not_found(stub) -> None:
    for awaitable, expected in [
        (stub.GetCall(svc.GetCallRequest(name="calls/missing")), "CALL_NOT_FOUND"),
        (stub.DropCall(svc.DropCallRequest(name="calls/missing")), "CALL_NOT_FOUND"),
        (stub.RenegotiateCall(svc.RenegotiateCallRequest(name="calls/missing", qos=qos(1))), "CALL_NOT_FOUND"),
        (stub.GetProvider(svc.GetProviderRequest(name="providers/missing")), "PROVIDER_NOT_FOUND"),
        (stub.ListLinks(svc.ListLinksRequest(parent="providers/missing")), "PROVIDER_NOT_FOUND"),
    ]:
        error = await rpc_error(awaitable)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert reason(error) == expected


async def test_bad_principal_header_is_rejected(stub) -> None:
    error = await rpc_error(stub.CreateCall(make_request(), metadata=(("x-callqos-principal", "has space"),)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-callqos-principal" in violated_fields(error)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [("CreateCall", False), ("RenegotiateCall", False), ("ListCalls", False), ("WatchEvents", True)],
)
async def test_corrupt_request_bytes_are_invalid_argument_not_unknown(
    channel, stub, method: str, streaming: bool
) -> None:
    path = f"/callqos.v1.CallQosService/{method}"
    call = channel.unary_stream(path) if streaming else channel.unary_unary(path)
    garbage = b"\xff\xff\xff\x0f not protobuf"
    if streaming:
        stream = call(garbage)
        error = await rpc_error(stream.read())
    else:
        error = await rpc_error(call(garbage))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"request"}
    assert (await stub.ListCalls(svc.ListCallsRequest())).calls == []
