"""Schema version 1 (before tenants) → 2: a database written by the previous release opens, every
call, event and request_id in it belongs to the default tenant, the quota columns hold what each
call reserves, and a server serves it as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
from server_testkit import qos

from callqos.server.store.base import Usage
from callqos.server.store.sqlite import SCHEMA_VERSION, SqliteStore
from callqos.server.testing import InProcessServer
from callqos.v1 import call_pb2, event_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

# The schema of version 1, as the previous release created it.
SCHEMA_1 = """
CREATE TABLE calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX calls_state ON calls (state, seq);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, create_us INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE requests (principal TEXT NOT NULL, request_id TEXT NOT NULL, method TEXT NOT NULL,
    fingerprint TEXT NOT NULL, call TEXT NOT NULL, status BLOB NOT NULL, create_us INTEGER NOT NULL,
    PRIMARY KEY (principal, request_id));
CREATE INDEX requests_age ON requests (create_us);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 1;
"""


def write_version_1(path: Path) -> call_pb2.Call:
    path.parent.mkdir(parents=True, exist_ok=True)
    call = call_pb2.Call(
        name="calls/old",
        provider="providers/reference",
        state=call_pb2.Call.State.STATE_CONNECTED,
        owner="alice",
        destination="sip:old@example.test",
        service_level=call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED,
        requested_qos=qos(100_000, 20_000),
        granted_qos=qos(100_000, 20_000),
        etag="e1",
    )
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute(
        "INSERT INTO calls (name, provider, state, data) VALUES (?, ?, ?, ?)",
        (call.name, call.provider, call.state, call.SerializeToString()),
    )
    for sequence in (1, 2):
        event = event_pb2.QosEvent(call=call.name, sequence=sequence, type=event_pb2.QOS_EVENT_TYPE_QOS_GRANTED)
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (sequence, 1, event.SerializeToString()))
    db.execute("INSERT INTO requests VALUES ('alice', 'r1', 'CreateCall', 'f', 'calls/old', x'', 1)")
    db.commit()
    db.close()
    return call


async def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "callqos.db"
    old = write_version_1(path)
    store = SqliteStore(path)
    try:
        call = await store.get_call(old.name)
        assert call is not None and call.tenant == "default" and call.owner == "alice" and call.etag == "e1"
        assert [e.tenant for e in await store.events_after(0, 10)] == ["default", "default"]
        assert await store.usage("default") == Usage(1, 100_000, 20_000)
        record = await store.find_request("r1", "alice", "default")
        assert record is not None and record.call == old.name
        listed = await store.list_calls(tenant="default", state=None, provider=None, limit=10, before=0)
        assert [c.name for c in listed.calls] == [old.name]
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


async def test_a_server_serves_a_migrated_database(tmp_path: Path) -> None:
    old = write_version_1(tmp_path / "data" / "callqos.db")
    async with (
        InProcessServer(tmp_path, storage="sqlite") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        call = await stub.GetCall(svc.GetCallRequest(name=old.name))
        assert (call.owner, call.tenant) == ("alice", "default")
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        assert link.sending_reserved_bytes_per_second == 100_000  # restored to the provider
        dropped = await stub.DropCall(svc.DropCallRequest(name=old.name), metadata=(("x-callqos-principal", "alice"),))
        assert dropped.state == call_pb2.Call.State.STATE_DISCONNECTED
