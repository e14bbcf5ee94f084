"""A provider the server launches (`command`): real processes, killed, hung and restarted.

Each failure gives the documented status (PROVIDER_UNAVAILABLE, with RetryInfo while the
provider is away), nothing is ever admitted without the provider, and once the provider is back
the server and the provider agree on every reservation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from remote_kit import assert_agree, launched, remote_of, serving_launched, until
from server_testkit import CAPACITY, make_request, qos, reason, rpc_error
from test_remote_provider import retry_delay

from callqos.server import testing
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason
ACME = "providers/acme"


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub]]:
    """A server launching `remote_kit:GatedReference` as its provider `acme`."""
    async with serving_launched(tmp_path, "remote_kit:GatedReference", provider_timeout_seconds=1.0) as served:
        yield served


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its parent has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def restarted(server: testing.InProcessServer, old_pid: int) -> int:
    remote = remote_of(server)
    await until(
        lambda: remote.ready and remote.process is not None and remote.process.pid != old_pid,
        what="a new provider process, restored",
    )
    assert remote.process is not None and remote.process.pid is not None
    return remote.process.pid


async def test_a_launched_provider_logs_into_the_servers_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with testing.InProcessServer(
        tmp_path, providers={"acme": launched("remote_kit:ChattyReference")}, default_provider="acme"
    ) as server:
        pid = remote_of(server).process.pid  # type: ignore[union-attr]
        await until(lambda: any(r.getMessage() == "json line from the provider" for r in caplog.records))
        lines = {r.getMessage(): r for r in caplog.records if r.name == "callqos.provider"}
        plain, structured = lines["plain line from the provider"], lines["json line from the provider"]
        assert (plain.levelno, structured.levelno) == (logging.WARNING, logging.ERROR)  # stderr; its own level
        assert plain.provider == structured.provider == ACME  # type: ignore[attr-defined]
        assert structured.pid == pid and structured.plugin == {"code": 7}  # type: ignore[attr-defined]
        serving = next(r for r in caplog.records if r.getMessage() == "serving" and r.name == "callqos.provider")
        assert serving.plugin["plugin"] == "remote_kit:ChattyReference"  # type: ignore[attr-defined]
    assert not alive(pid), "the provider outlived the server's shutdown"


async def test_killed_during_an_admission(
    gated: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub], caplog: pytest.LogCaptureFixture
) -> None:
    server, stub = gated
    caplog.set_level(logging.INFO)
    remote = remote_of(server)
    kept = await stub.CreateCall(make_request(qos(300_000), call_id="kept"))
    pid = remote.process.pid  # type: ignore[union-attr]
    assert pid is not None
    blocked = asyncio.ensure_future(
        stub.CreateCall(make_request(qos(500_000), destination="sip:block@example.test", call_id="blocked"))
    )
    await until(lambda: any("blocking the admission" in r.getMessage() for r in caplog.records))
    os.kill(pid, signal.SIGKILL)  # it has reserved, and is killed before it answers
    error = await rpc_error(blocked)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
    during = await rpc_error(stub.CreateCall(make_request(qos(1000), call_id="during")))
    assert reason(during) == "PROVIDER_UNAVAILABLE" and retry_delay(during) is not None
    call = await stub.GetCall(svc.GetCallRequest(name="calls/blocked"))
    assert (call.state, call.disconnect_reason) == (
        State.STATE_DISCONNECTED,
        Disconnect.DISCONNECT_REASON_PROVIDER_ERROR,
    )

    await restarted(server, pid)
    assert await assert_agree(stub, remote) == {kept.name: kept.granted_qos}
    assert not alive(pid)
    # The restarted provider holds exactly the kept call: the rest of the link is free again.
    rest = await stub.CreateCall(make_request(qos(CAPACITY - 300_000), call_id="rest"))
    assert rest.state == State.STATE_CONNECTED


async def test_a_hung_provider_fails_calls_in_time_and_is_replaced(
    gated: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    server, stub = gated
    remote = remote_of(server)
    kept = await stub.CreateCall(make_request(qos(300_000), call_id="kept"))
    pid = remote.process.pid  # type: ignore[union-attr]
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung: it accepts nothing, answers nothing
    try:
        started = time.monotonic()
        error = await rpc_error(stub.CreateCall(make_request(qos(1000), call_id="hung")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reason(error) == "PROVIDER_UNAVAILABLE"
        assert time.monotonic() - started < 2.0  # the provider deadline is 1 s
        new_pid = await restarted(server, pid)  # health checks failed: killed and launched again
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert new_pid != pid and not alive(pid)
    assert await assert_agree(stub, remote) == {kept.name: kept.granted_qos}
    assert (await stub.CreateCall(make_request(qos(1000), call_id="after"))).state == State.STATE_CONNECTED


async def test_a_provider_that_exits_again_and_again_comes_back_each_time(
    gated: tuple[testing.InProcessServer, svc_grpc.CallQosServiceStub],
) -> None:
    server, stub = gated
    remote = remote_of(server)
    calls = []
    for round_ in range(3):
        calls.append(await stub.CreateCall(make_request(qos(100_000), call_id=f"c{round_}")))
        pid = remote.process.pid  # type: ignore[union-attr]
        assert pid is not None
        os.kill(pid, signal.SIGTERM if round_ % 2 else signal.SIGKILL)
        await restarted(server, pid)
        assert set(await assert_agree(stub, remote)) == {call.name for call in calls}


@pytest.mark.parametrize(
    ("program", "words"),
    [
        ("import time; time.sleep(30)", "no handshake line within 0.5s"),
        ("print('CALLQOS_PROVIDER|2|unix|/x|grpc', flush=True); import time; time.sleep(30)", "version '2'"),
        ("import sys; sys.exit(3)", "exited with status 3 before its handshake"),
    ],
)
async def test_a_provider_that_does_not_shake_hands_fails_the_start_and_is_not_left_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, program: str, words: str
) -> None:
    caplog.set_level(logging.INFO)
    server = testing.InProcessServer(
        tmp_path,
        providers={
            "acme": {"plugin": "remote", "command": [sys.executable, "-c", program], "start_timeout_seconds": 0.5}
        },
        default_provider="acme",
    )
    with pytest.raises(Exception, match=words):
        await server.start()
    await server.close()
    pids = [r.pid for r in caplog.records if r.getMessage() == "provider process started"]  # type: ignore[attr-defined]
    assert pids and not any(alive(pid) for pid in pids)


async def test_a_start_that_fails_after_the_providers_started_leaves_nothing_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS files that cannot be used are found only when the port is bound, after the providers
    started and the calls were restored: the failed start stops the provider process it launched
    and the server's own tasks (the lease timer among them), not only the store."""
    caplog.set_level(logging.INFO)
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    before = {task for task in asyncio.all_tasks() if not task.done()}
    server = testing.InProcessServer(
        tmp_path,
        providers={"acme": launched("reference")},
        default_provider="acme",
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
    )
    with pytest.raises(OSError):
        await server.start()
    pids = [r.pid for r in caplog.records if r.getMessage() == "provider process started"]  # type: ignore[attr-defined]
    assert pids and not any(alive(pid) for pid in pids)
    await asyncio.sleep(0.1)
    left = {task for task in asyncio.all_tasks() if not task.done()} - before - {asyncio.current_task()}
    assert not left, f"still running after the failed start: {sorted(task.get_name() for task in left)}"
    await server.close()


