"""Making a call: grant, refusal with a counter-offer, service levels, idempotency (conformance/SPEC.md
LEVEL, ADMIT, API-3)."""

from __future__ import annotations

import grpc
import pytest
from server_testkit import CAPACITY, ST, Level, details, flow, make_request, qos, reason, reserved, rpc_error

from callqos.v1 import call_pb2, event_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc

State = call_pb2.Call.State


async def test_needed_call_within_capacity_connects_and_reserves(stub) -> None:
    call = await stub.CreateCall(make_request(qos(400_000, recv_rate=300_000)))
    assert call.state == State.STATE_CONNECTED
    assert call.provider == "providers/reference"
    assert call.granted_qos.sending.token_rate_bytes_per_second == 400_000
    assert call.granted_qos.receiving.token_rate_bytes_per_second == 300_000
    assert call.features.set_qos
    assert call.owner == "anonymous" and call.etag
    # Defaults the request left out are resolved in the grant (LINECALLINFO "in effect").
    assert call.granted_qos.sending.max_sdu_size_bytes == 1500
    assert call.granted_qos.sending.peak_bandwidth_unbounded
    assert await reserved(stub) == (400_000, 300_000)
    assert await stub.GetCall(svc.GetCallRequest(name=call.name)) == call


async def test_over_capacity_fails_with_counter_offer_that_then_succeeds(stub) -> None:
    await stub.CreateCall(make_request(qos(1_000_000)))
    error = await rpc_error(stub.CreateCall(make_request(qos(600_000), request_id="first-try")))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = details(error)
    assert info["ErrorInfo"].reason == "QOS_UNAVAILABLE"
    assert info["ErrorInfo"].domain == "callqos.dev"
    refusal = info["QosRefusal"]
    offer = refusal.counter_offer
    assert offer.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000
    # The failed call is recorded, disconnected with QOS_UNAVAILABLE, and holds nothing.
    failed = await stub.GetCall(svc.GetCallRequest(name=refusal.call))
    assert failed.state == State.STATE_DISCONNECTED
    assert failed.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
    assert not failed.HasField("granted_qos")
    assert await reserved(stub) == (1_000_000, 0)
    # Adjust and retry with the counter-offer: it is admitted.
    retry = await stub.CreateCall(make_request(offer))
    assert retry.state == State.STATE_CONNECTED
    assert retry.granted_qos.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000
    assert await reserved(stub) == (CAPACITY, 0)


async def test_refusal_emits_admission_failure_then_disconnect(stub) -> None:
    await stub.CreateCall(make_request(qos(CAPACITY)))
    error = await rpc_error(stub.CreateCall(make_request(qos(1))))
    name = details(error)["QosRefusal"].call
    events = await _events_for(stub, name, 2)
    assert [e.type for e in events] == [
        event_pb2.QosEventType.QOS_EVENT_TYPE_ADMISSION_FAILURE,
        event_pb2.QosEventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    ]
    assert events[0].reason == "QOS_UNAVAILABLE" and events[0].HasField("counter_offer")
    assert events[1].disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE


async def _events_for(stub, call: str, count: int) -> list[event_pb2.QosEvent]:
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=call))
    found = []
    async for response in stream:
        found.append(response.event)
        if len(found) == count:
            stream.cancel()
            break
    return found


async def test_if_available_connects_with_what_is_free(stub) -> None:
    await stub.CreateCall(make_request(qos(1_000_000)))
    call = await stub.CreateCall(make_request(qos(800_000), level=Level.SERVICE_LEVEL_IF_AVAILABLE))
    assert call.state == State.STATE_CONNECTED
    assert call.requested_qos.sending.token_rate_bytes_per_second == 800_000
    assert call.granted_qos.sending.token_rate_bytes_per_second == CAPACITY - 1_000_000  # granted < requested
    assert await reserved(stub) == (CAPACITY, 0)


async def test_best_effort_level_connects_without_reservation(stub) -> None:
    call = await stub.CreateCall(
        make_request(qos(5_000_000, recv_rate=5_000_000), level=Level.SERVICE_LEVEL_BEST_EFFORT)
    )
    assert call.state == State.STATE_CONNECTED
    assert call.granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert call.granted_qos.receiving.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    assert await reserved(stub) == (0, 0)


