"""Helpers for the remote-provider tests: providers served over `callqos.provider.v1` — in this
process on a Unix socket (the server dials it as an `endpoint`), or as a subprocess the server
launches (`command`) — test providers, and the checks that the host and the provider agree.

Servers themselves come from `callqos.server.testing`; a provider in this process is served by
the kit's own `start_kit`, exactly as `callqos-provider serve` serves one."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from callqos.provider.v1 import provider_service_pb2 as pb
from callqos.provider.v1 import provider_service_pb2_grpc as pb_grpc
from callqos.server import testing
from callqos.server.providers import AdmissionRequest, Decision, Provider, reserved_rate
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.remote.kit import ProviderServicer
from callqos.server.remote.provider import RemoteProvider
from callqos.server.remote.serve import KitServer, start_kit
from callqos.server.telemetry import setup as telemetry_setup
from callqos.v1 import call_pb2, flowspec_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

TESTS = Path(__file__).resolve().parent
SERVE = (sys.executable, "-m", "callqos.server.remote.serve", "serve")
State = call_pb2.Call.State
# Quick reconnection and health checking, so that the fault tests take seconds, not minutes.
FAST = {
    "restart_backoff_initial_seconds": 0.05,
    "restart_backoff_max_seconds": 0.5,
    "health_interval_seconds": 0.2,
    "health_failures": 2,
    "stop_grace_seconds": 1.0,
}


def launched(plugin: str, **settings: Any) -> dict[str, Any]:
    """A `[providers.x]` table: `plugin` served by `callqos-provider serve`, launched by the server
    (with this directory importable, for the test providers below)."""
    return {"plugin": "remote", "command": [*SERVE, plugin], "env": {"PYTHONPATH": str(TESTS)}, **FAST, **settings}


def dialled(endpoint: str, **settings: Any) -> dict[str, Any]:
    """A `[providers.x]` table: the provider at `endpoint`, run by someone else."""
    return {"plugin": "remote", "endpoint": endpoint, **FAST, **settings}


# -- test providers ---------------------------------------------------------------------------
class GatedReference(ReferenceProvider):
    """The reference provider, except that an admission whose destination starts with
    `sip:block` reserves and then never answers (the process is killed, or the deadline passes,
    while it waits), and one starting with `sip:slow` takes two seconds before deciding."""

    admitting: asyncio.Event | None = None  # set while an admission blocks (in-process kits)

    async def admit(self, request: AdmissionRequest) -> Decision:
        if request.destination.startswith("sip:slow"):
            await asyncio.sleep(2.0)
        decision = await super().admit(request)
        if request.destination.startswith("sip:block"):
            if self.admitting is not None:
                self.admitting.set()
            print(f"blocking the admission of {request.call}", file=sys.stderr, flush=True)
            await asyncio.Event().wait()
        return decision


class ChattyReference(ReferenceProvider):
    """The reference provider, writing one plain and one JSON line on stderr when it starts."""

    async def start(self, host: Any, restored: Any) -> Any:
        print("plain line from the provider", file=sys.stderr, flush=True)
        print('{"level": "error", "message": "json line from the provider", "code": 7}', file=sys.stderr, flush=True)
        return await super().start(host, restored)


class MisbookingReference(ReferenceProvider):
    """The reference provider with two bookkeeping bugs its kit cannot see, for the host's ledger to
    find through `reservations()` (PROV-19): admitting a destination starting with `sip:forget` grants
    and then drops the reservation from its books (once per call), and one starting with `sip:leak`
    also books the same reservation for a call nobody made (`calls/phantom-{call id}`)."""

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.forgotten: set[str] = set()

    async def admit(self, request: AdmissionRequest) -> Decision:
        decision = await super().admit(request)
        granted = getattr(decision, "qos", None)
        if granted is not None and request.destination.startswith("sip:leak"):
            async with self._lock:
                phantom = "calls/phantom-" + request.call.rpartition("/")[2]
                self._reserve(phantom, self._route(request.destination), request.level, granted)
        if granted is not None and request.destination.startswith("sip:forget") and request.call not in self.forgotten:
            self.forgotten.add(request.call)
            async with self._lock:
                self._unreserve(request.call)
        return decision


@contextlib.asynccontextmanager
async def serving_launched(
    directory: Path, plugin: str, **settings: Any
) -> AsyncIterator[tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]]:
    """A server launching `plugin` as its provider `acme` (the default), with the server's
    `settings`, and a stub on it."""
    server = testing.InProcessServer(
        directory, providers={"acme": launched(plugin)}, default_provider="acme", **settings
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield server, svc_grpc.CallQosServiceStub(channel)
    finally:
        await server.close()


# -- a provider served in this process --------------------------------------------------------
class Kit:
    """A provider served over the protocol in this process, on a Unix socket of its own. `stop()`
    is the provider going away; `start()` again is a new provider process on the same socket: a
    fresh instance that holds nothing until the host restores it."""

    def __init__(
        self, make: Callable[[], Provider], servicer: Callable[[Provider], ProviderServicer] | None = None
    ) -> None:
        self.make = make
        self.make_servicer = servicer or (lambda provider: ProviderServicer(provider, "test"))
        self.directory = Path(tempfile.mkdtemp(prefix="cq-kit-", dir="/tmp"))  # short: socket paths are limited
        self.socket = self.directory / "provider.sock"
        self.telemetry = telemetry_setup.from_environment(env={})
        self.served: KitServer | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def servicer(self) -> ProviderServicer:
        assert self.served is not None, "not serving"
        return self.served.servicer

    @property
    def provider(self) -> Provider:
        return self.servicer.provider

    async def start(self) -> Kit:
        self.served = await start_kit(self.make_servicer(self.make()), f"unix:{self.socket}", self.telemetry)
        return self

    async def stop(self, grace: float = 0.0) -> None:
        served, self.served = self.served, None
        if served is not None:
            await served.stop(grace)

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def kit(
    make: Callable[[], Provider], servicer: Callable[[Provider], ProviderServicer] | None = None
) -> AsyncIterator[Kit]:
    served = Kit(make, servicer)
    try:
        yield await served.start()
    finally:
        await served.close()


@contextlib.asynccontextmanager
async def protocol_stub(endpoint: str) -> AsyncIterator[pb_grpc.ProviderServiceStub]:
    """A client of the protocol itself, as a host is."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        yield pb_grpc.ProviderServiceStub(channel)  # type: ignore[no-untyped-call]


