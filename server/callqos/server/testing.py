"""Start a real callqos server for tests, benchmarks and the conformance suite.

One way to get a server that listens on a free loopback port, keeps its data in a directory of
its own, and is serving (grpc.health.v1 SERVING) before the caller's first RPC:

- `InProcessServer`: `app.start` on the caller's event loop (async). The caller can reach into
  the running server (`server.running.hub`, `.calls`, ...) and hand it its own telemetry.
- `ServerProcess`: `python -m callqos.server` as a subprocess (sync, or `async with`), for what
  needs a process boundary: SIGKILL and SIGTERM, a restart on the same data directory, an
  `OTEL_*` environment, a benchmark measuring the server's CPU, a provider under test that may
  hang or crash without taking the caller with it.

Both take the server's settings as keyword arguments named like its configuration keys
(`storage="sqlite"`, `providers={...}`, `event_retention_count=2`), on top of the defaults of
`server_config`: listen on 127.0.0.1:0, so the kernel picks a free port that the server reports
(never a guessed one); in-memory storage; a one-second shutdown grace.

    async with InProcessServer(tmp_path, max_watchers=1) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            ...

    with ServerProcess(tmp_path, storage="sqlite", env={"OTEL_TRACES_EXPORTER": "console"}) as server:
        ...
        server.kill()        # SIGKILL: whatever was not durable is lost
        server.start()       # the same data directory and port: clients reconnect to the same target
        print(server.log())  # the server's output, to show when a test fails

Without a directory, each makes a temporary one and removes it when closed.

For PostgreSQL storage, `PostgresServer` runs a throwaway PostgreSQL cluster (initdb and pg_ctl
on a temporary directory and a free loopback port; as the `postgres` user when run as root,
which PostgreSQL refuses to run as), and `database()` makes an empty database in it:

    with PostgresServer() as postgres:
        url = postgres.database()
        replicas = [ServerProcess(storage="postgresql", database_url=url).start() for _ in range(3)]

An `InProcessServer` given `lease_clock=ManualClock()` times call leases by that clock, which only
moves when the test says (`clock.advance(seconds)`; then `server.running.calls.leases.expire_overdue()`
does what the lease timer would): lease tests explore time without waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callqos.server import app
from callqos.server import config as config_module
from callqos.server.config import Config
from callqos.server.telemetry import Telemetry

__all__ = [
    "SERVER_PROGRAM",
    "InProcessServer",
    "ManualClock",
    "PostgresServer",
    "PostgresUnavailable",
    "ServerError",
    "ServerProcess",
    "server_config",
]

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 20.0
# The shipped server command, so that tests go through its flags, its configuration loading and
# its signal handling exactly as an operator's server does.
SERVER_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "callqos.server")
_POLL_SECONDS = 0.05
_LOG_TAIL_CHARS = 6000


class ServerError(RuntimeError):
    """A test server did not start, or did not stop when told to. The message ends with the tail
    of the server's log."""


def server_config(data_dir: Path, **settings: Any) -> Config:
    """The configuration of a test server: the embedded defaults, except that it listens on
    127.0.0.1:0 (a free port), keeps its calls in memory (`storage="sqlite"` for a database under
    `data_dir`) and shuts down within a second. `settings` replace any setting by its name in
    `callqos.server.config.Config`; the result is validated as the server would."""
    fields = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"unknown server setting(s): {', '.join(unknown)}")
    defaults = Config(listen=f"{LOOPBACK}:0", data_dir=data_dir, storage="memory", shutdown_grace_seconds=1.0)
    config = dataclasses.replace(defaults, **settings)
    config.validate()
    return config


def _directory(directory: Path | None) -> tuple[Path, bool]:
    """(the directory to use, whether it is ours to remove)."""
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="callqos-server-")), True
    directory.mkdir(parents=True, exist_ok=True)
    return directory, False


def _remove(directory: Path, owned: bool) -> None:
    if owned:
        shutil.rmtree(directory, ignore_errors=True)


class ManualClock:
    """A clock for call leases (`leases.Clock`) that moves only when told: nanoseconds since the
    epoch, starting at the real time it was made."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)


class InProcessServer:
    """A server on the caller's event loop, started with `app.start` (as `serve` does, minus the
    signal handlers). `start()` returns once the server is SERVING; `stop()` is the graceful
    shutdown; `start()` again serves the same data directory on the same port.

    `telemetry` is handed to the server (and not shut down by it); without it the server reads
    the `OTEL_*` variables of this process. For another environment, use a `ServerProcess`."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        telemetry: Telemetry | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        lease_clock: ManualClock | None = None,
        **settings: Any,
    ) -> None:
        self.directory, self._owns_directory = _directory(directory)
        try:
            self.config = server_config(self.directory / "data", **settings)
        except BaseException:
            _remove(self.directory, self._owns_directory)
            raise
        self.telemetry = telemetry
        self.interceptors = list(interceptors)
        self.lease_clock = lease_clock
        self.port = 0
        self._running: app.Running | None = None

    @property
    def target(self) -> str:
        """HOST:PORT to dial."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> app.Running:
        """The started server's parts (store, hub, calls, providers, health, ...)."""
        if self._running is None:
            raise RuntimeError("the server is not running: start() it first")
        return self._running

    async def start(self) -> Self:
        if self._running is not None:
            raise RuntimeError("the server is already running")
        config = dataclasses.replace(self.config, listen=f"{LOOPBACK}:{self.port}")
        self._running = await app.start(config, self.interceptors, self.telemetry, self.lease_clock)
        self.port = self._running.port
        return self

    async def stop(self) -> None:
        """Graceful shutdown: watchers ended, in-flight RPCs drained, the store closed."""
        running, self._running = self._running, None
        if running is not None:
            await running.stop()

    async def restart(self, *, new_port: bool = False) -> Self:
        """Stop, then serve the same data directory again, on the same port unless `new_port`."""
        await self.stop()
        if new_port:
            self.port = 0
        return await self.start()

    async def close(self) -> None:
        """Stop, and remove the directory if it is a temporary one made here."""
        try:
            await self.stop()
        finally:
            _remove(self.directory, self._owns_directory)

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


