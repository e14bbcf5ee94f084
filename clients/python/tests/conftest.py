"""Fixtures that run the real callqos server (`python -m callqos.server`, started by
`callqos.server.testing`) as a subprocess on a free loopback port.

``server`` is one in-memory server for the whole session (tests that reserve capacity drop
their calls again); ``server_factory`` starts private servers, e.g.
``server_factory(storage="sqlite")`` for kill-and-restart tests, with any other server setting
by name (``max_watchers=1``). A failing test's report ends with the log of each server it used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from callqos.client import Client
from callqos.v1 import provider_pb2

if TYPE_CHECKING:
    from callqos.server.testing import ServerProcess

DEFAULT_LINK = "providers/reference/links/default"


def _server_process(directory: Path, **settings: Any) -> ServerProcess:
    """A not yet started server; skips the test where the server is not installed (a client-only
    environment has nothing to test against)."""
    testing = pytest.importorskip("callqos.server.testing", reason="callqos.server is not installed")
    return testing.ServerProcess(directory, **settings)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared in-memory server."""
    with _server_process(tmp_path_factory.mktemp("callqos-server")) as proc:
        yield proc


class ServerFactory:
    """``factory(**settings)`` starts a private server under its own directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[ServerProcess] = []

    def __call__(self, **settings: Any) -> ServerProcess:
        proc = _server_process(self.directory / f"server{len(self.started)}", **settings)
        self.started.append(proc)
        return proc.start()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    yield factory
    for proc in factory.started:
        proc.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport]:
    """A failed test's report shows the output of the servers it used."""
    report: pytest.TestReport = yield
    testing = sys.modules.get("callqos.server.testing")  # imported once any server was started
    if report.failed and testing is not None:
        for value in getattr(item, "funcargs", {}).values():
            for proc in value.started if isinstance(value, ServerFactory) else [value]:
                if isinstance(proc, testing.ServerProcess):
                    report.sections.append((f"callqos server log ({proc.log_path})", proc.log()))
    return report


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, principal="alice", timeout=10.0) as c:
        yield c


def _default_link(client: Client) -> provider_pb2.Link:
    return next(link for link in client.list_links("reference") if link.name == DEFAULT_LINK)


@pytest.fixture
def free_sending() -> Callable[[Client], int]:
    """``free_sending(client)``: bytes/s still free on the default link's sending side."""

    def free(client: Client) -> int:
        link = _default_link(client)
        return link.capacity_bytes_per_second - link.sending_reserved_bytes_per_second

    return free
