"""`--provider`: a callqos server hosting one provider, as the default, on a free loopback port,
started, restarted and stopped by `callqos.server.testing`. It runs in a process of its own, so a
provider that hangs or crashes cannot take the suite down with it.

Because the suite owns this server, it can do what `--target` cannot: restart it (SQLite storage
in a data directory of its own, so calls survive the restart, as they must), start a side server
with other settings, host probe providers next to the provider under test, and read the server's
log, whose failures become findings of the check during which they were written. Its output goes
to `server.log` in the output directory when there is one (otherwise in its temporary directory).

`--provider-command` / `--provider-endpoint`: the same server, hosting a provider in another
process (any language, `callqos.provider.v1`) as its `remote` provider: launched by the server
from the command, or dialled at the endpoint.

Only these modes need the server installed; `--target HOST:PORT` certifies any running server."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callqos.server.testing import ServerProcess

_PROVIDER_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
SERVER_EXTRA = "callqos-conformance[server]"


class TargetError(Exception):
    """The target could not be started or reached."""


def require_server(flag: str = "--provider") -> None:
    """Raise a TargetError naming the extra to install when the callqos server is missing."""
    if importlib.util.find_spec("callqos.server") is None:
        raise TargetError(
            f"{flag} hosts the provider in the callqos server, which is not installed: pip install '{SERVER_EXTRA}'"
        )


def toml_value(value: Any) -> str:
    """A TOML value on one line (tables inline): provider settings are small."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"a provider setting cannot be a {type(value).__name__}")


def provider_id_for(plugin: str) -> str:
    """The {provider} id the hosted provider gets: the entry-point name when it is a valid id."""
    return plugin if _PROVIDER_ID.fullmatch(plugin) else "sut"


class SpawnedServer:
    """The server of `--provider PLUGIN`: `plugin` (an entry-point name or module:Class) with its
    `settings`, under `provider_timeout` seconds per provider call, with SQLite storage in a data
    directory that outlives restarts. `extra_providers` are hosted next to it (the suite's probes);
    `server_settings` are further server settings (a side server's retention, watcher limit)."""

    def __init__(
        self,
        plugin: str,
        settings: dict[str, Any] | None = None,
        provider_timeout: float = 2.0,
        log_dir: Path | None = None,
        *,
        extra_providers: dict[str, dict[str, Any]] | None = None,
        server_settings: dict[str, Any] | None = None,
        log_name: str = "server.log",
    ) -> None:
        self.plugin = plugin
        self.settings = settings or {}
        self.provider_timeout = provider_timeout
        self.log_dir = log_dir
        self.extra_providers = extra_providers or {}
        self.server_settings = server_settings or {}
        self.log_name = log_name
        self._process: ServerProcess | None = None
        self._directory: Path | None = None

    @property
    def target(self) -> str:
        return self._started().target

    @property
    def provider_name(self) -> str:
        return f"providers/{provider_id_for(self.plugin)}"

    @property
    def log_path(self) -> Path:
        """The server's log (JSON lines, warnings and above), appended over every start."""
        return self._started().log_path

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def toml(self) -> str:
        """The server configuration hosting the provider, as a reproduction writes it."""
        pid = provider_id_for(self.plugin)
        lines = [f'default_provider = "{pid}"', 'storage = "sqlite"', "", f"[providers.{pid}]"]
        lines.append(f'plugin = "{self.plugin}"')
        lines += [f"{key} = {toml_value(value)}" for key, value in self.settings.items()]
        return "\n".join(lines) + "\n"

    def start(self, wait_seconds: float = 20.0) -> SpawnedServer:
        require_server()
        from callqos.server import testing
        from callqos.server.config import ConfigError

        pid = provider_id_for(self.plugin)
        self._directory = Path(tempfile.mkdtemp(prefix="callqos-conformance-"))
        try:
            self._process = testing.ServerProcess(
                self._directory,
                providers={pid: {**self.settings, "plugin": self.plugin}, **self.extra_providers},
                default_provider=pid,
                provider_timeout_seconds=self.provider_timeout,
                storage="sqlite",
                log_level="warning",
                log_path=(self.log_dir or self._directory) / self.log_name,
                startup_timeout=wait_seconds,
                **self.server_settings,
            )
            self._process.start()
        except (testing.ServerError, ConfigError, TypeError, ValueError) as error:
            self.stop()
            raise TargetError(f"the server hosting {self.plugin!r} did not start: {error}") from error
        return self

    def restart(self) -> None:
        """SIGTERM and start again on the same data directory and port (a TargetError if it does
        not come back)."""
        from callqos.server.testing import ServerError

        process = self._started()
        try:
            process.restart()
        except ServerError as error:
            raise TargetError(f"the server hosting {self.plugin!r} did not restart: {error}") from error

    def stop(self) -> None:
        process, self._process = self._process, None
        directory, self._directory = self._directory, None
        try:
            if process is not None:
                from callqos.server.testing import ServerError

                try:
                    if process.running:
                        process.stop(timeout=10.0)
                except ServerError:
                    pass  # killed after the timeout: the report is about the provider's answers, not its server's exit
                finally:
                    process.close()
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def _started(self) -> ServerProcess:
        if self._process is None:
            raise TargetError("the server is not started")
        return self._process

    def __enter__(self) -> SpawnedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
