"""`callqos serve` as a new user meets it: a bad address is one `configuration error:` line and exit
status 2 (no gRPC core log line, no traceback), and `--help` shows every setting with its default
and environment variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callqos.server import config as config_module

SERVE = [sys.executable, "-m", "callqos.cli", "serve", "--storage", "memory"]


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLQOS_")}
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port someone is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def assert_one_clean_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callqos serve: configuration error: "), lines
    for words in expected:
        assert words in lines[0], lines
    assert "Traceback" not in result.stderr and ".cc:" not in result.stderr and not result.stdout


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:99999", ("listen", "port 99999 is out of range")),
        ("127.0.0.1", ("listen must be HOST:PORT",)),
        ("nosuchhost.invalid:5000", ("cannot listen on nosuchhost.invalid:5000",)),
    ],
)
def test_a_bad_listen_address_is_one_clean_line(tmp_path: Path, address: str, expected: tuple[str, ...]) -> None:
    # Allowed to listen beyond loopback without an authenticator (SEC-2), so that what is
    # refused is the address itself.
    result = serve("--listen", address, "--insecure-allow-unauthenticated", cwd=tmp_path)
    assert_one_clean_line(result, *expected)


def test_an_exposed_server_without_authenticator_is_one_clean_line(tmp_path: Path) -> None:
    result = serve("--listen", "0.0.0.0:0", cwd=tmp_path)
    assert_one_clean_line(result, "not a loopback address and no authenticator is configured")


def test_a_port_in_use_is_one_clean_line(tmp_path: Path, busy_port: int) -> None:
    result = serve("--listen", f"127.0.0.1:{busy_port}", cwd=tmp_path)
    assert_one_clean_line(result, f"cannot listen on 127.0.0.1:{busy_port} (listen): address already in use")


def test_a_metrics_port_in_use_is_one_clean_line(tmp_path: Path, busy_port: int) -> None:
    result = serve("--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{busy_port}", cwd=tmp_path)
    assert_one_clean_line(result, "(metrics_listen): address already in use")


def test_a_health_port_in_use_is_one_clean_line(tmp_path: Path, busy_port: int) -> None:
    result = serve("--listen", "127.0.0.1:0", "--health-listen", f"127.0.0.1:{busy_port}", cwd=tmp_path)
    assert_one_clean_line(result, "(health_listen): address already in use")


def test_a_bad_setting_in_the_environment_is_one_clean_line(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLQOS_")}
    env["CALLQOS_MAX_WATCHERS"] = "many"
    result = subprocess.run([*SERVE], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert_one_clean_line(result, "max_watchers")


def test_serve_help_lists_every_setting_with_its_default_and_variable(tmp_path: Path) -> None:
    result = subprocess.run([*SERVE[:4], "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    defaults = config_module.Config()
    for name in config_module.SETTINGS:
        row = next((line for line in text.splitlines() if line.strip().startswith(name + " ")), "")
        assert f"CALLQOS_{name.upper()}" in row, f"{name} missing from the settings table:\n{text}"
        value = getattr(defaults, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert str(value) in row, row
    for variable in ("CALLQOS_CONFIG", "CALLQOS_TARGET", "OTEL_TRACES_EXPORTER", "GRPC_VERBOSITY"):
        assert variable in text
    assert "(default 127.0.0.1:50051; env CALLQOS_LISTEN)" in " ".join(text.split())
