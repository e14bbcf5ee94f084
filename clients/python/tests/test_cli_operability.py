"""The ``callqos`` command as a new user finds it (issue #14): flags named in their errors, each
invalid field said once, no silent renegotiation of nothing, why a call ended, which calls a
capacity cut shed, a watch that says it is reconnecting, shell completion, and the address
convention (CALLQOS_TARGET, else CALLQOS_LISTEN)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callqos.client import Client

Run = Callable[..., subprocess.CompletedProcess[str]]
LINK = "providers/reference/links/default"


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLQOS_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "callqos.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


@pytest.fixture
def cli(server: Any) -> Run:
    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*args, env=_env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL="olga"), check=check)

    return call


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--send-type", "controlled-load", "--send-rate", "-5"], "argument --send-rate: -5 is out of range"),
        (["--send-type", "controlled-load", "--send-rate", "lots"], "argument --send-rate: 'lots' is not a whole"),
        (["--recv-type", "guaranteed", "--recv-latency", "4294967296"], "argument --recv-latency: 4294967296 is out"),
        (["--send-type", "guaranteed", "--send-peak", "-1"], "argument --send-peak: -1 is out of range"),
    ],
)
def test_a_bad_number_names_its_flag(cli: Run, flags: list[str], named: str) -> None:
    result = cli("make", "sip:x@example.com", *flags, check=False)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_each_invalid_field_is_said_once(cli: Run) -> None:
    result = cli(
        "make",
        "sip:x@example.com",
        "--send-type",
        "controlled-load",
        "--send-rate",
        "0",
        "--send-bucket",
        "0",
        check=False,
    )
    assert result.returncode == 13
    for field in ("token_rate_bytes_per_second", "token_bucket_size_bytes"):
        assert result.stderr.count(field) == 1, result.stderr
    assert result.stderr.splitlines()[0] == "error: INVALID_REQUEST (INVALID_ARGUMENT): 2 invalid fields"


def test_renegotiate_without_anything_to_change_is_refused_before_sending(cli: Run, server: Any) -> None:
    name = json.loads(cli("make", "sip:same@example.com", "--json").stdout)["name"]
    with Client(server.target) as client:
        before = client.event_cursor()
        result = cli("renegotiate", name, check=False)
        assert result.returncode == 2 and "nothing to renegotiate" in result.stderr
        assert client.event_cursor() == before  # no QOS_CHANGED with identical QoS
    cli("drop", name)


def test_list_shows_why_a_call_ended(cli: Run) -> None:
    name = json.loads(cli("make", "sip:ended@example.com", "--json").stdout)["name"]
    cli("drop", name)
    line = next(line for line in cli("list", "--state", "disconnected").stdout.splitlines() if line.startswith(name))
    assert "disconnected (normal)" in line


def test_set_capacity_says_which_calls_it_shed(server_factory: Any) -> None:
    """Two calls fill the link; cutting the capacity sheds the newer one, and the command says so
    (from the calls the UpdateLinkResponse lists)."""
    server = server_factory()
    env = _env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL="olga")
    keep = json.loads(
        run(
            "make", "sip:a@example.com", "--json", "--send-type", "controlled-load", "--send-rate", "600000", env=env
        ).stdout
    )["name"]
    shed = json.loads(
        run(
            "make", "sip:b@example.com", "--json", "--send-type", "controlled-load", "--send-rate", "600000", env=env
        ).stdout
    )["name"]
    text = run("set-capacity", LINK, "700000", env=env).stdout
    assert LINK in text and "700,000" in text  # the link as it is now
    assert f"{shed}  disconnected (qos-unavailable)" in text and "shed 1 call:" in text
    assert keep not in text
    again = run("set-capacity", LINK, "700000", env=env).stdout
    assert "no call was shed" in again
    as_json = json.loads(run("--json", "set-capacity", LINK, "800000", env=env).stdout)
    assert as_json["link"]["capacityBytesPerSecond"] == "800000" and "changes" not in as_json


def test_watch_says_on_stderr_that_it_is_reconnecting(server_factory: Any) -> None:
    server = server_factory(storage="sqlite")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "callqos.cli", "watch", "--after", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(CALLQOS_TARGET=server.target),
    )
    try:
        time.sleep(1.5)
        server.restart()  # SIGTERM: the stream ends SHUTTING_DOWN, the watch reconnects
        time.sleep(2.0)
    finally:
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=20)
    assert "callqos watch: SHUTTING_DOWN" in stderr or "callqos watch: UNAVAILABLE" in stderr, stderr
    assert "reconnecting in" in stderr


def test_only_callqos_listen_set_reaches_that_server(server: Any) -> None:
    """With only the server's variable set (as in a shell that started it), the CLI goes there,
    not to 127.0.0.1:50051."""
    port = server.target.rpartition(":")[2]
    for listen in (server.target, f"0.0.0.0:{port}"):
        providers = run("providers", env=_env(CALLQOS_LISTEN=listen)).stdout
        assert "providers/reference" in providers
    nowhere = run("--timeout", "2", "providers", env=_env(CALLQOS_TARGET="127.0.0.1:1"), check=False)
    assert nowhere.returncode == 24  # CALLQOS_TARGET wins over CALLQOS_LISTEN, and that one is closed


def test_version(cli: Run) -> None:
    assert cli("--version").stdout.startswith("callqos ")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
@pytest.mark.parametrize(
    ("words", "offered", "not_offered"),
    [
        (["callqos", "ma"], {"make"}, {"list"}),
        (["callqos", "make", "--send-t"], {"--send-type"}, {"--recv-type"}),
        (["callqos", "make", "--send-type", "con"], {"controlled-load"}, {"guaranteed"}),
        (["callqos", "--target", "h:1", "wa"], {"watch"}, set()),
        (["callqos", "list", "--state", ""], {"connected", "disconnected"}, set()),
        (["callqos", "completion", ""], {"bash", "zsh"}, set()),
    ],
)
def test_bash_completion(tmp_path: Path, words: list[str], offered: set[str], not_offered: set[str]) -> None:
    script = tmp_path / "callqos.bash"
    script.write_text(run("completion", "bash", env=_env()).stdout)
    quoted = " ".join(f"'{word}'" for word in words)
    probe = f'source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _callqos; echo "${{COMPREPLY[@]}}"'
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    got = set(result.stdout.split())
    assert offered <= got and not (not_offered & got), got