class ServerProcess:
    """A server in a subprocess, with its output in `log_path`.

    The program is started as `PROGRAM --listen 127.0.0.1:PORT --port-file FILE`, with every
    other setting in a TOML file named by `CALLQOS_CONFIG` in its environment (where the
    caller's own `CALLQOS_*` variables are removed, so the server serves exactly the settings
    asked for). `start()` returns once the program has written its port to FILE and, with
    `health_check`, answers grpc.health.v1 Check with SERVING.

    `program` is `python -m callqos.server` unless given: a benchmark's own server (which takes
    the same flags and `CALLQOS_CONFIG`), or, with `health_check=False`, any gRPC program that
    takes `--listen` and `--port-file` (a proxy, a baseline echo server). `env` is added to the
    environment (`OTEL_*`, ...). `log_path` defaults to `server.log` in the directory; each start
    appends to it under a line naming the command. A server with TLS (`tls_cert=...`) is
    health-checked over a channel with `credentials` (the test CA, and a client certificate when
    the server requires one).

    Use it as a context manager (`with`, or `async with`, which starts and stops it in a worker
    thread), or call `start()` and `close()`; in async code, `await asyncio.to_thread(server.stop)`.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        program: Sequence[str] = SERVER_PROGRAM,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        health_check: bool = True,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
        **settings: Any,
    ) -> None:
        self.directory, self._owns_directory = _directory(directory)
        self.config_path = self.directory / "server.toml"
        self.credentials = credentials
        try:
            self.config = server_config(self.directory / "data", **settings)
            _write_config(self.config, self.config_path)
        except BaseException:
            _remove(self.directory, self._owns_directory)
            raise
        self.program = list(program)
        self.log_path = log_path or self.directory / "server.log"
        self.port_file = self.directory / "port"
        self.health_check = health_check
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(config_module.ENV_PREFIX)}
        self.env = {
            **inherited,
            "PYTHONUNBUFFERED": "1",  # the log shows everything up to a SIGKILL
            "CALLQOS_CONFIG": str(self.config_path),
            **(env or {}),
        }

    @property
    def target(self) -> str:
        """HOST:PORT to dial (the port of the latest start)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> Self:
        """Start the program and wait until it serves. The first start takes a free port; a
        later one the same port again (see `restart` for a new one)."""
        if self.running:
            raise RuntimeError("the server is already running")
        self.port_file.unlink(missing_ok=True)  # left behind by a SIGKILL
        command = [*self.program, "--listen", f"{LOOPBACK}:{self.port}", "--port-file", str(self.port_file)]
        self._starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start #{self._starts}: {shlex.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self.env,
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self.port = self._wait_for_port(deadline)
            if self.health_check:
                self._wait_until_serving(deadline)
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM (the graceful shutdown) and wait for the exit status (0 for a clean stop; a
        program that had already exited gives its own). A program still running after `timeout`
        is killed, and ServerError raised."""
        process = self._started()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired as slow:
                process.kill()
                process.wait()
                message = f"{self._name} did not stop within {timeout:g}s of SIGTERM (killed)\n{self.log()}"
                raise ServerError(message) from slow
        return process.returncode

    def kill(self) -> int:
        """SIGKILL: no chance to flush anything that is not durable yet. The exit status (-9)."""
        process = self._started()
        if process.poll() is None:
            process.kill()
        return process.wait()

    def restart(self, *, kill: bool = False, new_port: bool = False) -> Self:
        """Stop (or `kill`), then start again on the same data directory, on the same port
        unless `new_port`."""
        if kill:
            self.kill()
        else:
            self.stop()
        if new_port:
            self.port = 0
        return self.start()

    def close(self) -> None:
        """Stop if running, and remove the directory if it is a temporary one made here."""
        try:
            if self.running:
                self.stop()
        finally:
            _remove(self.directory, self._owns_directory)

    def log(self, tail: int = _LOG_TAIL_CHARS) -> str:
        """The last `tail` characters of the program's output, over all its starts."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    @property
    def _name(self) -> str:
        return shlex.join(Path(part).name if index == 0 else part for index, part in enumerate(self.program))

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the server was never started")
        return self._process

    def _wait_for_port(self, deadline: float) -> int:
        process = self._started()
        while True:
            if process.poll() is not None:
                raise ServerError(f"{self._name} exited with status {process.returncode} before serving\n{self.log()}")
            try:
                text = self.port_file.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text.isdigit() and int(text) > 0:
                return int(text)
            if time.monotonic() > deadline:
                raise ServerError(f"{self._name} wrote no port within {self.startup_timeout:g}s\n{self.log()}")
            time.sleep(_POLL_SECONDS)

    def _wait_until_serving(self, deadline: float) -> None:
        """Health Check over a real connection, until SERVING: the port file says the socket is
        bound, this says the server answers on it."""
        process = self._started()
        last = "no answer"
        channel = (
            grpc.insecure_channel(self.target)
            if self.credentials is None
            else grpc.secure_channel(self.target, self.credentials)
        )
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    answer = health.Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=max(0.1, min(1.0, deadline - time.monotonic())),
                        wait_for_ready=True,
                    )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.RpcError as error:
                    last = f"{error.code().name}: {error.details()}"
                if process.poll() is not None:
                    raise ServerError(f"{self._name} exited with status {process.returncode}\n{self.log()}")
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self._name} not SERVING within {self.startup_timeout:g}s ({last})\n{self.log()}"
                    )
                time.sleep(_POLL_SECONDS)