@pytest.mark.parametrize(
    "stype", [ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC, ST.SERVICE_TYPE_QUALITATIVE]
)
async def test_non_reserving_service_types_always_admit(stub, stype: int) -> None:
    await stub.CreateCall(make_request(qos(CAPACITY, recv_rate=CAPACITY)))
    spec = flowspec_pb2.QosSpec(sending=flow(stype), receiving=flow(stype))
    call = await stub.CreateCall(make_request(spec))
    assert call.state == State.STATE_CONNECTED
    assert await reserved(stub) == (CAPACITY, CAPACITY)


async def test_receiving_direction_is_admitted_separately(stub) -> None:
    await stub.CreateCall(make_request(qos(None, recv_rate=CAPACITY)))
    error = await rpc_error(stub.CreateCall(make_request(qos(None, recv_rate=10))))
    assert reason(error) == "QOS_UNAVAILABLE"
    assert details(error)["QosRefusal"].counter_offer.receiving.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    # The sending direction is still free.
    assert (await stub.CreateCall(make_request(qos(CAPACITY)))).state == State.STATE_CONNECTED


def guaranteed(rate: int, latency_us: int, *, peak: int | None = None, bucket: int = 1500) -> flowspec_pb2.QosSpec:
    sending = flow(
        ST.SERVICE_TYPE_GUARANTEED,
        rate,
        latency_microseconds=latency_us,
        token_bucket_size_bytes=bucket,
        max_sdu_size_bytes=1500,
    )
    if peak is not None:
        sending.peak_bandwidth_bytes_per_second = peak
    return flowspec_pb2.QosSpec(sending=sending, receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT))


async def test_guaranteed_bounded_peak_uses_r_ge_p_branch(stub) -> None:
    # R = p = 300000 B/s: Q = (M + C)/R + D = 3000/300000 s + 1000 us = 11000 us; + 2000 us path = 13000 us.
    assert (
        await stub.CreateCall(make_request(guaranteed(100_000, 13_000, peak=300_000)))
    ).state == State.STATE_CONNECTED
    error = await rpc_error(stub.CreateCall(make_request(guaranteed(100_000, 12_999, peak=300_000))))
    assert reason(error) == "QOS_UNAVAILABLE"
    offer = details(error)["QosRefusal"].counter_offer
    assert offer.sending.latency_microseconds == 13_000  # relaxed to the achievable bound
    assert (await stub.CreateCall(make_request(offer))).state == State.STATE_CONNECTED
    assert await reserved(stub) == (600_000, 0)  # GUARANTEED reserves its peak rate


async def test_guaranteed_unbounded_peak_uses_p_gt_r_branch(stub) -> None:
    # R = r = 100000, p = inf: Q = (b - M)/R + (M + C)/R + D = 8500/1e5 + 3000/1e5 s + 1000 us
    # = 85000 + 30000 + 1000 us; + 2000 us path = 118000 us.
    spec = guaranteed(100_000, 118_000, bucket=10_000)
    spec.sending.peak_bandwidth_unbounded = True
    assert (await stub.CreateCall(make_request(spec))).state == State.STATE_CONNECTED
    spec.sending.latency_microseconds = 117_999
    assert reason(await rpc_error(stub.CreateCall(make_request(spec)))) == "QOS_UNAVAILABLE"
    assert await reserved(stub) == (100_000, 0)  # token rate when the peak is unbounded