# -- the host ---------------------------------------------------------------------------------
def remote_of(server: testing.InProcessServer, provider_id: str = "acme") -> RemoteProvider:
    provider = server.running.providers.get(f"providers/{provider_id}").provider
    assert isinstance(provider, RemoteProvider)
    return provider


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    """Poll until `predicate` holds (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what or predicate}")
        await asyncio.sleep(0.02)


async def connected_calls(stub: svc_grpc.CallQosServiceStub, provider: str) -> dict[str, flowspec_pb2.QosSpec]:
    """The host's connected calls on `provider` (`providers/x`): call → granted QoS."""
    found: dict[str, flowspec_pb2.QosSpec] = {}
    token = ""
    while True:
        wanted = f'state = CONNECTED AND provider = "{provider}"'
        page = await stub.ListCalls(svc.ListCallsRequest(filter=wanted, page_size=500, page_token=token))
        found.update((call.name, call.granted_qos) for call in page.calls)
        token = page.next_page_token
        if not token:
            return found


async def held_by_provider(endpoint: str) -> dict[str, flowspec_pb2.QosSpec]:
    """What the provider at `endpoint` says it holds (ListReservations)."""
    async with protocol_stub(endpoint) as stub:
        answer = await stub.ListReservations(pb.ListReservationsRequest(), timeout=5)
    return {item.call: item.qos for item in answer.reservations}


async def assert_agree(
    stub: svc_grpc.CallQosServiceStub, remote: RemoteProvider, provider: str = "providers/acme"
) -> dict[str, flowspec_pb2.QosSpec]:
    """The host and the provider agree on every reservation: the same calls, the same QoS, and
    the provider's links carry exactly what those calls reserve, within capacity."""
    await until(lambda: remote.ready, what="the remote provider is ready")
    host = await connected_calls(stub, provider)
    theirs = await remote.list_reservations()
    assert set(host) == set(theirs), f"host holds {sorted(host)}, the provider {sorted(theirs)}"
    for call, granted in host.items():
        assert theirs[call] == granted, call
    if remote.capabilities().link_admin:
        links = await stub.ListLinks(svc.ListLinksRequest(parent=provider))
        for direction in ("sending", "receiving"):
            total = sum(reserved_rate(getattr(qos, direction)) for qos in host.values())
            on_links = sum(getattr(link, f"{direction}_reserved_bytes_per_second") for link in links.links)
            assert on_links == total, (direction, on_links, total)
            for link in links.links:
                assert getattr(link, f"{direction}_reserved_bytes_per_second") <= link.capacity_bytes_per_second
    return host
