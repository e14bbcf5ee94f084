"""The Python kit contains the provider it serves as the server contains one in process (PROV-15):
whatever the provider raises fails that request only, and a provider configured `threaded = true`
blocks its own thread, never the protocol — health checks go on being answered, so the host does
not give the provider up while it works."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from remote_kit import dialled, kit, remote_of
from server_testkit import make_request, qos, reason, rpc_error

from callqos.server import testing
from callqos.server.providers import AdmissionRequest, Decision
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.remote import protocol
from callqos.server.remote.kit import ProviderServicer
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
BLOCKS_SECONDS = 1.0


class Blocking(ReferenceProvider):
    """A provider whose admit blocks its thread (a blocking driver call) for a second."""

    def __init__(self, settings: object = None) -> None:
        super().__init__()
        self.blocking = threading.Event()

    async def admit(self, request: AdmissionRequest) -> Decision:
        self.blocking.set()
        time.sleep(BLOCKS_SECONDS)  # noqa: ASYNC251  # blocking on purpose: what `threaded` is for
        return await super().admit(request)


class Exiting(ReferenceProvider):
    """A provider that raises SystemExit when asked to admit a call to `sip:exit…`."""

    async def admit(self, request: AdmissionRequest) -> Decision:
        if request.destination.startswith("sip:exit"):
            raise SystemExit(3)
        return await super().admit(request)


async def health_answer_seconds(endpoint: str) -> float:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        started = time.monotonic()
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=protocol.HEALTH_SERVICE), timeout=10
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return time.monotonic() - started


async def longest_stall_while_admitting(tmp_path: Path, threaded: bool) -> float:
    """The longest the kit's event loop (here the test's too) went without running while the
    provider's admit blocked; with `threaded`, a health check is answered meanwhile as well."""
    async with (
        kit(Blocking, lambda provider: ProviderServicer(provider, "test", threaded=threaded)) as served,
        testing.InProcessServer(
            tmp_path,
            providers={"acme": dialled(served.endpoint)},
            default_provider="acme",
            provider_timeout_seconds=10.0,
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        provider = served.provider
        assert isinstance(provider, Blocking)
        creating = asyncio.ensure_future(svc_grpc.CallQosServiceStub(channel).CreateCall(make_request(qos(1000))))
        stall, last, checked = 0.0, time.monotonic(), not threaded
        while not creating.done():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            stall, last = max(stall, now - last), now
            if not checked and provider.blocking.is_set():  # once, while the provider blocks
                assert await health_answer_seconds(served.endpoint) < BLOCKS_SECONDS / 2
                checked, last = True, time.monotonic()
        assert checked
        assert (await creating).state == State.STATE_CONNECTED
        return stall


async def test_a_threaded_provider_that_blocks_leaves_the_protocol_answering(tmp_path: Path) -> None:
    assert await longest_stall_while_admitting(tmp_path / "threaded", threaded=True) < BLOCKS_SECONDS / 2
    # What `threaded` spares the kit: the same provider on the kit's own loop stalls it throughout.
    assert await longest_stall_while_admitting(tmp_path / "on-loop", threaded=False) >= BLOCKS_SECONDS * 0.9


async def test_a_provider_raising_system_exit_fails_that_call_only(tmp_path: Path) -> None:
    async with (
        kit(Exiting) as served,
        testing.InProcessServer(
            tmp_path, providers={"acme": dialled(served.endpoint)}, default_provider="acme"
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        instance = served.servicer.instance_id
        failed = await rpc_error(stub.CreateCall(make_request(qos(1000), destination="sip:exit@example.test")))
        assert failed.code() == grpc.StatusCode.UNAVAILABLE and reason(failed) == "PROVIDER_UNAVAILABLE"
        after = await stub.CreateCall(make_request(qos(1000)))
        assert after.state == State.STATE_CONNECTED
        assert remote_of(server).ready and served.servicer.instance_id == instance  # the same provider process
