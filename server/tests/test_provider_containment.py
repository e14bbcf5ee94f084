"""A provider can fail one call, never the server (`callqos.server.containment`): whatever it
raises — SystemExit, KeyboardInterrupt, its own CancelledError — or answers, its caller gets
PROVIDER_UNAVAILABLE or PROVIDER_CONTRACT_VIOLATION and the server keeps serving; a provider that
ignores cancellation is abandoned, frees its call and does not keep SIGTERM from stopping the
server; a provider that blocks the event loop is named in the log, and `threaded = true` takes its
blocking off the loop. Each provider is in `misbehaving.py`; servers run as subprocesses, so that a
provider that did take the process down would show as exactly that."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testkit import details, make_request, owner, qos, reason

from callqos.server import testing
from callqos.v1 import call_pb2, line_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": str(HERE)}

CONTAINED = {
    # provider id: (class in misbehaving.py, gRPC code, ErrorInfo.reason)
    "exits": ("ExitingAdmit", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    "interrupts": ("InterruptingAdmit", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    "cancels": ("CancellingAdmit", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    "none": ("NoneAdmit", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
    "garbage": ("GarbageAdmit", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
    "garbage-grant": ("GrantOfGarbage", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
    "sync": ("SyncAdmit", grpc.StatusCode.INTERNAL, "PROVIDER_CONTRACT_VIOLATION"),
    "exits-at-once": ("ExitingAtOnceAdmit", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
}


def plugin(name: str, **settings: Any) -> dict[str, Any]:
    return {"plugin": f"misbehaving:{name}", **settings}


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_every_escape_of_a_provider_becomes_a_status(tmp_path: Path) -> None:
    """SystemExit, KeyboardInterrupt and a CancelledError nobody asked for become
    PROVIDER_UNAVAILABLE; None, a string, a Grant of a string and a synchronous admit become
    PROVIDER_CONTRACT_VIOLATION — never UNKNOWN, never INTERNAL / INTERNAL, never an exit. Each
    failed call is recorded as such, and the server serves on."""
    providers = {"reference": {}, **{pid: plugin(cls) for pid, (cls, _, _) in CONTAINED.items()}}
    with (
        testing.ServerProcess(tmp_path, env=ENV, providers=providers) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        for provider_id, (_, code, expected) in CONTAINED.items():
            request = make_request(qos(1000), provider=f"providers/{provider_id}", call_id=f"via-{provider_id}")
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateCall(request, timeout=10)
            assert (raised.value.code(), reason(raised.value)) == (code, expected), (provider_id, raised.value)
            assert time.monotonic() - started < 5, provider_id  # answered, not left to the deadline
            assert details(raised.value)["ErrorInfo"].metadata["provider"] == f"providers/{provider_id}"
            failed = stub.GetCall(svc.GetCallRequest(name=f"calls/via-{provider_id}"), timeout=5)
            assert failed.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_PROVIDER_ERROR
            assert server.running and serving(server.target), f"{provider_id} took the server down"
        good = stub.CreateCall(make_request(qos(1000)), timeout=5)
        assert good.state == call_pb2.Call.State.STATE_CONNECTED


def test_an_answer_is_contained_like_a_new_call(tmp_path: Path) -> None:
    """A call between two applications reaches its provider only when it is answered (PROV-13):
    that admit is contained too. The answer gets the status a CreateCall would, both legs end
    PROVIDER_ERROR, and the server serves on."""
    answered_by = ("exits", "sync", "exits-at-once")
    providers = {"reference": {}, **{pid: plugin(CONTAINED[pid][0]) for pid in answered_by}}
    bob, carol = owner("bob"), owner("carol")
    with (
        testing.ServerProcess(tmp_path, env=ENV, providers=providers) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        for provider_id in answered_by:
            _, code, expected = CONTAINED[provider_id]
            address = f"sip:bob-{provider_id}@example.test"
            stub.CreateLine(svc.CreateLineRequest(line=line_pb2.Line(address=address)), metadata=bob, timeout=5)
            request = make_request(qos(1000), destination=address, provider=f"providers/{provider_id}")
            caller = stub.CreateCall(request, metadata=carol, timeout=5)
            assert caller.state == call_pb2.Call.State.STATE_RINGBACK, "an offer asks nothing of the provider"
            with pytest.raises(grpc.RpcError) as raised:
                stub.AnswerCall(svc.AnswerCallRequest(name=caller.peer), metadata=bob, timeout=10)
            assert (raised.value.code(), reason(raised.value)) == (code, expected), (provider_id, raised.value)
            for name in (caller.name, caller.peer):
                leg = stub.GetCall(svc.GetCallRequest(name=name), timeout=5)
                assert leg.state == call_pb2.Call.State.STATE_DISCONNECTED
                assert leg.disconnect_reason == call_pb2.DisconnectReason.DISCONNECT_REASON_PROVIDER_ERROR
            assert server.running and serving(server.target), f"{provider_id} took the server down"


def test_a_wedged_admit_fails_its_call_frees_its_key_and_sigterm_still_stops(tmp_path: Path) -> None:
    """An admit that ignores cancellation: its caller gets PROVIDER_UNAVAILABLE (cause wedged)
    after the provider deadline plus the cancel grace; the call is recorded failed and its lock is
    free (reads, drops and a retry with the same request_id answer at once); SIGTERM stops the
    server within shutdown_timeout_seconds (it used to stay up for ever)."""
    settings = {
        "providers": {"reference": {}, "wedged": plugin("WedgedAdmit")},
        "provider_timeout_seconds": 1.0,
        "provider_cancel_grace_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
        "shutdown_timeout_seconds": 4.0,
    }
    with testing.ServerProcess(tmp_path, env=ENV, **settings) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = svc_grpc.CallQosServiceStub(channel)
            request = make_request(qos(1000), provider="providers/wedged", call_id="wedged", request_id="w-1")
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateCall(request, timeout=20)
            assert time.monotonic() - started < 5
            assert reason(raised.value) == "PROVIDER_UNAVAILABLE"
            assert details(raised.value)["ErrorInfo"].metadata["cause"] == "wedged"
            # The key is free: the same request_id replays the failure at once.
            with pytest.raises(grpc.RpcError) as replayed:
                stub.CreateCall(request, timeout=3)
            assert reason(replayed.value) == "PROVIDER_UNAVAILABLE"
            call = stub.GetCall(svc.GetCallRequest(name="calls/wedged"), timeout=3)
            assert call.state == call_pb2.Call.State.STATE_DISCONNECTED
            # A second wedged call while the first is still stuck: the server is still answering.
            with pytest.raises(grpc.RpcError):
                stub.CreateCall(make_request(qos(1000), provider="providers/wedged"), timeout=20)
            assert stub.CreateCall(make_request(qos(1000)), timeout=5).state == call_pb2.Call.State.STATE_CONNECTED
        started = time.monotonic()
        status = server.stop(timeout=15)
        stopped_in = time.monotonic() - started
    assert stopped_in < 4.0 + 2.0, f"SIGTERM took {stopped_in:.1f}s"
    assert status == 0, server.log()
    assert "ignored cancellation" in server.log()


def test_a_renegotiation_granted_after_the_host_gave_up_is_put_back(tmp_path: Path) -> None:
    """A renegotiation that ignores its cancellation fails its caller (PROVIDER_UNAVAILABLE,
    wedged) and the call keeps its QoS; when the provider grants it after all, its reservation is
    put back to what the call holds, within seconds, not at the next periodic reconciliation (an
    hour away here): what callqos says is reserved stays what the provider holds."""
    settings = {
        "providers": {"reference": {}, "late": plugin("LateRenegotiate", late_seconds=1.5)},
        "provider_timeout_seconds": 0.5,
        "provider_cancel_grace_seconds": 0.2,
        "reconcile_interval_seconds": 3600.0,
    }
    with (
        testing.ServerProcess(tmp_path, env=ENV, **settings) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)

        def link() -> tuple[int, int]:
            only = stub.ListLinks(svc.ListLinksRequest(parent="providers/late"), timeout=5).links[0]
            return only.sending_reserved_bytes_per_second, only.receiving_reserved_bytes_per_second

        call = stub.CreateCall(make_request(qos(1000), provider="providers/late"), timeout=5)
        assert link() == (1000, 0)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RenegotiateCall(svc.RenegotiateCallRequest(name=call.name, qos=qos(3000)), timeout=10)
        assert reason(raised.value) == "PROVIDER_UNAVAILABLE"
        kept = stub.GetCall(svc.GetCallRequest(name=call.name), timeout=5)
        assert kept.granted_qos.sending.token_rate_bytes_per_second == 1000
        time.sleep(1.5)  # the provider has granted 3000 by now
        deadline = time.monotonic() + 10
        while link() != (1000, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        now = stub.GetCall(svc.GetCallRequest(name=call.name), timeout=5)
        assert now.state == call_pb2.Call.State.STATE_CONNECTED
        assert (now.granted_qos.sending.token_rate_bytes_per_second, link()) == (1000, (1000, 0)), server.log()
        assert "after it was abandoned: reconciling it" in server.log()  # it did grant, late


@pytest.mark.parametrize(
    ("provider", "status", "said"),
    [
        ("WedgedStop", 0, "1 provider calls that ignored cancellation"),
        ("BlockingStop", 1, "shutdown took longer than 4s"),
    ],
    ids=["stop-ignores-cancellation", "stop-blocks-the-loop"],
)
def test_sigterm_stops_the_server_within_its_deadline_whatever_stop_does(
    tmp_path: Path, provider: str, status: int, said: str
) -> None:
    """A provider whose stop() ignores cancellation (and leaves a worker thread blocked) is
    abandoned and the server exits cleanly; one whose stop() blocks the event loop itself is cut
    by the hard deadline, shutdown_timeout_seconds after SIGTERM (status 1, saying why)."""
    settings = {
        "providers": {"reference": plugin(provider)},
        "provider_timeout_seconds": 1.0,
        "provider_cancel_grace_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
        "shutdown_timeout_seconds": 4.0,
    }
    with testing.ServerProcess(tmp_path, env=ENV, **settings) as server:
        started = time.monotonic()
        exit_status = server.stop(timeout=15)
        stopped_in = time.monotonic() - started
        log = server.log()
    assert stopped_in < 4.0 + 2.0, f"SIGTERM took {stopped_in:.1f}s\n{log}"
    assert exit_status == status and said in log, log


def log_lines(server: testing.ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log(tail=200_000).splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def slowest_health(target: str, during: Any) -> float:
    """Run `during()` in a thread while checking health every 50 ms; the slowest answer."""
    import threading

    worker = threading.Thread(target=during)
    slowest = 0.0
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        worker.start()
        while worker.is_alive():
            started = time.monotonic()
            health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    worker.join()
    return slowest


@pytest.mark.parametrize("threaded", [False, True], ids=["on-the-loop", "threaded"])
def test_a_blocking_provider_is_named_and_threaded_takes_it_off_the_loop(tmp_path: Path, threaded: bool) -> None:
    """A provider that blocks for 2 s in admit: on the event loop it freezes health checks too,
    and the log names it (a blocked-loop warning and an event-loop lag warning, both naming
    `blocky.admit`); with `threaded = true` the server keeps answering while it blocks, and the
    call is still granted."""
    providers = {"reference": {}, "blocky": plugin("BlockingAdmit", block_seconds=2.0, threaded=threaded)}
    with (
        testing.ServerProcess(tmp_path, env=ENV, providers=providers, provider_timeout_seconds=10.0) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = svc_grpc.CallQosServiceStub(channel)
        made: list[call_pb2.Call] = []

        def make() -> None:
            made.append(stub.CreateCall(make_request(qos(1000), provider="providers/blocky"), timeout=20))

        slowest = slowest_health(server.target, make)
        assert made and made[0].state == call_pb2.Call.State.STATE_CONNECTED
        lines = log_lines(server)
    blocked = [line for line in lines if line["message"] == "provider code blocked the event loop"]
    lagged = [line for line in lines if line["message"] == "event loop lagged"]
    if threaded:
        assert slowest < 1.0, f"health waited {slowest:.2f}s behind a threaded provider"
        assert not blocked
    else:
        assert slowest > 1.5, f"health waited only {slowest:.2f}s: did the provider block?"
        assert blocked and blocked[0]["provider_call"] == "blocky.admit" and blocked[0]["blocked_seconds"] >= 1.9
        assert lagged and lagged[0]["running"] == "blocky.admit" and lagged[0]["lag_seconds"] >= 1.5
