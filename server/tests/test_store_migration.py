"""The store's forward migrations: every file an earlier release (or branch) wrote opens, and ends
in exactly the schema of a new file.

- Version 1: calls, events and request_ids without tenants. Some version-1 files also have the
  lines of incoming calls (the `lines` table, the `calls.line` column), which were added without
  a version of their own.
- Version 2 (tenants, quota columns) → 3 (lines under tenants; the `active` quota column that
  counts a call between two applications once).
- Version 3 → 4 (the admission ledger: link capacities kept from UpdateLink, releases owed to
  providers; both start empty) → 5 (call leases: the `lease_expire_us` column the lease timer
  reads).

After migrating, every call, line, event and request_id belongs to the default tenant, the quota
columns hold what each call reserves (a connected pair once), and a server serves the file as
before: its connected calls restored, its offered calls still answerable."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from server_testkit import details, qos

from callqos.server.qos import mirror
from callqos.server.store.base import Usage
from callqos.server.store.sqlite import SCHEMA_VERSION, SqliteStore
from callqos.server.testing import InProcessServer
from callqos.v1 import call_pb2, event_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

Call = call_pb2.Call
State = Call.State
Direction = Call.Direction

# The schema of version 1, as the release before tenants created it.
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
# What the incoming-calls branch added to version-1 files (still version 1).
LINES_1 = """
ALTER TABLE calls ADD COLUMN line TEXT NOT NULL DEFAULT '';
CREATE INDEX calls_line ON calls (line, seq) WHERE line != '';
CREATE TABLE lines (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL, owner TEXT NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX lines_open_address ON lines (address) WHERE state = 1;
"""
# The schema of version 2, as the release with tenants created it.
SCHEMA_2 = """
CREATE TABLE calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL,
    tenant TEXT NOT NULL DEFAULT 'default', reserved_sending INTEGER NOT NULL DEFAULT 0,
    reserved_receiving INTEGER NOT NULL DEFAULT 0);
CREATE INDEX calls_state ON calls (state, seq);
CREATE INDEX calls_tenant ON calls (tenant, seq);
CREATE INDEX calls_usage ON calls (tenant, state, reserved_sending, reserved_receiving);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, create_us INTEGER NOT NULL, data BLOB NOT NULL,
    tenant TEXT NOT NULL DEFAULT 'default');
CREATE TABLE requests (tenant TEXT NOT NULL, principal TEXT NOT NULL, request_id TEXT NOT NULL,
    method TEXT NOT NULL, fingerprint TEXT NOT NULL, call TEXT NOT NULL, status BLOB NOT NULL,
    create_us INTEGER NOT NULL, PRIMARY KEY (tenant, principal, request_id));
CREATE INDEX requests_age ON requests (create_us);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 2;
"""
# The schema of version 3, as the release with lines under tenants created it.
SCHEMA_3 = """
CREATE TABLE calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL,
    tenant TEXT NOT NULL DEFAULT 'default', reserved_sending INTEGER NOT NULL DEFAULT 0,
    reserved_receiving INTEGER NOT NULL DEFAULT 0, line TEXT NOT NULL DEFAULT '',
    active INTEGER NOT NULL DEFAULT 0);
CREATE INDEX calls_state ON calls (state, seq);
CREATE INDEX calls_tenant ON calls (tenant, seq);
CREATE INDEX calls_line ON calls (line, seq) WHERE line != '';
CREATE INDEX calls_active ON calls (tenant, active, reserved_sending, reserved_receiving);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, create_us INTEGER NOT NULL, data BLOB NOT NULL,
    tenant TEXT NOT NULL DEFAULT 'default');
CREATE TABLE requests (tenant TEXT NOT NULL, principal TEXT NOT NULL, request_id TEXT NOT NULL,
    method TEXT NOT NULL, fingerprint TEXT NOT NULL, call TEXT NOT NULL, status BLOB NOT NULL,
    create_us INTEGER NOT NULL, PRIMARY KEY (tenant, principal, request_id));
CREATE INDEX requests_age ON requests (create_us);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE lines (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL, owner TEXT NOT NULL, state INTEGER NOT NULL, data BLOB NOT NULL,
    tenant TEXT NOT NULL DEFAULT 'default');
CREATE UNIQUE INDEX lines_open_address ON lines (tenant, address) WHERE state = 1;
CREATE INDEX lines_tenant ON lines (tenant, seq);
PRAGMA user_version = 3;
"""

# The schema of version 4, as the release with the admission ledger created it: version 3 and the
# ledger's two tables.
SCHEMA_4 = SCHEMA_3.replace(
    "PRAGMA user_version = 3;",
    """CREATE TABLE link_capacities (link TEXT PRIMARY KEY, capacity TEXT NOT NULL, configured TEXT NOT NULL);
