"""Leases from the Python client against the real server: ``make_call(lease=)``, ``extend``, and the
keep-alive helpers (sync ``KeepAlive`` in a ``with`` block, async ``AsyncKeepAlive`` in an ``async
with``) that keep a call alive while the application holds it, stop and drop it when the block
ends, and surface a lost lease; and the CLI's ``make --duration``, ``extend``, ``get`` and ``list``.

Leases here are real seconds (the least a lease may be is 1 s; the tests that hold a call use 3 s,
so that each renewal has two seconds to get through on a busy machine), so a test waits out a lease or
two; the ends are observed through the API, not guessed from sleeps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest
from test_client_cli import _env

from callqos.client import (
    AsyncClient,
    CallNotLeasedError,
    Client,
    InvalidRequestError,
    LeaseExpiredError,
    LeaseLostError,
    controlled_load,
)
from callqos.v1 import call_pb2

State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason


def _expires(call: call_pb2.Call) -> float:
    return call.lease_expire_time.ToNanoseconds() / 1e9


def _wait_until_ended(client: Client, name: str, within: float = 15.0) -> call_pb2.Call:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        call = client.get_call(name)
        if call.state == State.STATE_DISCONNECTED:
            return call
        time.sleep(0.05)
    raise AssertionError(f"{name} still not ended after {within} s")


def test_a_lease_and_its_extension(client: Client) -> None:
    call = client.make_call("sip:lease@example.test", sending=controlled_load(1_000), lease=30)
    assert call.lease_duration.ToSeconds() == 30
    assert abs(_expires(call) - (time.time() + 30)) < 5
    renewed = client.extend(call.name, lease=60.5)
    assert renewed.lease_duration.ToNanoseconds() == 60_500_000_000
    assert _expires(renewed) > _expires(call)
    assert renewed.etag == call.etag, "a renewal does not change the call"
    with pytest.raises(InvalidRequestError) as invalid:
        client.extend(call.name, lease=0.5)
    assert invalid.value.field_violations[0].field == "lease_duration"
    unleased = client.make_call("sip:lease@example.test")
    with pytest.raises(CallNotLeasedError):
        client.extend(unleased.name)
    client.drop(call.name)
    client.drop(unleased.name)


def test_keep_alive_keeps_the_call_then_drops_it(client: Client) -> None:
    # A 3 s lease renewed every second: each renewal has two seconds to get through, enough on a
    # busy machine; the block holds the call for more than two leases.
    call = client.make_call("sip:kept@example.test", sending=controlled_load(1_000), lease=3)
    lost: list[LeaseLostError] = []
    with client.keep_alive(call, on_lost=lost.append) as lease:
        time.sleep(7)
        assert not lease.lost and lease.renewals >= 5, lease.renewals
        assert client.get_call(call.name).state == State.STATE_CONNECTED
    assert not lost
    ended = client.get_call(call.name)
    assert (ended.state, ended.disconnect_reason) == (State.STATE_DISCONNECTED, Disconnect.DISCONNECT_REASON_NORMAL)


def test_keep_alive_without_drop_leaves_the_call_to_its_lease(client: Client) -> None:
    call = client.make_call("sip:kept@example.test", lease=3)
    with client.keep_alive(call, drop=False):
        time.sleep(1.5)
    assert client.get_call(call.name).state == State.STATE_CONNECTED, "stopping does not drop it"
    ended = _wait_until_ended(client, call.name)
    assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
    assert time.time() >= _expires(ended)


def test_keep_alive_surfaces_a_lost_lease(client: Client) -> None:
    """Another hand ends the call (here: its owner drops it behind the helper's back): the helper
    reports it at once, through on_lost, `lost`, and LeaseLostError when the block ends."""
    call = client.make_call("sip:lost@example.test", lease=3)
    seen = threading.Event()
    with pytest.raises(LeaseLostError) as raised, client.keep_alive(call, on_lost=lambda _: seen.set()) as lease:
        client.drop(call.name)
        assert lease.wait_lost(5), "the loss was not noticed"
        assert seen.is_set() and lease.lost
    assert raised.value.call == call.name
    assert raised.value.cause is not None and raised.value.cause.reason == "CALL_NOT_CONNECTED"


def test_keep_alive_loses_a_lease_it_could_not_renew_in_time(server_factory) -> None:  # type: ignore[no-untyped-def]
    """The server goes away for longer than the lease: no renewal gets through in time, so the
    helper reports the lease lost; back up, the server has ended the call LEASE_EXPIRED (at start)."""
    server = server_factory(storage="sqlite")
    with Client(server.target, principal="alice", timeout=2.0) as client:
        call = client.make_call("sip:away@example.test", lease=1)
        lease = client.keep_alive(call, drop=False)
        try:
            server.kill()
            assert lease.wait_lost(10)
            assert lease.error is not None and "before the lease ended" in str(lease.error)
        finally:
            lease.close()
        server.start()
        ended = client.get_call(call.name)
        assert ended.disconnect_reason == Disconnect.DISCONNECT_REASON_LEASE_EXPIRED
        with pytest.raises(LeaseExpiredError):
            client.extend(call.name)


def test_keep_alive_needs_a_leased_call(client: Client) -> None:
    call = client.make_call("sip:plain@example.test")
    with pytest.raises(ValueError, match="no lease"):
        client.keep_alive(call)
    client.drop(call.name)


async def test_async_keep_alive(server) -> None:  # type: ignore[no-untyped-def]
    async with AsyncClient(server.target, principal="alice", timeout=10.0) as client:
        call = await client.make_call("sip:async@example.test", sending=controlled_load(1_000), lease=3)
        async with client.keep_alive(call) as lease:
            await asyncio.sleep(7)  # more than two leases
            assert not lease.lost and lease.renewals >= 5
            assert (await client.get_call(call.name)).state == State.STATE_CONNECTED
        assert (await client.get_call(call.name)).disconnect_reason == Disconnect.DISCONNECT_REASON_NORMAL

        other = await client.make_call("sip:async@example.test", lease=3)
        with pytest.raises(LeaseLostError):
            async with client.keep_alive(other, interval=0.1) as lease:
                await client.drop(other.name)
                error = await asyncio.wait_for(lease.wait_lost(), 5)
                assert error.cause is not None and error.cause.reason == "CALL_NOT_CONNECTED"


def _cli(server, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "callqos.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL="erin"),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def test_cli_make_with_a_duration_extend_get_and_list(server) -> None:  # type: ignore[no-untyped-def]
    made = _cli(server, "make", "sip:cli-lease@example.test", "--call-id", "cli-lease", "--duration", "45")
    assert "lease:       45 s, until " in made.stdout
    extended = _cli(server, "extend", "calls/cli-lease", "--duration", "90")
    assert "lease:       90 s, until " in extended.stdout
    listed = _cli(server, "list", "--state", "connected")
    header, *rows = listed.stdout.splitlines()
    assert header.split()[-1] == "LEASE"
    [row] = [row for row in rows if row.startswith("calls/cli-lease ")]
    assert "until " in row
    bad = _cli(server, "make", "sip:x@example.test", "--duration", "0.5", check=False)
    assert bad.returncode == 13 and "call.lease_duration" in bad.stderr
    usage = _cli(server, "make", "sip:x@example.test", "--duration", "-1", check=False)
    assert usage.returncode == 2 and "--duration" in usage.stderr
    _cli(server, "drop", "calls/cli-lease")
    plain = _cli(server, "make", "sip:cli-lease@example.test", "--call-id", "cli-plain")
    assert "lease:" not in plain.stdout
    not_leased = _cli(server, "extend", "cli-plain", check=False)
    assert not_leased.returncode == 10 + 9 and "CALL_NOT_LEASED" in not_leased.stderr
    _cli(server, "drop", "calls/cli-plain")
