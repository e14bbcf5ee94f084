"""`callqos.server.testing`: what a test, a benchmark or the conformance suite relies on when it
starts a server — the settings it asked for and nothing from the caller's environment, its data
and port across restarts, its output, and a clear error when it cannot start."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from server_testkit import make_request, qos

from callqos.server import testing
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


def _stub(channel: grpc.Channel) -> svc_grpc.CallQosServiceStub:
    return svc_grpc.CallQosServiceStub(channel)


def test_a_subprocess_serves_the_settings_given_and_none_of_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALLQOS_DEFAULT_PROVIDER", "no-qos")  # would win over the file, if it leaked
    links = [{"id": "default", "capacity_bytes_per_second": 5000}]
    with (
        testing.ServerProcess(tmp_path, providers={"reference": {"links": links}, "no-qos": {}}) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        providers = _stub(channel).ListProviders(svc.ListProvidersRequest(), timeout=10).providers
        assert [p.name for p in providers if p.default] == ["providers/reference"]
        (link,) = _stub(channel).ListLinks(svc.ListLinksRequest(parent="providers/reference"), timeout=10).links
        assert link.capacity_bytes_per_second == 5000


def test_kill_and_restart_keep_the_data_on_the_same_port_or_a_new_one(tmp_path: Path) -> None:
    with testing.ServerProcess(tmp_path, storage="sqlite") as server:
        with grpc.insecure_channel(server.target) as channel:
            call = _stub(channel).CreateCall(make_request(qos(1000)), timeout=10)
        port = server.port
        assert server.kill() == -9
        server.start()
        assert server.port == port
        assert server.restart(new_port=True).stop() == 0  # SIGTERM: a clean exit
        server.start()  # where the last start listened
        with grpc.insecure_channel(server.target) as channel:
            assert _stub(channel).GetCall(svc.GetCallRequest(name=call.name), timeout=10) == call
    assert not server.running


def test_the_environment_given_reaches_the_server_and_its_output_the_log(tmp_path: Path) -> None:
    with testing.ServerProcess(tmp_path, env={"OTEL_TRACES_EXPORTER": "console"}) as server:
        with grpc.insecure_channel(server.target) as channel:
            _stub(channel).ListProviders(svc.ListProvidersRequest(), timeout=10)
        assert server.stop() == 0  # the console exporter flushes at shutdown
    assert '"name": "callqos.v1.CallQosService/ListProviders"' in server.log()


def test_a_server_that_cannot_start_is_an_error_showing_its_log(tmp_path: Path) -> None:
    server = testing.ServerProcess(tmp_path, providers={"missing": {}}, default_provider="missing")
    with pytest.raises(testing.ServerError, match="no provider 'missing'"):
        server.start()
    assert not server.running


def test_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown server setting"):
        testing.ServerProcess(tmp_path, max_watcher=1)
    with pytest.raises(TypeError, match="cannot be a NoneType"):
        testing.ServerProcess(tmp_path, providers={"reference": {"links": None}})


async def test_in_process_restart_serves_the_same_data_on_the_same_port() -> None:
    async with testing.InProcessServer(storage="sqlite") as server:
        directory = server.directory
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = await _stub(channel).CreateCall(make_request(qos(1000)))
        port = server.port
        await server.restart()
        assert server.port == port
        async with grpc.aio.insecure_channel(server.target) as channel:
            assert await _stub(channel).GetCall(svc.GetCallRequest(name=call.name)) == call
    assert not directory.exists()  # a temporary directory of its own, removed at the end
