"""The store and the provider agree under every failure (issue 11, items 2 and 3; conformance/SPEC.md
CALL-5, CALL-6, PROV-19), seen from a client of a real server:

- a commit that fails after a provider decision is compensated — a renegotiation is put back, a
  drop releases nothing — and the caller gets UNAVAILABLE / STORAGE_UNAVAILABLE naming the cause;
- a release the provider fails (it raises, or hangs past the deadline) does not fail DropCall: it
  is owed, announced (RELEASE_PENDING, the `callqos.releases.pending` gauge, an error log),
  retried with backoff — across a restart too — and announced again once done (RELEASE_COMPLETED);
- reconciliation finds what a provider holds that no call does, and a call whose reservation the
  provider lost, and repairs both: at start-up before serving, and periodically.

Divergence that the public API cannot cause is injected the way a provider bug would cause it:
by calling the provider itself, behind the server's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from server_testkit import details, make_request, qos, reason, reserved, rpc_error
from test_watch_events import collect

from callqos.server.providers import AdmissionRequest, ProviderChange, ProviderHost, Restored
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.store.base import StoreUnavailable
from callqos.server.telemetry import Telemetry
from callqos.server.testing import InProcessServer
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

EventType = event_pb2.QosEventType
State = call_pb2.Call.State
Level = call_pb2.ServiceLevel
PROVIDER = "providers/reference"


class FlakyRelease(ReferenceProvider):
    """The reference provider, except that while `failing` is "raise" its release raises (a network
    element unreachable), and while it is "hang" its release never returns."""

    failing = ""
    attempts = 0

    async def release(self, call: str) -> None:
        self.attempts += 1
        if self.failing == "raise":
            raise ConnectionError("network element unreachable")
        if self.failing == "hang":
            await asyncio.Event().wait()
        await super().release(call)


class ForgetsOnRestart(ReferenceProvider):
    """Loses, at start-up, the restored calls whose destination says so (a provider bug)."""

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        return await super().start(host, [item for item in restored if "forget" not in item.destination])


@dataclass
class Served:
    server: InProcessServer
    stub: svc_grpc.CallQosServiceStub
    metrics: InMemoryMetricReader

    @property
    def provider(self) -> Any:
        return self.server.running.providers.get(PROVIDER).provider

    def metric(self, name: str) -> dict[tuple[Any, ...], Any]:
        data = self.metrics.get_metrics_data()
        return {
            tuple(sorted(dict(point.attributes).items())): point.value
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        }


@contextlib.asynccontextmanager
async def serving(tmp_path: Any, **settings: Any) -> AsyncIterator[Served]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    settings.setdefault("storage", "sqlite")
    server = InProcessServer(tmp_path, telemetry=Telemetry(TracerProvider(), meters), **settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield Served(server, svc_grpc.CallQosServiceStub(channel), reader)
    finally:
        await server.close()
        meters.shutdown()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.05)


async def connected_sum(stub: svc_grpc.CallQosServiceStub) -> tuple[int, int]:
    from callqos.server.qos import reserved_rate

    page = await stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED", page_size=500))
    return (
        sum(reserved_rate(c.granted_qos.sending) for c in page.calls),
        sum(reserved_rate(c.granted_qos.receiving) for c in page.calls),
    )


# -- a failed commit is compensated (CALL-5) ------------------------------------------------------
@pytest.fixture
async def served(tmp_path: Any) -> AsyncIterator[Served]:
    async with serving(tmp_path, reconcile_interval_seconds=0.2) as value:
        yield value


def failing_commits(served: Served, monkeypatch: pytest.MonkeyPatch, before: Callable[[], Any] | None = None) -> None:
    """Every commit fails as on a full disk (after running `before`, if given, once)."""
    store = served.server.running.store

    async def full(*args: Any, **kwargs: Any) -> Any:
        nonlocal before
        if before is not None:
            hook, before = before, None
            await hook()
        raise StoreUnavailable("disk is full (SQLITE_FULL)")

    monkeypatch.setattr(store, "commit", full)


async def test_a_renegotiation_the_store_cannot_record_is_put_back(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = served.stub
    call = await stub.CreateCall(make_request(qos(300_000, recv_rate=100_000)))
    for wanted in (qos(900_000, recv_rate=100_000), qos(50_000)):  # up, then down
        failing_commits(served, monkeypatch)
        error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=wanted)))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STORAGE_UNAVAILABLE"
        assert "disk is full" in error.details() and details(error)["ErrorInfo"].metadata["cause"].startswith("disk")
        monkeypatch.undo()
        assert await stub.GetCall(svc.GetCallRequest(name=call.name)) == call
        assert await reserved(stub) == (300_000, 100_000), "the provider kept the renegotiation nobody recorded"


async def test_a_drop_the_store_cannot_record_releases_nothing(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = served.stub
    call = await stub.CreateCall(make_request(qos(300_000)))
    failing_commits(served, monkeypatch)
    error = await rpc_error(stub.DropCall(svc.DropCallRequest(name=call.name)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STORAGE_UNAVAILABLE"
    monkeypatch.undo()
    assert (await stub.GetCall(svc.GetCallRequest(name=call.name))).state == State.STATE_CONNECTED
    assert await reserved(stub) == (300_000, 0), "DropCall released before its commit"
    await stub.DropCall(svc.DropCallRequest(name=call.name))
    assert await reserved(stub) == (0, 0)


async def test_a_renegotiation_that_cannot_be_put_back_is_reconciled(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of a renegotiation down fails, and before the call can be put back another
    admission takes the capacity it freed (a race the server cannot prevent): the provider holds
    the lower rate, the store the higher. The call is reconciled at once: it cannot be re-taken at
    NEEDED, so it is disconnected (NOQOS, CALL_DISCONNECTED); and the interloper, which no recorded
    call holds, is released."""
    stub = served.stub
    call = await stub.CreateCall(make_request(qos(1_000_000)))
    provider = served.provider

    async def interloper() -> None:
        taken = AdmissionRequest("calls/interloper", "sip:x", Level.SERVICE_LEVEL_NEEDED, qos(1_000_000), "x")
        await provider.admit(taken)

    failing_commits(served, monkeypatch, before=interloper)
    error = await rpc_error(stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(100_000))))
    assert reason(error) == "STORAGE_UNAVAILABLE"
    monkeypatch.undo()

    async def agreed() -> bool:
        return await reserved(stub) == await connected_sum(stub) == (0, 0)

    await eventually(agreed, "the provider and the store agreeing again")
    gone = await stub.GetCall(svc.GetCallRequest(name=call.name))
    assert gone.state == State.STATE_DISCONNECTED
    assert gone.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
    events = await collect(stub, 3, call=call.name, after_sequence=0)
    assert [e.type for e in events] == [
        EventType.QOS_EVENT_TYPE_QOS_GRANTED,
        EventType.QOS_EVENT_TYPE_NOQOS,
        EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
    ]
    assert "reconciling" in events[1].message


