"""Fixtures: a real callqos server on a free loopback port (in this process, or as a subprocess for
kill/restart/signal tests), and a stub talking real gRPC to it. Both come from
`callqos.server.testing`; a failing test's report ends with the subprocess server's log."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import grpc
import pytest
from security_testkit import AuditLines
from server_testkit import ROOT

from callqos.server import app, testing
from callqos.server.config import Config
from callqos.server.testpki import TestIssuer, TestPki
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

# The benchmarks are scripts outside the shipped package; test_bench and test_deploy import them.
sys.path.insert(0, str(ROOT / "server" / "benchmarks"))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A test server's configuration, for tests that start one with `app.start` themselves."""
    return testing.server_config(tmp_path)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[app.Running]:
    async with testing.InProcessServer(tmp_path) as started:
        yield started.running


@pytest.fixture
async def channel(server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> svc_grpc.CallQosServiceStub:
    return svc_grpc.CallQosServiceStub(channel)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[testing.ServerProcess]:
    """`python -m callqos.server` on SQLite under tmp_path, not started yet."""
    process = testing.ServerProcess(tmp_path, storage="sqlite", shutdown_grace_seconds=2.0)
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[testing.PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole run (initdb + pg_ctl on a free port; see
    callqos.server.testing.PostgresServer). Without PostgreSQL installed its tests are skipped,
    unless CALLQOS_REQUIRE_POSTGRES is set (as `make test`, which installs it, sets it)."""
    try:
        server = testing.PostgresServer().start()
    except testing.PostgresUnavailable as exc:
        if os.environ.get("CALLQOS_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL cannot be run here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(postgres: testing.PostgresServer) -> str:
    """An empty database of its own for the test, in the session's PostgreSQL."""
    return postgres.database()


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    """A certificate authority made for the test (see callqos.server.testpki)."""
    return TestPki(tmp_path / "pki")


@pytest.fixture
def issuer(tmp_path: Path) -> TestIssuer:
    """A token issuer made for the test: an ES256 key and its JWKS file."""
    return TestIssuer(tmp_path / "issuer")


@pytest.fixture
def audit_lines() -> Iterator[AuditLines]:
    """What the `callqos.audit` logger records during the test."""
    handler = AuditLines()
    logger = logging.getLogger("callqos.audit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport]:
    """A failed test's report shows the output of the server subprocesses it used (one, or the
    `replicas` of a fixture that started several)."""
    report: pytest.TestReport = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            for process in [value, *getattr(value, "replicas", ())]:
                if isinstance(process, testing.ServerProcess):
                    report.sections.append((f"callqos server log ({process.log_path})", process.log()))
    return report
