"""Fixtures that run the real callqos server as a subprocess on a free loopback port.

``server`` is one in-memory server for the whole session (tests that reserve capacity drop
their calls again); ``server_factory`` starts private servers, e.g. with SQLite under a temp
data dir for kill-and-restart tests.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callqos.client import Client
from callqos.v1 import provider_pb2

STARTUP_TIMEOUT = 30.0
DEFAULT_LINK = "providers/reference/links/default"


class ServerProcess:
    """One ``python -m callqos.server`` subprocess; can be stopped, killed and restarted."""

    def __init__(self, workdir: Path, *, data_dir: Path | None = None, extra: list[str] | None = None):
        self.workdir = workdir
        self.data_dir = data_dir
        self.extra = list(extra or [])
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self._starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (on the previous port, if it ran before) and wait until it serves."""
        assert self.process is None or self.process.poll() is not None, "already running"
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "callqos.server",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--port-file",
            str(port_file),
        ]
        if self.data_dir is None:
            command += ["--storage", "memory"]
        else:
            command += ["--data-dir", str(self.data_dir)]
        command += self.extra
        self._starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 -- the child process holds it
        log.write(f"--- start #{self._starts}: {' '.join(command)}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=_server_env()
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit() and int(text) > 0:
                self.port = int(text)
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not write its port within {STARTUP_TIMEOUT}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful shutdown) and wait."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: no chance to flush anything that is not durable yet."""
        return self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def restart(self, *, kill: bool = False) -> None:
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    # The tests choose storage and ports by flag; stray CALLQOS_* settings must not leak in.
    for key in list(env):
        if key.startswith("CALLQOS_"):
            del env[key]
    return env


def _require_server() -> None:
    if importlib.util.find_spec("callqos.server") is None:
        pytest.skip("callqos.server is not installed (client-only checkout)")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared in-memory server."""
    _require_server()
    proc = ServerProcess(tmp_path_factory.mktemp("callqos-server"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start private servers: ``server_factory(sqlite=True)`` keeps data under tmp_path."""
    _require_server()
    started: list[ServerProcess] = []

    def make(*, sqlite: bool = False, extra: list[str] | None = None) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        data_dir = workdir / "data" if sqlite else None
        proc = ServerProcess(workdir, data_dir=data_dir, extra=extra)
        started.append(proc)
        proc.start()
        return proc

    yield make
    for proc in started:
        if proc.process is not None and proc.process.poll() is None:
            proc.kill()


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
