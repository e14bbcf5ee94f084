"""`--provider`: a callqos server hosting one provider, as the default, on a free loopback port with
memory storage, started and stopped by `callqos.server.testing`. It runs in a process of its own,
so a provider that hangs or crashes cannot take the suite down with it; its output goes to
`server.log` in the output directory, when there is one.

`--provider-command` / `--provider-endpoint`: the same server, hosting a provider in another
process (any language, `callqos.provider.v1`) as its `remote` provider: launched by the server
from the command, or dialled at the endpoint.

Only these modes need the server installed; `--target HOST:PORT` certifies any running server."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callqos.conformance.model import RunOptions
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


def hosted_provider(options: RunOptions) -> tuple[str, dict[str, Any]]:
    """The plugin and settings table the spawned server hosts for `options`: the --provider plugin
    with its settings, or a `remote` provider (whose settings table --provider-settings extends:
    `env`, `tls`, timeouts) launching --provider-command or dialling --provider-endpoint."""
    if options.provider_command:
        program, *arguments = options.provider_command
        if "/" in program:  # relative to where the suite runs, not to the spawned server's directory
            program = os.path.abspath(program)  # not resolve(): a venv's python is a symlink
        return "remote", {**options.provider_settings, "command": [program, *arguments]}
    if options.provider_endpoint:
        return "remote", {**options.provider_settings, "endpoint": options.provider_endpoint}
    if not options.provider:
        raise TargetError("no provider to host")
    return options.provider, options.provider_settings


def provider_id_for(plugin: str) -> str:
    """The {provider} id the hosted provider gets: the entry-point name when it is a valid id."""
    return plugin if _PROVIDER_ID.fullmatch(plugin) else "sut"


class SpawnedServer:
    """The server of `--provider PLUGIN`: `plugin` (an entry-point name or module:Class) with its
    `settings`, under `provider_timeout` seconds per provider call."""

    def __init__(
        self,
        plugin: str,
        settings: dict[str, Any] | None = None,
        provider_timeout: float = 2.0,
        log_dir: Path | None = None,
    ) -> None:
        self.plugin = plugin
        self.settings = settings or {}
        self.provider_timeout = provider_timeout
        self.log_dir = log_dir
        self._process: ServerProcess | None = None

    @property
    def target(self) -> str:
        if self._process is None:
            raise TargetError("the server is not started")
        return self._process.target

    @property
    def provider_name(self) -> str:
        return f"providers/{provider_id_for(self.plugin)}"

    def start(self, wait_seconds: float = 20.0) -> SpawnedServer:
        require_server()
        from callqos.server import testing
        from callqos.server.config import ConfigError

        pid = provider_id_for(self.plugin)
        try:
            self._process = testing.ServerProcess(
                providers={pid: {**self.settings, "plugin": self.plugin}},
                default_provider=pid,
                provider_timeout_seconds=self.provider_timeout,
                log_level="warning",
                log_path=None if self.log_dir is None else self.log_dir / "server.log",
                startup_timeout=wait_seconds,
            )
            self._process.start()
        except (testing.ServerError, ConfigError, TypeError, ValueError) as error:
            self.stop()
            raise TargetError(f"the server hosting {self.plugin!r} did not start: {error}") from error
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        from callqos.server.testing import ServerError

        try:
            if process.running:
                process.stop(timeout=10.0)
        except ServerError:
            pass  # killed after the timeout: the report is about the provider's answers, not its server's exit
        finally:
            process.close()

    def __enter__(self) -> SpawnedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