CREATE TABLE pending_releases (call TEXT PRIMARY KEY, provider TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_us INTEGER NOT NULL, last_error TEXT NOT NULL, seq INTEGER NOT NULL);
PRAGMA user_version = 4;""",
)

OLD = Call(
    name="calls/old",
    direction=Direction.DIRECTION_OUTGOING,
    provider="providers/reference",
    state=State.STATE_CONNECTED,
    owner="alice",
    destination="sip:old@example.test",
    service_level=call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED,
    requested_qos=qos(100_000, 20_000),
    granted_qos=qos(100_000, 20_000),
    etag="e1",
)
BOB = "sip:bob@example.test"


def _far_future() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(4_000_000_000)
    return stamp


def _leg(name: str, peer: str, incoming: bool, state: int, **fields: object) -> Call:
    sent = qos(50_000, 10_000)
    leg = Call(
        name=name,
        direction=Direction.DIRECTION_INCOMING if incoming else Direction.DIRECTION_OUTGOING,
        provider="providers/reference",
        state=state,  # type: ignore[arg-type]
        owner="bob" if incoming else "carol",
        destination=BOB,
        service_level=call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED,
        requested_qos=mirror(sent) if incoming else sent,
        peer=peer,
        line="lines/bob" if incoming else "",
        **fields,  # type: ignore[arg-type]
    )
    if state == State.STATE_CONNECTED:
        leg.granted_qos.CopyFrom(leg.requested_qos)
    return leg


# A call between two applications, connected (one reservation, held under calls/pair-a), and
# another one ringing on bob's line.
PAIR = [
    _leg("calls/pair-a", "calls/pair-b", False, State.STATE_CONNECTED),
    _leg("calls/pair-b", "calls/pair-a", True, State.STATE_CONNECTED),
]
RINGING = [
    _leg("calls/ring-a", "calls/ring-b", False, State.STATE_RINGBACK, offer_expire_time=_far_future()),
    _leg("calls/ring-b", "calls/ring-a", True, State.STATE_OFFERING, offer_expire_time=_far_future()),
]
RINGING[1].features.answer = True
LINE = line_pb2.Line(
    name="lines/bob",
    address=BOB,
    owner="bob",
    state=line_pb2.Line.State.STATE_OPEN,
    no_answer_timeout=duration_pb2.Duration(seconds=30),
    etag="l1",
)


def _insert_calls(db: sqlite3.Connection, calls: list[Call], *, with_line: bool) -> None:
    for call in calls:
        if with_line:
            db.execute(
                "INSERT INTO calls (name, provider, state, data, line) VALUES (?, ?, ?, ?, ?)",
                (call.name, call.provider, call.state, call.SerializeToString(), call.line),
            )
        else:
            db.execute(
                "INSERT INTO calls (name, provider, state, data) VALUES (?, ?, ?, ?)",
                (call.name, call.provider, call.state, call.SerializeToString()),
            )


def _insert_history(db: sqlite3.Connection, tenant: str = "") -> None:
    for sequence in (1, 2):
        event = event_pb2.QosEvent(
            call=OLD.name, sequence=sequence, type=event_pb2.QOS_EVENT_TYPE_QOS_GRANTED, tenant=tenant
        )
        db.execute(
            "INSERT INTO events (seq, create_us, data) VALUES (?, ?, ?)", (sequence, 1, event.SerializeToString())
        )


def write_version_1(path: Path) -> None:
    """What the release before tenants left: one connected call, its events, a request_id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    _insert_calls(db, [OLD], with_line=False)
    _insert_history(db)
    db.execute("INSERT INTO requests VALUES ('alice', 'r1', 'CreateCall', 'f', 'calls/old', x'', 1)")
    db.commit()
    db.close()


def write_version_1_with_lines(path: Path) -> None:
    """Version 1 as the incoming-calls branch left it: also bob's open line, a connected pair and
    a pair still ringing."""
    write_version_1(path)
    db = sqlite3.connect(path)
    db.executescript(LINES_1)
    _insert_calls(db, [*PAIR, *RINGING], with_line=True)
    db.execute(
        "INSERT INTO lines (name, address, owner, state, data) VALUES (?, ?, ?, ?, ?)",
        (LINE.name, LINE.address, LINE.owner, LINE.state, LINE.SerializeToString()),
    )
    db.commit()
    db.close()