# -- a failed release is owed, announced and retried (CALL-6) -------------------------------------
@pytest.mark.parametrize("failing", ["raise", "hang"])
async def test_a_release_the_provider_fails_is_retried_until_it_succeeds(tmp_path: Any, failing: str) -> None:
    async with serving(
        tmp_path,
        providers={"reference": {"plugin": f"{__name__}:FlakyRelease"}},
        provider_timeout_seconds=0.5,
        release_retry_max_seconds=0.5,
    ) as served:
        stub, provider = served.stub, served.provider
        call = await stub.CreateCall(make_request(qos(300_000)))
        provider.failing = failing
        dropped = await stub.DropCall(svc.DropCallRequest(name=call.name))  # succeeds: the call is over
        assert dropped.state == State.STATE_DISCONNECTED
        events = await collect(stub, 3, call=call.name, after_sequence=0)
        assert [e.type for e in events][1:] == [
            EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED,
            EventType.QOS_EVENT_TYPE_RELEASE_PENDING,
        ]
        assert events[2].reason == "PROVIDER_UNAVAILABLE" and "retrying" in events[2].message
        # Visible while it lasts: the provider still holds the capacity, and the gauge says so.
        assert await reserved(stub) == (300_000, 0)
        await asyncio.sleep(1.5)  # several retries, each failing
        assert provider.attempts >= 3
        assert served.metric("callqos.releases.pending") == {(): 1}
        assert [p.call for p in await served.server.running.store.pending_releases()] == [call.name]
        provider.failing = ""

        async def released() -> bool:
            return await reserved(stub) == (0, 0)

        await eventually(released, "the release retried")
        (completed,) = await collect(stub, 1, call=call.name, after_sequence=events[2].sequence)
        assert completed.type == EventType.QOS_EVENT_TYPE_RELEASE_COMPLETED
        assert await served.server.running.store.pending_releases() == []

        async def gauge_clear() -> bool:
            return served.metric("callqos.releases.pending") == {(): 0}

        await eventually(gauge_clear, "the pending-release gauge back to 0")


