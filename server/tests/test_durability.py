"""SQLite durability: a server killed with SIGKILL and restarted has lost no call, no
reservation and no event; a watcher resumes from its cursor exactly once, in order."""

from __future__ import annotations

import asyncio

import grpc
from server_testkit import CAPACITY, make_request, qos, reason, reserved, rpc_error

from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


async def _events(stub, after: int, count: int):
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=after))
    out = []
    async with asyncio.timeout(10):
        async for response in stream:
            out.append(response.event)
            if len(out) == count:
                break
    stream.cancel()
    return out


async def test_sigkill_and_restart_lose_nothing(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        kept = await stub.CreateCall(make_request(qos(700_000, recv_rate=100_000)))
        dropped = await stub.CreateCall(make_request(qos(100_000)))
        await stub.DropCall(svc.DropCallRequest(name=dropped.name))
        refused = await rpc_error(stub.CreateCall(make_request(qos(CAPACITY))))
        before = await _events(stub, 0, 5)
    server_process.kill()

    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        assert await stub.GetCall(svc.GetCallRequest(name=kept.name)) == kept
        gone = await stub.GetCall(svc.GetCallRequest(name=dropped.name))
        assert gone.state == call_pb2.Call.State.STATE_DISCONNECTED
        assert (
            await stub.GetCall(svc.GetCallRequest(name=rpc_refusal_call(refused)))
        ).state == call_pb2.Call.State.STATE_DISCONNECTED
        # The reservation is back: the provider was handed the connected call again.
        assert await reserved(stub) == (700_000, 100_000)
        assert reason(await rpc_error(stub.CreateCall(make_request(qos(CAPACITY - 699_999))))) == "QOS_UNAVAILABLE"
        # Every event survived, and a watcher resuming from the middle sees the rest once.
        assert await _events(stub, 0, 5) == before
        after_restart = await stub.CreateCall(make_request(qos(1000)))
        # 4, 5 from before the kill; 6, 7 the refused probe above; 8 the new call.
        resumed = await _events(stub, before[2].sequence, 5)
        assert [e.sequence for e in resumed] == [4, 5, 6, 7, 8]
        assert resumed[:2] == before[3:]
        assert resumed[4].call == after_restart.name


def rpc_refusal_call(error: grpc.RpcError) -> str:
    from server_testkit import details

    return details(error)["QosRefusal"].call


async def test_graceful_shutdown_ends_watch_with_resumable_status(server_process) -> None:
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        await stub.CreateCall(make_request(qos(1000)))
        stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0))
        first = await stream.read()
        assert first.event.sequence == 1
        loop = asyncio.get_running_loop()
        exit_code = loop.run_in_executor(None, server_process.stop)  # SIGTERM
        error = await rpc_error(stream.read())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert reason(error) == "SHUTTING_DOWN"
        assert await exit_code == 0
    server_process.start()
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        stub = svc_grpc.CallQosServiceStub(channel)
        assert await _events(stub, 0, 1) == [first.event]


async def test_a_data_directory_serves_one_server_at_a_time(tmp_path) -> None:
    from callqos.server.store.sqlite import SqliteStore, StoreInUseError

    first = SqliteStore(tmp_path / "callqos.db")
    try:
        try:
            SqliteStore(tmp_path / "callqos.db")
        except StoreInUseError as error:
            assert "in use" in str(error)
        else:
            raise AssertionError("a second store opened the same file")
    finally:
        await first.close()
    await SqliteStore(tmp_path / "callqos.db").close()  # free again once the first closed


async def test_a_database_of_another_schema_version_is_refused(tmp_path) -> None:
    import sqlite3

    from callqos.server.store.sqlite import SqliteStore

    await SqliteStore(tmp_path / "callqos.db").close()
    with sqlite3.connect(tmp_path / "callqos.db") as db:
        db.execute("PRAGMA user_version = 99")
    try:
        SqliteStore(tmp_path / "callqos.db")
    except OSError as error:
        assert "schema version 99" in str(error)
    else:
        raise AssertionError("opened a database of an unknown schema")
