"""The QoS event stream: order, content, resume, filters, retention (conformance/SPEC.md EVENT and WATCH)."""

from __future__ import annotations

import asyncio

import grpc
from server_testkit import CAPACITY, Level, make_request, qos, reason, rpc_error

from callqos.server import testing
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

T = event_pb2.QosEventType


async def collect(stub, count: int, **request) -> list[event_pb2.QosEvent]:
    stream = stub.WatchEvents(svc.WatchEventsRequest(**request))
    events: list[event_pb2.QosEvent] = []
    try:
        async with asyncio.timeout(10):
            async for response in stream:
                events.append(response.event)
                if len(events) == count:
                    break
    finally:
        stream.cancel()
    return events


async def test_each_operation_emits_its_events_in_order(stub) -> None:
    call = await stub.CreateCall(make_request(qos(100_000)))
    changed = await stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(200_000)))
    await stub.DropCall(svc.DropCallRequest(name=call.name))
    events = await collect(stub, 3, after_sequence=0)
    assert [e.type for e in events] == [
        T.QOS_EVENT_TYPE_QOS_GRANTED,
        T.QOS_EVENT_TYPE_QOS_CHANGED,
        T.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    ]
    assert [e.sequence for e in events] == [1, 2, 3]
    granted, change, gone = events
    assert granted.current_qos == call.granted_qos and not granted.HasField("previous_qos")
    assert change.previous_qos == call.granted_qos and change.current_qos == changed.granted_qos
    assert change.cause == event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_RENEGOTIATED
    assert gone.previous_qos == changed.granted_qos
    assert gone.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_NORMAL
    assert all(e.call == call.name and e.provider == "providers/reference" and e.create_time.seconds for e in events)


async def test_live_watch_sees_new_events_and_resumes_without_loss(stub) -> None:
    watcher = asyncio.create_task(collect(stub, 2))  # from now
    await asyncio.sleep(0.2)
    first = await stub.CreateCall(make_request(qos(1000)))
    second = await stub.CreateCall(make_request(qos(1000)))
    seen = await watcher
    assert [e.call for e in seen] == [first.name, second.name]
    # The watcher "dies" here; more happens while it is away.
    third = await stub.CreateCall(make_request(qos(1000)))
    await stub.DropCall(svc.DropCallRequest(name=first.name))
    resumed = await collect(stub, 2, after_sequence=seen[-1].sequence)
    assert [e.sequence for e in resumed] == [seen[-1].sequence + 1, seen[-1].sequence + 2]
    assert [(e.call, e.type) for e in resumed] == [
        (third.name, T.QOS_EVENT_TYPE_QOS_GRANTED),
        (first.name, T.QOS_EVENT_TYPE_CALL_DISCONNECTED),
    ]


async def test_filters_by_call_and_type(stub) -> None:
    a = await stub.CreateCall(make_request(qos(1000)))
    b = await stub.CreateCall(make_request(qos(1000)))
    await stub.DropCall(svc.DropCallRequest(name=a.name))
    await stub.DropCall(svc.DropCallRequest(name=b.name))
    only_b = await collect(stub, 2, after_sequence=0, call=b.name)
    assert {e.call for e in only_b} == {b.name}
    drops = await collect(stub, 2, after_sequence=0, types=[T.QOS_EVENT_TYPE_CALL_DISCONNECTED])
    assert [e.call for e in drops] == [a.name, b.name]


async def test_many_watchers_all_receive_every_event(stub) -> None:
    watchers = [asyncio.create_task(collect(stub, 20, after_sequence=0)) for _ in range(20)]
    for _ in range(10):
        call = await stub.CreateCall(make_request(qos(1000)))
        await stub.DropCall(svc.DropCallRequest(name=call.name))
    results = await asyncio.gather(*watchers)
    assert all([e.sequence for e in r] == list(range(1, 21)) for r in results)


async def test_cursor_beyond_the_newest_event_is_out_of_range(stub) -> None:
    await stub.CreateCall(make_request(qos(1000)))
    error = await rpc_error(collect(stub, 1, after_sequence=999))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and reason(error) == "CURSOR_UNKNOWN"