async def test_an_owed_release_survives_a_restart(tmp_path: Any) -> None:
    """The release is owed in the store: after a restart it is retried first thing, before
    serving (an in-memory provider holds nothing any more, so the retry succeeds at once)."""
    async with serving(
        tmp_path, providers={"reference": {"plugin": f"{__name__}:FlakyRelease"}}, provider_timeout_seconds=0.5
    ) as served:
        stub = served.stub
        call = await stub.CreateCall(make_request(qos(300_000)))
        served.provider.failing = "raise"
        await stub.DropCall(svc.DropCallRequest(name=call.name))
        assert len(await served.server.running.store.pending_releases()) == 1
        await served.server.restart()
        assert await served.server.running.store.pending_releases() == []
        events = await collect(stub, 4, call=call.name, after_sequence=0)
        assert events[-1].type == EventType.QOS_EVENT_TYPE_RELEASE_COMPLETED


# -- reconciliation (PROV-19) --------------------------------------------------------------------
async def test_reconciliation_releases_what_no_call_holds(served: Served) -> None:
    stub = served.stub
    kept = await stub.CreateCall(make_request(qos(200_000)))
    ghost = AdmissionRequest("calls/ghost", "sip:ghost", Level.SERVICE_LEVEL_NEEDED, qos(500_000), "nobody")
    await served.provider.admit(ghost)  # held behind the server's back: no call records it
    assert await reserved(stub) == (700_000, 0)

    async def agreed() -> bool:
        return await reserved(stub) == await connected_sum(stub) == (200_000, 0)

    await eventually(agreed, "the orphaned reservation released")
    assert (await stub.GetCall(svc.GetCallRequest(name=kept.name))) == kept
    assert served.server.running.ledger.repairs["released"] == 1


async def test_reconciliation_retakes_a_reservation_the_provider_lost(served: Served) -> None:
    stub = served.stub
    call = await stub.CreateCall(make_request(qos(200_000, recv_rate=50_000)))
    await served.provider.release(call.name)  # the provider forgets it; the call is still connected
    assert await reserved(stub) == (0, 0)

    async def agreed() -> bool:
        return await reserved(stub) == (200_000, 50_000)

    await eventually(agreed, "the lost reservation re-taken")
    assert (await stub.GetCall(svc.GetCallRequest(name=call.name))) == call  # nothing about the call changed
    assert served.server.running.ledger.repairs["re-taken"] == 1


async def test_reconciliation_disconnects_a_call_whose_reservation_cannot_be_retaken(served: Served) -> None:
    stub = served.stub
    call = await stub.CreateCall(make_request(qos(800_000)))
    await served.provider.release(call.name)
    # Before the next pass, the capacity goes to someone else: the lost call no longer fits.
    other = await stub.CreateCall(make_request(qos(1_000_000)))

    async def disconnected() -> bool:
        return (await stub.GetCall(svc.GetCallRequest(name=call.name))).state == State.STATE_DISCONNECTED

    await eventually(disconnected, "the call that cannot be re-taken disconnected")
    assert await reserved(stub) == await connected_sum(stub) == (1_000_000, 0)
    assert (await stub.GetCall(svc.GetCallRequest(name=other.name))).state == State.STATE_CONNECTED
    events = await collect(stub, 3, call=call.name, after_sequence=0)
    assert [e.type for e in events][1:] == [EventType.QOS_EVENT_TYPE_NOQOS, EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED]
    assert events[2].disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
    assert "no longer holds" in events[1].message


async def test_reconciliation_at_start_up_comes_before_serving(tmp_path: Any) -> None:
    async with serving(
        tmp_path,
        providers={"reference": {"plugin": f"{__name__}:ForgetsOnRestart"}},
        reconcile_interval_seconds=0,  # start-up only
    ) as served:
        stub = served.stub
        await stub.CreateCall(make_request(qos(200_000), destination="sip:forget-me@example.test"))
        await stub.CreateCall(make_request(qos(300_000)))
        await served.server.restart()
        # The provider forgot one of the two at start-up; the first answer already agrees.
        assert await reserved(stub) == await connected_sum(stub) == (500_000, 0)
        assert served.server.running.ledger.repairs == {"re-taken": 1}


async def test_reconciliation_runs_only_where_the_provider_lists_its_reservations(served: Served) -> None:
    caps = (await served.stub.GetProvider(svc.GetProviderRequest(name=PROVIDER))).capabilities
    assert caps.reservation_listing
    no_qos = (await served.stub.GetProvider(svc.GetProviderRequest(name="providers/no-qos"))).capabilities
    assert not no_qos.reservation_listing