def _write_with_tenants(path: Path, schema: str, *, active: bool, calls: Sequence[Call] = ()) -> None:
    """The connected call (and `calls`, connected), of the default tenant, with their quota
    columns (and `active`, from version 3 on), its events and its request_id, in a file of
    `schema`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(schema)
    column, value = (", active", ", 1") if active else ("", "")
    for each in (OLD, *calls):
        stored = Call()
        stored.CopyFrom(each)
        stored.tenant = "default"
        db.execute(
            f"INSERT INTO calls (name, provider, state, data, tenant, reserved_sending, reserved_receiving{column}) "
            f"VALUES (?, ?, ?, ?, 'default', ?, ?{value})",
            (
                stored.name,
                stored.provider,
                stored.state,
                stored.SerializeToString(),
                stored.granted_qos.sending.token_rate_bytes_per_second,
                stored.granted_qos.receiving.token_rate_bytes_per_second,
            ),
        )
    _insert_history(db, "default")
    db.execute("INSERT INTO requests VALUES ('default', 'alice', 'r1', 'CreateCall', 'f', 'calls/old', x'', 1)")
    db.commit()
    db.close()


def write_version_2(path: Path) -> None:
    """What the release with tenants left: the connected call, of the default tenant."""
    _write_with_tenants(path, SCHEMA_2, active=False)


def write_version_3(path: Path) -> None:
    """What the release with lines under tenants left: the same, counted toward its quotas."""
    _write_with_tenants(path, SCHEMA_3, active=True)


def write_version_4(path: Path, *calls: Call) -> None:
    """What the release before leases left (the admission ledger's): the same, and `calls`."""
    _write_with_tenants(path, SCHEMA_4, active=True, calls=calls)


def schema_of(path: Path) -> dict[str, object]:
    """A file's schema as sets (column order differs with the path a file took): each table's
    columns, each index's table, columns, uniqueness and partial condition; the version."""
    db = sqlite3.connect(path)
    try:
        tables = {
            table: frozenset(tuple(row[1:]) for row in db.execute(f"PRAGMA table_info({table})"))
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if table != "sqlite_sequence"
        }
        indexes = {}
        for name, table, sql in db.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"):
            columns = tuple(row[2] for row in db.execute(f"PRAGMA index_info({name})"))
            unique = {row[1]: row[2] for row in db.execute(f"PRAGMA index_list({table})")}[name]
            where = re.sub(r"\s+", " ", sql.partition(" WHERE ")[2]).strip() if sql else ""
            indexes[name] = (table, columns, unique, where)
        return {"tables": tables, "indexes": indexes, "version": db.execute("PRAGMA user_version").fetchone()[0]}
    finally:
        db.close()


@pytest.mark.parametrize(
    "write", [write_version_1, write_version_1_with_lines, write_version_2, write_version_3, write_version_4]
)
async def test_every_earlier_file_ends_in_the_schema_of_a_new_file(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    old, new = tmp_path / "old" / "callqos.db", tmp_path / "new" / "callqos.db"
    write(old)
    new.parent.mkdir()
    for path in (old, new):
        await SqliteStore(path).close()
    assert schema_of(old) == schema_of(new)
    assert schema_of(new)["version"] == SCHEMA_VERSION == 5


@pytest.mark.parametrize("write", [write_version_1, write_version_2, write_version_3, write_version_4])
async def test_an_earlier_file_keeps_its_calls_events_and_request_ids_in_the_default_tenant(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    path = tmp_path / "callqos.db"
    write(path)
    store = SqliteStore(path)
    try:
        call = await store.get_call(OLD.name)
        assert call is not None and call.tenant == "default" and call.owner == "alice" and call.etag == "e1"
        assert [e.tenant for e in await store.events_after(0, 10)] == ["default", "default"]
        assert await store.usage("default") == Usage(1, 100_000, 20_000)
        record = await store.find_request("r1", "alice", "default")
        assert record is not None and record.call == OLD.name
        listed = await store.list_calls(tenant="default", state=None, provider=None, limit=10, before=0)
        assert [c.name for c in listed.calls] == [OLD.name]
        # The ledger's tables start empty: no capacity was kept, no release owed.
        assert await store.link_capacities() == [] and await store.pending_releases() == []
    finally:
        await store.close()


async def test_a_version_1_file_with_lines_keeps_them_in_the_default_tenant(tmp_path: Path) -> None:
    path = tmp_path / "callqos.db"
    write_version_1_with_lines(path)
    store = SqliteStore(path)
    try:
        line = await store.get_line(LINE.name)
        assert line is not None and (line.tenant, line.owner, line.etag) == ("default", "bob", "l1")
        assert await store.open_line(BOB, "default") == line
        assert await store.open_line(BOB, "acme") is None
        for name in ("calls/pair-a", "calls/pair-b", "calls/ring-b"):
            call = await store.get_call(name)
            assert call is not None and call.tenant == "default"
        # The connected pair counts once (its caller's leg, in the caller's terms); the ringing
        # one not at all; the old call as before.
        assert await store.usage("default") == Usage(2, 100_000 + 50_000, 20_000 + 10_000)
        on_line = await store.list_calls(
            tenant="default", state=None, provider=None, limit=10, before=0, line=LINE.name
        )
        assert {c.name for c in on_line.calls} == {"calls/pair-b", "calls/ring-b"}
        # An address is unique among one tenant's open lines: another tenant may open it.
        other = line_pb2.Line(name="lines/acme-bob", address=BOB, owner="bob", tenant="acme", state=line.state)
        await store.commit((), (), None, lines=[other])
        assert (await store.open_line(BOB, "acme")) == other
    finally:
        await store.close()


@pytest.mark.parametrize("write", [write_version_1, write_version_3, write_version_4])
async def test_a_server_serves_a_migrated_file(tmp_path: Path, write: Callable[[Path], None]) -> None:
    write(tmp_path / "data" / "callqos.db")
    async with (
        InProcessServer(tmp_path, storage="sqlite") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        call = await stub.GetCall(svc.GetCallRequest(name=OLD.name))
        assert (call.owner, call.tenant) == ("alice", "default")
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        assert link.sending_reserved_bytes_per_second == 100_000  # restored to the provider
        dropped = await stub.DropCall(svc.DropCallRequest(name=OLD.name), metadata=(("x-callqos-principal", "alice"),))
        assert dropped.state == call_pb2.Call.State.STATE_DISCONNECTED


async def test_a_server_serves_a_migrated_file_with_lines(tmp_path: Path) -> None:
    write_version_1_with_lines(tmp_path / "data" / "callqos.db")
    bob = (("x-callqos-principal", "bob"),)
    async with (
        InProcessServer(tmp_path, storage="sqlite") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        line = await stub.GetLine(svc.GetLineRequest(name=LINE.name))
        assert (line.owner, line.tenant, line.state) == ("bob", "default", line_pb2.Line.State.STATE_OPEN)
        # The old call and the pair are restored, the pair with one reservation.
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        assert link.sending_reserved_bytes_per_second == 100_000 + 50_000
        # The address is still taken in its tenant.
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await stub.CreateLine(svc.CreateLineRequest(line=line_pb2.Line(address=BOB)), metadata=bob)
        assert details(taken.value)["ErrorInfo"].reason == "ADDRESS_IN_USE"
        # The ringing call rang on through the migration, and its owner can still reject it.
        rejected = await stub.RejectCall(svc.RejectCallRequest(name="calls/ring-b"), metadata=bob)
        assert (rejected.state, rejected.disconnect_reason) == (
            State.STATE_DISCONNECTED,
            call_pb2.DisconnectReason.DISCONNECT_REASON_REJECTED,
        )
        caller = await stub.GetCall(svc.GetCallRequest(name="calls/ring-a"))
        assert caller.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_REJECTED


async def test_the_lease_step_indexes_what_a_call_holds(tmp_path: Path) -> None:
    """Step 5 reads each call's lease into the column the lease timer uses (version-4 calls have
    none; one that has, say from a build of the leases branch, is indexed as a new file would), so
    a lease that ended while the server was down ends the call at the first start — released
    through the ledger's owed release like any other end (nothing is left owed)."""
    leased = Call()
    leased.CopyFrom(OLD)
    leased.name = "calls/leased"
    leased.lease_duration.FromSeconds(5)
    leased.lease_expire_time.FromSeconds(1_000_000_000)  # long ago
    write_version_4(tmp_path / "data" / "callqos.db", leased)
    store = SqliteStore(tmp_path / "data" / "callqos.db")
    try:
        assert await store.expired_leases(2_000_000_000 * 10**6, 10) == ["calls/leased"]
        assert await store.next_lease_expiry() == 1_000_000_000 * 10**6
    finally:
        await store.close()
    async with (
        InProcessServer(tmp_path, storage="sqlite") as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        ended = await stub.GetCall(svc.GetCallRequest(name="calls/leased"))
        assert ended.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_LEASE_EXPIRED
        kept = await stub.GetCall(svc.GetCallRequest(name=OLD.name))
        assert kept.state == State.STATE_CONNECTED and not kept.HasField("lease_expire_time")
        [link] = (await stub.ListLinks(svc.ListLinksRequest(parent="providers/reference"))).links
        assert link.sending_reserved_bytes_per_second == 100_000, "the expired call was released"
        assert await server.running.store.pending_releases() == [], "and the release is owed no more"