async def test_cursor_older_than_retention_is_out_of_range_not_a_gap(tmp_path) -> None:
    async with (
        testing.InProcessServer(tmp_path, event_retention_count=3) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        for _ in range(4):
            call = await stub.CreateCall(make_request(qos(1000)))
            await stub.DropCall(svc.DropCallRequest(name=call.name))
        assert await server.running.prune() == 5  # 8 events, the newest 3 kept
        error = await rpc_error(collect(stub, 1, after_sequence=2))
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE and reason(error) == "CURSOR_EXPIRED"
        kept = await collect(stub, 3, after_sequence=5)
        assert [e.sequence for e in kept] == [6, 7, 8]


async def test_too_many_watchers_is_resource_exhausted(tmp_path) -> None:
    async with (
        testing.InProcessServer(tmp_path, max_watchers=1) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        first = asyncio.create_task(collect(stub, 1))
        await asyncio.sleep(0.3)
        error = await rpc_error(collect(stub, 1))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(error) == "TOO_MANY_WATCHERS"
        await stub.CreateCall(make_request(qos(1000)))
        assert len(await first) == 1


async def test_provider_initiated_capacity_loss_degrades_or_drops_with_events(stub) -> None:
    needed = await stub.CreateCall(make_request(qos(500_000)))
    flexible = await stub.CreateCall(make_request(qos(500_000), level=Level.SERVICE_LEVEL_IF_AVAILABLE))
    newest = await stub.CreateCall(make_request(qos(200_000)))
    start = (await collect(stub, 3, after_sequence=0))[-1].sequence
    answer = await stub.UpdateLink(
        svc.UpdateLinkRequest(link={"name": "providers/reference/links/default", "capacity_bytes_per_second": 800_000})
    )
    assert answer.link.capacity_bytes_per_second == 800_000
    # The answer names each call the change touched, as its events do (LINK-6).
    assert [(c.call, c.outcome, c.recorded) for c in answer.changes] == [
        (newest.name, svc.LinkChange.OUTCOME_DISCONNECTED, True),
        (flexible.name, svc.LinkChange.OUTCOME_DEGRADED, True),
    ]
    assert answer.changes[0].previous_qos == newest.granted_qos and not answer.changes[0].HasField("current_qos")
    assert answer.changes[1].current_qos.sending.token_rate_bytes_per_second == 300_000
    # Newest first: `newest` (NEEDED) is dropped, `flexible` (IF_AVAILABLE) degraded to what fits.
    events = await collect(stub, 3, after_sequence=start)
    assert [(e.call, e.type) for e in events] == [
        (newest.name, T.QOS_EVENT_TYPE_NOQOS),
        (newest.name, T.QOS_EVENT_TYPE_CALL_DISCONNECTED),
        (flexible.name, T.QOS_EVENT_TYPE_QOS_CHANGED),
    ]
    assert events[1].disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
    assert events[2].cause == event_pb2.QosChangeCause.QOS_CHANGE_CAUSE_PROVIDER_INITIATED
    assert events[2].current_qos.sending.token_rate_bytes_per_second == 300_000
    dropped = await stub.GetCall(svc.GetCallRequest(name=newest.name))
    assert dropped.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
    degraded = await stub.GetCall(svc.GetCallRequest(name=flexible.name))
    assert degraded.granted_qos.sending.token_rate_bytes_per_second == 300_000
    assert (await stub.GetCall(svc.GetCallRequest(name=needed.name))).granted_qos == needed.granted_qos
    links = await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))
    assert links.links[0].sending_reserved_bytes_per_second == 800_000
    assert reason(await rpc_error(stub.CreateCall(make_request(qos(1))))) == "QOS_UNAVAILABLE"


async def test_update_link_rejects_unknown_links_and_fields(stub) -> None:
    error = await rpc_error(
        stub.UpdateLink(
            svc.UpdateLinkRequest(link={"name": "providers/reference/links/nope", "capacity_bytes_per_second": 1})
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and reason(error) == "LINK_NOT_FOUND"
    error = await rpc_error(
        stub.UpdateLink(
            svc.UpdateLinkRequest(
                link={"name": "providers/reference/links/default"}, update_mask={"paths": ["mtu_bytes"]}
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(stub.ListLinks(svc.ListLinksRequest(parent="providers/no-qos")))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and reason(error) == "LINK_ADMIN_UNSUPPORTED"
    assert (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links[
        0
    ].capacity_bytes_per_second == CAPACITY


async def test_watch_from_now_tells_where_it_starts(stub) -> None:
    await stub.CreateCall(make_request(qos(1000)))
    stream = stub.WatchEvents(svc.WatchEventsRequest())
    metadata = dict(await stream.initial_metadata())
    assert metadata["x-callqos-start-sequence"] == "1"
    stream.cancel()
    replay = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0))
    assert dict(await replay.initial_metadata())["x-callqos-start-sequence"] == "0"
    replay.cancel()
