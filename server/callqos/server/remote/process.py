"""The life of a provider the host launches (`command = [...]`): start it, read its handshake,
forward its output into the server's log, notice when it exits, stop it.

The host owns the process: it starts it in a session of its own (a signal meant for the server,
such as Ctrl-C in a terminal, is not delivered to the provider as well), gives it a socket path
in a private directory (mode 0700, removed at stop), and a pipe on stdin that closes when the
server dies, however it dies, so a provider never outlives its host. Restarting with backoff is
`RemoteProvider`'s loop; this class runs one process at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from callqos.server.remote import protocol

log = logging.getLogger("callqos.server.remote")
# A provider's own log lines go to this logger, one record per line it writes.
plugin_log = logging.getLogger("callqos.provider")

LINE_LIMIT = 1 << 20  # a longer output line is cut, not a reason to lose the provider
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


class PluginStartError(Exception):
    """The provider process did not start, or printed no usable handshake in time."""


class PluginProcess:
    """One run of a provider's command."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        provider: str,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 2.0,
    ) -> None:
        self.command = list(command)
        self.provider = provider  # `providers/{provider}`, on every log line it forwards
        self.extra_env = dict(env or {})
        self.stop_grace = stop_grace
        self.handshake: protocol.Handshake | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._directory: Path | None = None
        self._forwarders: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self, timeout: float) -> protocol.Handshake:
        """Start the command and wait for its handshake line (PluginStartError if it exits or
        prints none within `timeout` seconds; the process is then stopped)."""
        self._directory = Path(tempfile.mkdtemp(prefix="callqos-provider-"))  # 0700
        socket = self._directory / "provider.sock"
        env = {
            **os.environ,
            **self.extra_env,
            protocol.MAGIC_COOKIE_ENV: protocol.MAGIC_COOKIE,
            protocol.PROTOCOL_VERSIONS_ENV: str(protocol.PROTOCOL_VERSION),
            protocol.SOCKET_ENV: str(socket),
        }
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            self._remove_directory()
            raise PluginStartError(f"cannot run {self.command[0]!r}: {exc}") from exc
        assert self._process.stdout is not None and self._process.stderr is not None
        log.info("provider process started", extra={"provider": self.provider, "pid": self._process.pid})
        self._forwarders.append(asyncio.create_task(self._forward(self._process.stderr, "stderr")))
        try:
            self.handshake = await asyncio.wait_for(self._read_handshake(self._process.stdout), timeout)
        except TimeoutError:
            await self.stop()
            raise PluginStartError(f"no handshake line within {timeout:g}s") from None
        except (PluginStartError, protocol.HandshakeError) as exc:
            await self.stop()
            raise PluginStartError(str(exc)) from exc
        self._forwarders.append(asyncio.create_task(self._forward(self._process.stdout, "stdout")))
        return self.handshake

    async def _read_handshake(self, stdout: asyncio.StreamReader) -> protocol.Handshake:
        """The first line that starts with the magic; anything before it is logged, not parsed."""
        while True:
            line = await _readline(stdout)
            if line is None:
                status = await self.wait()
                raise PluginStartError(f"exited with status {status} before its handshake")
            if line.startswith(protocol.MAGIC + "|"):
                return protocol.Handshake.parse(line)
            self._log_line(line, "stdout")

    async def wait(self) -> int:
        """Until the process exits: its status (negative: killed by that signal)."""
        if self._process is None:
            return 0
        return await self._process.wait()

    async def stop(self) -> None:
        """Close its stdin and SIGTERM it; SIGKILL after the grace period (or at once if this is
        cancelled). Then stop forwarding its output and remove its directory. Harmless twice."""
        process = self._process
        try:
            if process is not None and process.returncode is None:
                if process.stdin is not None:
                    process.stdin.close()
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), self.stop_grace)
                except TimeoutError:
                    log.warning("provider process ignored SIGTERM: killed", extra={"provider": self.provider})
        finally:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(process.wait())
            for task in self._forwarders:
                task.cancel()
            self._forwarders.clear()
            self._remove_directory()

    def kill(self) -> None:
        """SIGKILL (a provider that stopped answering)."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    # -- the provider's output --------------------------------------------------------------
    async def _forward(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            line = await _readline(stream)
            if line is None:
                return
            self._log_line(line, name)

    def _log_line(self, line: str, stream: str) -> None:
        """One line the provider wrote, as one record of the server's JSON log: a JSON object's
        level and message are used, its other fields kept under `plugin`; any other line is the
        message itself, at WARNING from stderr (where a crash's traceback goes), else at INFO."""
        if not line.strip():
            return
        level, message, fields = logging.WARNING if stream == "stderr" else logging.INFO, line, {}
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                fields = parsed
                level = _LEVELS.get(str(fields.pop("level", "info")).lower(), logging.INFO)
                message = str(fields.pop("message", fields.pop("msg", "")))
        extra: dict[str, object] = {"provider": self.provider, "pid": self.pid, "stream": stream}
        if fields:
            extra["plugin"] = fields
        plugin_log.log(level, message, extra=extra)


async def _readline(stream: asyncio.StreamReader) -> str | None:
    """The next line without its newline; None at end of file. An overlong line is cut."""
    try:
        raw = await stream.readline()
    except ValueError:  # longer than LINE_LIMIT: the reader drops what it buffered
        return "[line too long, cut]"
    if not raw:
        return None
    return raw.decode(errors="replace").rstrip("\r\n")