async def test_network_control_is_a_policy_failure(stub) -> None:
    spec = flowspec_pb2.QosSpec(
        sending=flow(ST.SERVICE_TYPE_NETWORK_CONTROL, 1000), receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT)
    )
    error = await rpc_error(stub.CreateCall(make_request(spec)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(error) == "QOS_POLICY_FAILURE"
    name = details(error)["QosRefusal"].call
    events = await _events_for(stub, name, 1)
    assert events[0].type == event_pb2.QosEventType.QOS_EVENT_TYPE_POLICY_FAILURE


async def test_repeated_request_id_returns_same_call_and_reserves_once(stub) -> None:
    request = make_request(qos(300_000), request_id="7f1c2a9e-aaaa-4bbb-8ccc-000000000001")
    first = await stub.CreateCall(request)
    second = await stub.CreateCall(request)
    assert first.name == second.name
    assert await reserved(stub) == (300_000, 0)
    listed = await stub.ListCalls(svc.ListCallsRequest())
    assert len(listed.calls) == 1


async def test_repeated_request_id_of_a_refusal_repeats_the_refusal(stub) -> None:
    await stub.CreateCall(make_request(qos(CAPACITY)))
    request = make_request(qos(10), request_id="again")
    first = await rpc_error(stub.CreateCall(request))
    second = await rpc_error(stub.CreateCall(request))
    assert details(first)["QosRefusal"].call == details(second)["QosRefusal"].call
    assert len((await stub.ListCalls(svc.ListCallsRequest())).calls) == 2


async def test_request_id_reused_for_a_different_request_is_rejected(stub) -> None:
    await stub.CreateCall(make_request(qos(100), request_id="same"))
    error = await rpc_error(stub.CreateCall(make_request(qos(200), request_id="same")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "REQUEST_ID_REUSED"
    assert await reserved(stub) == (100, 0)


async def test_call_id_names_the_call_and_cannot_be_taken_twice(stub) -> None:
    call = await stub.CreateCall(make_request(call_id="conference-1"))
    assert call.name == "calls/conference-1"
    error = await rpc_error(stub.CreateCall(make_request(call_id="conference-1")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and reason(error) == "CALL_ALREADY_EXISTS"


async def test_unknown_provider_is_not_found(stub) -> None:
    error = await rpc_error(stub.CreateCall(make_request(provider="providers/nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "PROVIDER_NOT_FOUND"


async def test_no_qos_provider_refuses_reservation_at_needed_with_best_effort_offer(stub) -> None:
    error = await rpc_error(stub.CreateCall(make_request(qos(1000), provider="providers/no-qos")))
    assert reason(error) == "QOS_UNAVAILABLE"
    offer = details(error)["QosRefusal"].counter_offer
    assert offer.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT
    call = await stub.CreateCall(make_request(offer, provider="providers/no-qos"))
    assert call.state == State.STATE_CONNECTED and not call.features.set_qos
    if_available = await stub.CreateCall(
        make_request(qos(1000), provider="providers/no-qos", level=Level.SERVICE_LEVEL_IF_AVAILABLE)
    )
    assert if_available.granted_qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT


async def test_providers_advertise_capabilities(stub) -> None:
    providers = {p.name: p for p in (await stub.ListProviders(svc.ListProvidersRequest())).providers}
    assert set(providers) == {"providers/reference", "providers/no-qos"}
    reference, no_qos = providers["providers/reference"], providers["providers/no-qos"]
    assert reference.default and reference.capabilities.qos_supported and reference.capabilities.renegotiation
    assert reference.capabilities.max_sdu_size_bytes == 1500
    assert not no_qos.capabilities.qos_supported and not no_qos.capabilities.renegotiation
    assert set(no_qos.capabilities.service_types) == {ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_TRAFFIC}


async def test_list_calls_pages_and_filters(stub) -> None:
    made = [await stub.CreateCall(make_request(qos(1000))) for _ in range(5)]
    await stub.CreateCall(make_request(qos(1000), provider="providers/no-qos", level=Level.SERVICE_LEVEL_BEST_EFFORT))
    seen, token = [], ""
    while True:
        page = await stub.ListCalls(
            svc.ListCallsRequest(page_size=2, page_token=token, filter='provider = "providers/reference"')
        )
        seen += [c.name for c in page.calls]
        token = page.next_page_token
        if not token:
            break
    assert seen == [c.name for c in reversed(made)]  # newest first, each once
    connected = await stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED"))
    assert len(connected.calls) == 6
    token = (await stub.ListCalls(svc.ListCallsRequest(page_size=1))).next_page_token
    error = await rpc_error(
        stub.ListCalls(svc.ListCallsRequest(page_size=1, page_token=token, filter="state = CONNECTED"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
