"""Leases across restarts of a real server process on SQLite (conformance/SPEC.md LEASE-6): a lease
is stored with its call, so it ends on time after a graceful restart or a SIGKILL; a lease that
ended while no server ran ends its call at start, before the server serves (released to its
provider, announced on the stream); and an extension acknowledged before a SIGKILL is kept."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from incoming_kit import E, events_of, get, kinds, wait_for_state
from lease_kit import expires_ns, extension, leased
from server_testkit import owner, reserved

from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason
ALICE = owner("alice")


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_a_lease_that_ended_while_the_server_was_down_ends_the_call_at_start(
    server_process: ServerProcess, kill: bool
) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        short = await stub.CreateCall(leased(1, call_id="short"), metadata=ALICE)
        long = await stub.CreateCall(leased(600, call_id="long"), metadata=ALICE)
        assert await reserved(stub) == (200_000, 0)
    if kill:
        server_process.kill()
    else:
        server_process.stop()
    # Down for longer than the short lease.
    await asyncio.sleep(max(0.0, (expires_ns(short) - time.time_ns()) / 1e9) + 0.2)

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        # Serving means it is done: the first read after start sees the call ended.
        ended = await get(stub, short.name)
        assert (ended.state, ended.disconnect_reason) == (
            State.STATE_DISCONNECTED,
            Disconnect.DISCONNECT_REASON_LEASE_EXPIRED,
        )
        assert await reserved(stub) == (100_000, 0), "released to the provider that re-took it at start"
        events = await events_of(stub, short.name)
        assert kinds(events) == [E.QOS_EVENT_TYPE_QOS_GRANTED, E.QOS_EVENT_TYPE_CALL_DISCONNECTED]
        assert events[-1].reason == "LEASE_EXPIRED"
        kept = await get(stub, long.name)
        assert kept.state == State.STATE_CONNECTED and kept.lease_expire_time == long.lease_expire_time


async def test_a_lease_runs_on_across_a_sigkill_and_an_extension_is_kept(server_process: ServerProcess) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        kept = await stub.CreateCall(leased(2, call_id="kept"), metadata=ALICE)
        lapsing = await stub.CreateCall(leased(3, call_id="lapsing"), metadata=ALICE)
        extended = await stub.ExtendCall(extension(kept.name, 60), metadata=ALICE)
    server_process.kill()

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        assert await get(stub, kept.name) == extended, "the acknowledged extension survived the SIGKILL"
        if time.time_ns() < expires_ns(lapsing):
            assert (await get(stub, lapsing.name)).state == State.STATE_CONNECTED
        # The restarted server's timer ends the lapsing call on time.
        ended = await wait_for_state(stub, lapsing.name, State.STATE_DISCONNECTED, within=15)
        assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
        assert time.time_ns() >= expires_ns(lapsing), "never before its lease ended"
        await asyncio.sleep(0.2)
        assert (await get(stub, kept.name)).state == State.STATE_CONNECTED
        assert await reserved(stub) == (100_000, 0)
