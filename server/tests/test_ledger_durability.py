"""The ledger across restarts and a full disk (issue 11, items 4, 5 and 7), with real server
processes on real data directories:

- a capacity set with UpdateLink survives graceful and `kill -9` restarts while the configured
  capacity is unchanged, and a changed configuration wins over it (conformance/SPEC.md LINK-5);
- the server always starts: on a data directory whose calls name a provider it no longer hosts,
  or that its provider cannot restore, or that bricked it before this fix, and on a data directory
  of schema version 3 (CALL-7);
- with the data directory on a full filesystem every mutation answers UNAVAILABLE /
  STORAGE_UNAVAILABLE naming the cause, nothing diverges, and everything works again once space
  is freed, without a restart (CALL-5, API-10).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from server_testkit import ROOT, details, flow, make_request, qos, reason

from callqos.server.providers import AdmissionRequest, Decision, ProviderChange, ProviderHost, Restored
from callqos.server.providers.reference import ReferenceProvider
from callqos.server.qos import reserved_rate
from callqos.server.store.sqlite import SCHEMA_VERSION, SqliteStore
from callqos.server.testing import ServerProcess
from callqos.v1 import call_pb2, event_pb2, flowspec_pb2, provider_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Level = call_pb2.ServiceLevel
ST = flowspec_pb2.ServiceType
EventType = event_pb2.QosEventType
LINK = "providers/reference/links/default"
TESTS = str(ROOT / "server" / "tests")  # on the server's PYTHONPATH, for the providers below


class CannotRestorePoison(ReferenceProvider):
    """A provider that cannot take back calls whose destination contains "poison" (data it no
    longer understands): its start raises when handed one, and so does admitting one."""

    async def start(self, host: ProviderHost, restored: Sequence[Restored]) -> list[ProviderChange]:
        if any("poison" in item.destination for item in restored):
            raise ValueError("cannot restore a poisoned call")
        return await super().start(host, restored)

    async def admit(self, request: AdmissionRequest) -> Decision:
        if "poison" in request.destination:
            raise ValueError("cannot take a poisoned call")
        return await super().admit(request)


def stub_of(channel: grpc.Channel) -> svc_grpc.CallQosServiceStub:
    return svc_grpc.CallQosServiceStub(channel)


def set_capacity(stub: svc_grpc.CallQosServiceStub, capacity: int) -> svc.UpdateLinkResponse:
    link = provider_pb2.Link(name=LINK, capacity_bytes_per_second=capacity)
    return stub.UpdateLink(svc.UpdateLinkRequest(link=link), timeout=10)


def the_link(stub: svc_grpc.CallQosServiceStub) -> provider_pb2.Link:
    (link,) = [link for link in stub.ListLinks(svc.ListLinksRequest(parent="providers/reference")).links]
    return link


def ledger(stub: svc_grpc.CallQosServiceStub) -> tuple[tuple[int, int], tuple[int, int]]:
    """(what the link reports, what its connected calls sum to)."""
    link = the_link(stub)
    calls = stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED", page_size=500)).calls
    summed = (
        sum(reserved_rate(c.granted_qos.sending) for c in calls),
        sum(reserved_rate(c.granted_qos.receiving) for c in calls),
    )
    return (link.sending_reserved_bytes_per_second, link.receiving_reserved_bytes_per_second), summed


def events_of(stub: svc_grpc.CallQosServiceStub, call: str) -> list[event_pb2.QosEvent]:
    found = []
    stream = stub.WatchEvents(svc.WatchEventsRequest(after_sequence=0, call=call), timeout=1.5)
    with contextlib.suppress(grpc.RpcError):  # the deadline ends the stream once caught up
        for response in stream:
            found.append(response.event)
    return found


def links_setting(capacity: int) -> dict[str, object]:
    return {"reference": {"links": [{"id": "default", "capacity_bytes_per_second": capacity}]}}


# -- durable capacities (LINK-5) --------------------------------------------------------------------
@pytest.mark.slow
def test_a_capacity_set_with_update_link_survives_restarts_until_the_configuration_changes(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, storage="sqlite", providers=links_setting(1_250_000)) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_of(channel)
            set_capacity(stub, 3_000_000)
            big = stub.CreateCall(make_request(qos(2_500_000)))
        for kill in (False, True):
            server.restart(kill=kill)
            with grpc.insecure_channel(server.target) as channel:
                stub = stub_of(channel)
                # Used to come back at 1,250,000 and shed the call admitted under the raise.
                assert the_link(stub).capacity_bytes_per_second == 3_000_000
                assert stub.GetCall(svc.GetCallRequest(name=big.name)) == big
                assert ledger(stub) == ((2_500_000, 0), (2_500_000, 0))
    # The operator edits the configured capacity: the configuration wins over the kept one.
    with ServerProcess(tmp_path, storage="sqlite", providers=links_setting(2_000_000)) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_of(channel)
            assert the_link(stub).capacity_bytes_per_second == 2_000_000
            shed = stub.GetCall(svc.GetCallRequest(name=big.name))
            assert shed.state == State.STATE_DISCONNECTED
            assert shed.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_QOS_UNAVAILABLE
            assert ledger(stub) == ((0, 0), (0, 0))
        server.restart()  # and the kept capacity is forgotten for good
        with grpc.insecure_channel(server.target) as channel:
            assert the_link(stub_of(channel)).capacity_bytes_per_second == 2_000_000
    assert "the configuration wins" in server.log(tail=10**6)


# -- the server always starts (CALL-7) -------------------------------------------------------------
@pytest.mark.slow
def test_calls_a_provider_cannot_restore_are_disconnected_and_the_server_starts(tmp_path: Path) -> None:
    """A poisoned data directory: calls of a provider the server no longer hosts, and calls the
    provider cannot restore. Each is disconnected with its events and a reason; the others are
    restored; the server serves."""
    env = {"PYTHONPATH": TESTS}
    before = {"reference": {}, "spare": {"plugin": "reference"}}
    with ServerProcess(tmp_path, storage="sqlite", providers=before) as s, grpc.insecure_channel(s.target) as channel:
        stub = stub_of(channel)
        fine = stub.CreateCall(make_request(qos(100_000), call_id="fine"))
        stub.CreateCall(make_request(qos(200_000), call_id="poisoned", destination="sip:poison@example.test"))
        stub.CreateCall(make_request(qos(300_000), call_id="orphaned", provider="providers/spare"))
    hosted = {"reference": {"plugin": "test_ledger_durability:CannotRestorePoison"}}
    with (
        ServerProcess(tmp_path, storage="sqlite", providers=hosted, env=env) as server,  # used to exit rc 1
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = stub_of(channel)
        assert stub.GetCall(svc.GetCallRequest(name=fine.name)) == fine
        assert ledger(stub) == ((100_000, 0), (100_000, 0))
        for name, why in (("calls/poisoned", "could not take it again"), ("calls/orphaned", "not hosted")):
            call = stub.GetCall(svc.GetCallRequest(name=name))
            assert call.state == State.STATE_DISCONNECTED, name
            events = events_of(stub, name)
            assert events[-1].type == EventType.QOS_EVENT_TYPE_CALL_DISCONNECTED
            assert why in events[-1].message, (name, events[-1].message)
            assert call.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_PROVIDER_ERROR, name
            assert [e.type for e in events][-2] == EventType.QOS_EVENT_TYPE_GENERIC_ERROR
        assert stub.CreateCall(make_request(qos(1000))).state == State.STATE_CONNECTED
        assert "failed to start" in server.log(tail=10**6)


@pytest.mark.slow
def test_the_data_directory_that_bricked_the_server_opens(tmp_path: Path) -> None:
    """What the issue's first finding left behind, written directly: a connected GUARANTEED call of
    5e8 B/s with a 1e12-byte bucket on a link configured at 1,250,000 B/s. Restoring it sheds it
    (degrades it, as an IF_AVAILABLE call) with a representable latency, where every start used to
    exit with `ValueError: Value out of range`."""
    data = tmp_path / "data"
    store = SqliteStore(data / "callqos.db")
    granted = flowspec_pb2.QosSpec(
        sending=flow(
            ST.SERVICE_TYPE_GUARANTEED,
            rate=500_000_000,
            token_bucket_size_bytes=10**12,
            peak_bandwidth_unbounded=True,
            latency_microseconds=2_000_003_003,
            max_sdu_size_bytes=1500,
            minimum_policed_size_bytes=64,
        ),
        receiving=flow(ST.SERVICE_TYPE_BEST_EFFORT),
    )
    call = call_pb2.Call(
        name="calls/huge",
        destination="sip:alice@example.test",
        provider="providers/reference",
        service_level=Level.SERVICE_LEVEL_IF_AVAILABLE,
        requested_qos=granted,
        granted_qos=granted,
        state=State.STATE_CONNECTED,
        owner="anonymous",
        tenant="default",
    )
    asyncio.run(store.commit(call, []))
    asyncio.run(store.close())
    with ServerProcess(tmp_path, storage="sqlite") as server, grpc.insecure_channel(server.target) as channel:
        stub = stub_of(channel)
        degraded = stub.GetCall(svc.GetCallRequest(name="calls/huge"))
        assert degraded.state == State.STATE_CONNECTED
        assert degraded.granted_qos.sending.token_rate_bytes_per_second == 1_250_000
        assert degraded.granted_qos.sending.latency_microseconds <= 0xFFFFFFFD
        assert ledger(stub) == ((1_250_000, 0), (1_250_000, 0))
        (changed,) = events_of(stub, "calls/huge")
        assert changed.type == EventType.QOS_EVENT_TYPE_QOS_CHANGED


def test_a_schema_version_3_data_directory_is_migrated(tmp_path: Path) -> None:
    """A data directory written by the release before the ledger (schema 3: no link capacities, no
    owed releases, nor the lease column of schema 5) opens: the tables are added
    (test_store_migration.py migrates every earlier file)."""
    path = tmp_path / "callqos.db"
    asyncio.run(SqliteStore(path).close())
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE link_capacities; DROP TABLE pending_releases; DROP INDEX calls_lease; "
        "ALTER TABLE calls DROP COLUMN lease_expire_us; PRAGMA user_version = 3;"
    )
    db.close()
    store = SqliteStore(path)
    try:
        assert asyncio.run(store.link_capacities()) == [] and asyncio.run(store.pending_releases()) == []
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    finally:
        asyncio.run(store.close())
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(OSError, match="schema version 99"):
        SqliteStore(path)


# -- a full disk (CALL-5, API-10) --------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only; skips with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the data directory needs root")
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError), open(filler, "ab") as out:  # the last bytes a chunk left
        for _ in range(65536):
            out.write(b"\0")
            out.flush()
    return filler


def storage_unavailable(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "STORAGE_UNAVAILABLE"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_full_disk_is_a_retryable_failure_that_changes_nothing(tmp_path: Path) -> None:
    # The server's data directory (its `data` under the server directory) is the small filesystem;
    # its configuration and log are not.
    (tmp_path / "server").mkdir()
    with (
        small_filesystem(tmp_path / "server" / "data", "2m") as data,
        ServerProcess(tmp_path / "server", storage="sqlite") as server,
    ):
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_of(channel)
            kept = stub.CreateCall(make_request(qos(300_000, recv_rate=100_000), call_id="kept"))
            victims = [stub.CreateCall(make_request(qos(10_000), call_id=f"victim-{i}")) for i in range(5)]
            before = ledger(stub)
            filler = fill(data)

            def refused(method: str, request: object) -> grpc.RpcError | None:
                """The error of one mutation on the full disk (None if it went through on pages
                SQLite had already allocated); whatever happened, the ledger still holds."""
                try:
                    getattr(stub, method)(request, timeout=10)
                    error = None
                except grpc.RpcError as failed:
                    assert storage_unavailable(failed), f"{method}: {failed.code()} {failed.details()}"
                    assert "disk is full" in details(failed)["ErrorInfo"].metadata["cause"]
                    error = failed
                reported, summed = ledger(stub)
                assert reported == summed, f"after {method}: the link reports {reported}, its calls sum {summed}"
                return error

            # Mutations that change nothing when refused, until each has been refused.
            pending = {
                "CreateCall": lambda n: make_request(qos(100), call_id=f"new-{n}"),
                "RenegotiateCall": lambda n: svc.RenegotiateCallRequest(name=kept.name, qos=qos(300_000 + n)),
                "UpdateLink": lambda n: svc.UpdateLinkRequest(
                    link=provider_pb2.Link(name=LINK, capacity_bytes_per_second=2_000_000 + n)
                ),
            }
            for attempt in range(100):
                for method in list(pending):
                    if refused(method, pending[method](attempt)) is not None:
                        del pending[method]
                if not pending:
                    break
            assert not pending, f"never refused on a full disk: {sorted(pending)}"
            # A drop that cannot be recorded releases nothing and leaves the call connected.
            dropped = [refused("DropCall", svc.DropCallRequest(name=victim.name)) for victim in victims]
            assert any(dropped), "DropCall never refused on a full disk"
            for victim, error in zip(victims, dropped, strict=True):
                if error is not None:
                    assert stub.GetCall(svc.GetCallRequest(name=victim.name)).state == State.STATE_CONNECTED
            assert stub.GetCall(svc.GetCallRequest(name=kept.name)) == kept
            assert the_link(stub).capacity_bytes_per_second == 1_250_000
            if all(dropped):
                assert ledger(stub) == before
            # Space comes back: everything works again, without a restart.
            filler.unlink()
            again = stub.CreateCall(make_request(qos(100_000), call_id="after"))
            assert again.state == State.STATE_CONNECTED
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=kept.name, qos=qos(400_000)))
            assert set_capacity(stub, 2_000_000).link.capacity_bytes_per_second == 2_000_000
            stub.DropCall(svc.DropCallRequest(name=kept.name))
            for victim in victims:
                stub.DropCall(svc.DropCallRequest(name=victim.name))
            assert ledger(stub) == ((100_000, 0), (100_000, 0))
        assert server.stop() == 0
        server.start()  # and the directory that was full opens, with what was recorded
        with grpc.insecure_channel(server.target) as channel:
            stub = stub_of(channel)
            assert the_link(stub).capacity_bytes_per_second == 2_000_000
            assert ledger(stub) == ((100_000, 0), (100_000, 0))
