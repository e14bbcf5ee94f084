"""Helpers for the lease tests: leases as protobuf durations, a lease-timed in-process server, and a
call's lease read back as seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from server_testkit import make_request, qos

from callqos.server.testing import InProcessServer, ManualClock
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def leased(lease_s: float | None, spec: Any = None, **kw: Any) -> svc.CreateCallRequest:
    """A CreateCall (CONTROLLED_LOAD 100,000 B/s unless `spec`) asking for a lease of `lease_s`."""
    request = make_request(spec or qos(100_000), **kw)
    if lease_s is not None:
        request.call.lease_duration.CopyFrom(seconds(lease_s))
    return request


def extension(name: str, lease_s: float | None = None, **kw: Any) -> svc.ExtendCallRequest:
    request = svc.ExtendCallRequest(name=name, **kw)
    if lease_s is not None:
        request.lease_duration.CopyFrom(seconds(lease_s))
    return request


def expires_ns(call: call_pb2.Call) -> int:
    return call.lease_expire_time.ToNanoseconds()


class LeaseServer:
    """An in-process server whose leases run on a `ManualClock`, and a stub to it."""

    def __init__(self, server: InProcessServer, clock: ManualClock, stub: svc_grpc.CallQosServiceStub) -> None:
        self.server, self.clock, self.stub = server, clock, stub

    async def advance(self, by_s: float) -> int:
        """Move the clock, then do what the lease timer does at that moment; how many calls ended."""
        self.clock.advance(by_s)
        ended: int = await self.server.running.calls.leases.expire_overdue()
        return ended


@asynccontextmanager
async def lease_server(directory: Path, **settings: Any) -> AsyncIterator[LeaseServer]:
    clock = ManualClock()
    async with (
        InProcessServer(directory, lease_clock=clock, **settings) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        yield LeaseServer(server, clock, svc_grpc.CallQosServiceStub(channel))
