"""`--provider`: start `python -m callqos.server` hosting one provider on a free loopback port
with memory storage, wait for its port file, and stop it with SIGTERM afterwards.

The server is not a dependency of the suite (certifying a running server with --target needs only
the client stubs); it is the `server` extra, checked for before anything is spawned."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_PROVIDER_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


#: What to install for --provider mode.
SERVER_EXTRA = "callqos-conformance[server]"


class TargetError(Exception):
    """The target could not be started or reached."""


def require_server() -> None:
    """Raise a TargetError naming the extra to install when the callqos server is missing."""
    if importlib.util.find_spec("callqos.server") is None:
        raise TargetError(
            f"--provider hosts the provider in the callqos server, which is not installed: pip install '{SERVER_EXTRA}'"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TargetError(f"cannot write {value!r} into the server configuration")


def provider_id_for(plugin: str) -> str:
    """The {provider} id the hosted provider gets: the entry-point name when it is a valid id."""
    return plugin if _PROVIDER_ID.fullmatch(plugin) else "sut"


def server_config(plugin: str, settings: dict[str, Any], provider_timeout: float) -> str:
    """A TOML server configuration hosting exactly this provider as the default one."""
    pid = provider_id_for(plugin)
    lines = [
        f"default_provider = {_toml_value(pid)}",
        f"provider_timeout_seconds = {provider_timeout!r}",
        "shutdown_grace_seconds = 1.0",
        "",
        f"[providers.{pid}]",
        f"plugin = {_toml_value(plugin)}",
    ]
    tables: list[str] = []
    for key, value in settings.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:  # array of tables, e.g. [[providers.x.links]]
                tables.append(f"\n[[providers.{pid}.{key}]]")
                tables.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


class SpawnedServer:
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
        self._tmp = tempfile.TemporaryDirectory(prefix="callqos-conformance-")
        self.dir = Path(self._tmp.name)
        self.log_path = (log_dir or self.dir) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def provider_name(self) -> str:
        return f"providers/{provider_id_for(self.plugin)}"

    def start(self, wait_seconds: float = 20.0) -> SpawnedServer:
        require_server()
        config = self.dir / "server.toml"
        config.write_text(server_config(self.plugin, self.settings, self.provider_timeout))
        port_file = self.dir / "port"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 -- the child process holds it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "callqos.server",
                "--config",
                str(config),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--storage",
                "memory",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(
                    f"the server hosting {self.plugin!r} exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit():
                self.port = int(text)
                return self
            time.sleep(0.05)
        self.stop()
        raise TargetError(f"the server hosting {self.plugin!r} did not start within {wait_seconds:g}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> SpawnedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