async def test_a_launched_provider_starts_under_the_start_deadline_not_the_provider_deadline(tmp_path: Path) -> None:
    """Launching a Python process takes longer than a decision may (here 0.3 s): the start has a
    deadline of its own (provider_start_timeout_seconds), and decisions keep theirs."""
    async with (
        testing.InProcessServer(
            tmp_path,
            providers={"acme": launched("remote_kit:GatedReference")},
            default_provider="acme",
            provider_timeout_seconds=0.3,
        ) as server,
        grpc.aio.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        assert (await stub.CreateCall(make_request(qos(1000)))).state == State.STATE_CONNECTED
        slow = await rpc_error(stub.CreateCall(make_request(qos(1000), destination="sip:slow@example.test")))
        assert reason(slow) == "PROVIDER_UNAVAILABLE"  # 2 s to decide: past the provider deadline


async def test_the_start_deadline_ends_a_start_that_would_take_longer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that never shakes hands, with a 10 s start timeout per attempt: the start
    deadline (2 s) ends the attempts, the server does not start, and says why."""
    caplog.set_level(logging.INFO)
    program = [sys.executable, "-c", "import time; time.sleep(30)"]
    server = testing.InProcessServer(
        tmp_path,
        providers={
            "acme": {"plugin": "remote", "command": program, "start_timeout_seconds": 10, "stop_grace_seconds": 0.5}
        },
        default_provider="acme",
        provider_start_timeout_seconds=2.0,
    )
    started = time.monotonic()
    with pytest.raises(Exception, match=r"provider acme could not start: .*not reached at start-up: not connected yet"):
        await server.start()
    assert time.monotonic() - started < 6  # one start (no calls to retry without), within its deadline
    await server.close()
    pids = [r.pid for r in caplog.records if r.getMessage() == "provider process started"]  # type: ignore[attr-defined]
    assert pids and not any(alive(pid) for pid in pids)


def _provider_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("message") == "provider process started":
                return int(entry["pid"])
    raise AssertionError("no provider process in the server log")


@pytest.mark.slow
def test_a_provider_does_not_outlive_a_killed_server_and_is_restored_by_the_next(tmp_path: Path) -> None:
    """kill -9 of the server: its provider sees its stdin close and exits; the server started
    again on the same database launches a new one and restores every connected call into it."""
    process = testing.ServerProcess(
        tmp_path,
        storage="sqlite",
        log_level="info",
        providers={"acme": launched("reference")},
        default_provider="acme",
    )
    with process:
        with grpc.insecure_channel(process.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            made = [stub.CreateCall(make_request(qos(400_000), call_id=f"c{i}")) for i in range(3)]
        first = _provider_pid(process.log_path)
        process.kill()
        deadline = time.monotonic() + 10
        while alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first), "the provider outlived its server"
        process.log_path.write_text("")
        process.start()
        assert _provider_pid(process.log_path) != first
        with grpc.insecure_channel(process.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            (link,) = stub.ListLinks(svc.ListLinksRequest(parent=ACME)).links
            assert link.sending_reserved_bytes_per_second == 3 * 400_000  # all three re-taken
            with pytest.raises(grpc.RpcError) as full:
                stub.CreateCall(make_request(qos(100_000)))
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert {c.name for c in made} == {
                c.name for c in stub.ListCalls(svc.ListCallsRequest(filter="state = CONNECTED")).calls
            }
