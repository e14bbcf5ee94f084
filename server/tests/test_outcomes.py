"""How a call operation ends when something fails on the way, seen from a client: the failure is
recorded with its events (watchers learn of it) and as the request_id's first outcome, the
provider's reservation is freed when no connected call holds it, and the decision is counted
once, by what really happened. Every outcome settles through one step (`CallManager._settle`);
these are the cases no other test reaches: a provider that fails after reserving, and a store
that cannot record a grant."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from server_testkit import details, make_request, qos, reason, reserved, rpc_error
from test_watch_events import collect

from callqos.server import app
from callqos.server.calls import Outcome
from callqos.server.config import Config
from callqos.server.providers import AdmissionRequest, Decision
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.store.base import StoreUnavailable
from callqos.server.telemetry import Telemetry
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

EventType = event_pb2.QosEventType


class FailsAfterReserving(ReferenceProvider):
    """The reference provider, except that admit reserves and then fails (a network element lost
    half-way through), so the host must free what it holds."""

    admitted = 0

    async def admit(self, request: AdmissionRequest) -> Decision:
        self.admitted += 1
        await super().admit(request)
        raise RuntimeError("lost the network element after reserving")


@dataclass
class Served:
    running: app.Running
    stub: svc_grpc.CallQosServiceStub
    metrics: InMemoryMetricReader

    def admissions(self) -> dict[tuple[Any, ...], Any]:
        """callqos.admissions by (outcome, reason)."""
        data = self.metrics.get_metrics_data()
        return {
            (dict(point.attributes).get("callqos.outcome"), dict(point.attributes).get("callqos.reason")): point.value
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "callqos.admissions"
            for point in metric.data.data_points
        }


async def serve(config: Config) -> AsyncIterator[Served]:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    running = await app.start(config, telemetry=Telemetry(TracerProvider(), meter_provider))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Served(running, svc_grpc.CallQosServiceStub(channel), reader)
    finally:
        await running.stop()
        meter_provider.shutdown()


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Served]:
    async for value in serve(config):
        yield value


@pytest.fixture
async def failing(config: Config) -> AsyncIterator[Served]:
    config.providers = {"reference": {"plugin": f"{__name__}:FailsAfterReserving"}}
    async for value in serve(config):
        yield value


def types(events: Sequence[event_pb2.QosEvent]) -> list[int]:
    return [event.type for event in events]


async def test_a_provider_failing_after_reserving_is_released_and_the_failure_recorded(failing: Served) -> None:
    stub = failing.stub
    error = await rpc_error(stub.CreateCall(make_request(qos(300_000), call_id="lost", request_id="lost-1")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
    assert await reserved(stub) == (0, 0), "what the provider reserved before failing was not released"
    call = await stub.GetCall(svc.GetCallRequest(name="calls/lost"))
    assert call.state == call_pb2.Call.State.STATE_DISCONNECTED
    assert call.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_PROVIDER_ERROR
    events = await collect(stub, 2, after_sequence=0)
    assert types(events) == [EventType.QOS_EVENT_TYPE_GENERIC_ERROR, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    assert {event.request_id for event in events} == {"lost-1"} and events[0].reason == "PROVIDER_UNAVAILABLE"
    assert failing.admissions() == {("error", "PROVIDER_UNAVAILABLE"): 1}
    # The failure is the request_id's first outcome: a retry gets it again, the provider is not asked again.
    again = await rpc_error(stub.CreateCall(make_request(qos(300_000), call_id="lost", request_id="lost-1")))
    assert again.code() == error.code() and again.details() == error.details()
    provider = failing.running.providers.get("providers/reference").provider
    assert isinstance(provider, FailsAfterReserving) and provider.admitted == 1


async def test_a_grant_the_store_cannot_record_is_released_and_not_counted(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, store = served.stub, served.running.store
    commit = store.commit

    async def disk_fails(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("disk I/O error (SQLITE_IOERR)")

    monkeypatch.setattr(store, "commit", disk_fails)
    error = await rpc_error(stub.CreateCall(make_request(qos(300_000), call_id="unrecorded", request_id="u-1")))
    # Retryable, naming the cause; never INTERNAL (conformance/SPEC.md CALL-5, API-10).
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STORAGE_UNAVAILABLE"
    assert details(error)["ErrorInfo"].metadata["cause"] == "disk I/O error (SQLITE_IOERR)"
    assert await reserved(stub) == (0, 0), "the grant nobody recorded still holds its reservation"
    missing = await rpc_error(stub.GetCall(svc.GetCallRequest(name="calls/unrecorded")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert served.admissions() == {}, "a grant the store never recorded was counted"

    # The disk recovers. Nothing was recorded for the request_id, so the retry runs afresh and
    # connects; its QOS_GRANTED is the first event there ever was.
    monkeypatch.setattr(store, "commit", commit)
    call = await stub.CreateCall(make_request(qos(300_000), call_id="unrecorded", request_id="u-1"))
    assert call.state == call_pb2.Call.State.STATE_CONNECTED
    assert await reserved(stub) == (300_000, 0)
    (first,) = await collect(stub, 1, after_sequence=0)
    assert first.type == EventType.QOS_EVENT_TYPE_QOS_GRANTED and first.sequence == 1
    assert served.admissions() == {("granted", None): 1}


def test_an_outcome_names_every_step_it_takes() -> None:
    """No field of an outcome has a default, so a new kind of outcome must say what it does
    about the other calls it stores, the events, the failure, the request_id, the decision count,
    the reservation it frees and the one it puts back if the commit fails."""
    fields = dataclasses.fields(Outcome)
    assert {field.name for field in fields} == {
        "call",
        "peers",
        "events",
        "failure",
        "key",
        "decided",
        "release",
        "restore",
    }
    missing = dataclasses.MISSING
    assert [f.name for f in fields if f.default is not missing or f.default_factory is not missing] == []