def _write_config(config: Config, path: Path) -> None:
    """`config` as the TOML file the server loads: every setting but the two its command line
    carries (listen and port_file, which change between starts). Read back the way the server
    reads it, so a setting TOML cannot carry fails here rather than in the server."""
    lines = [
        f"{field.name} = {_toml_value(getattr(config, field.name))}"
        for field in dataclasses.fields(config)
        if field.name not in ("listen", "port_file") and getattr(config, field.name) is not None
    ]
    path.write_text("\n".join(lines) + "\n")
    loaded = config_module.load(path, env={}, flags={"listen": config.listen, "port_file": config.port_file})
    if loaded != config:
        raise ValueError(f"the server would read {path} as {loaded!r}, not {config!r}")


def _toml_value(value: Any) -> str:
    """A TOML value on one line (tables inline): the server's settings are small."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise TypeError(f"a server setting cannot be a {type(value).__name__}: {value!r}")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server programs (initdb, pg_ctl) are not installed, or cannot be run here."""


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: $CALLQOS_POSTGRES_BIN, the PATH, or the newest
    /usr/lib/postgresql/N/bin (Debian's layout); None when PostgreSQL is not installed."""
    candidates = [os.environ.get("CALLQOS_POSTGRES_BIN", "")]
    found = shutil.which("initdb")
    candidates.append(str(Path(found).resolve().parent) if found else "")
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
    for candidate in [*candidates, *versions]:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, for tests and benchmarks.

    `start()` runs initdb (trust authentication for the `postgres` role, UTF-8) on a directory of
    its own and `pg_ctl start`s the server with fsync off (nothing here needs to survive a crash
    of PostgreSQL itself; the servers under test are the ones killed) — unless `durable`, for a
    benchmark that must pay for commits as production does (fsync and synchronous commit on).
    Run as root, the programs run as the `postgres` user, who owns the directory. `database()`
    creates an empty database and returns its URL. `stop()` stops the cluster and removes the
    directory; `postmaster_pid` is its main process (a benchmark measures the CPU of its tree)."""

    def __init__(self, *, max_connections: int = 300, durable: bool = False) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable("PostgreSQL is not installed (no initdb): apt-get install postgresql")
        self.bin_dir = bin_dir
        self.max_connections = max_connections
        self.durable = durable
        self.port = 0
        self.directory: Path | None = None
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, but runuser (to run PostgreSQL as postgres) is missing")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def data_dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the PostgreSQL server was never started")
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.bin_dir / command[0]), *command[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"{command[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self) -> Self:
        self.directory = Path(tempfile.mkdtemp(prefix="callqos-postgres-"))
        if self._as_user:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "-N")
        for attempt in range(5):
            with socket.socket() as probe:
                probe.bind((LOOPBACK, 0))
                self.port = probe.getsockname()[1]
            options = (
                f"-p {self.port} -c listen_addresses={LOOPBACK} -c unix_socket_directories={self.directory} "
                f"-c max_connections={self.max_connections}"
            )
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                )
                return self
            except PostgresUnavailable:
                if attempt == 4:
                    raise PostgresUnavailable(f"PostgreSQL did not start:\n{self.log()}") from None
        return self

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    def log(self, tail: int = _LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except (FileNotFoundError, RuntimeError, AssertionError):
            return ""

    @property
    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def database(self, name: str | None = None) -> str:
        """Create an empty database (named `name`, or test_N) and return its URL."""
        import psycopg  # the [postgresql] extra: only what uses PostgreSQL needs it

        name = name or f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        if self.directory is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data_dir))
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
