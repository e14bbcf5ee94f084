"""The ``callqos`` command, run as a subprocess against the real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callqos.client import Client

EXIT_NOT_FOUND = 10 + 5
EXIT_INVALID_ARGUMENT = 10 + 3
EXIT_RESOURCE_EXHAUSTED = 10 + 8
EXIT_PERMISSION_DENIED = 10 + 7


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLQOS_")}
    env.update(extra)
    return env


@pytest.fixture
def cli(server) -> Callable[..., subprocess.CompletedProcess[str]]:  # type: ignore[no-untyped-def]
    def run(*args: str, principal: str = "erin", check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "callqos.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL=principal),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    return run


def _json(text: str) -> Any:
    return json.loads(text)


def _lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_make_get_list_renegotiate_drop_json(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    made = _json(
        cli(
            "make",
            "sip:cli@example.com",
            "--json",
            "--level",
            "needed",
            "--send-type",
            "controlled-load",
            "--send-rate",
            "8000",
            "--send-bucket",
            "1500",
            "--recv-type",
            "best-effort",
        ).stdout
    )
    name = made["name"]
    assert made["state"] == "STATE_CONNECTED" and made["owner"] == "erin"
    assert made["grantedQos"]["sending"]["tokenRateBytesPerSecond"] == "8000"
    assert _json(cli("get", name, "--json").stdout)["name"] == name
    listed = _lines(cli("list", "--json", "--state", "connected", "--page-size", "2").stdout)
    assert name in {c["name"] for c in listed}
    changed = _json(
        cli(
            "renegotiate",
            name,
            "--json",
            "--etag",
            made["etag"],
            "--send-type",
            "controlled-load",
            "--send-rate",
            "9000",
        ).stdout
    )
    assert changed["grantedQos"]["sending"]["tokenRateBytesPerSecond"] == "9000"
    # The receiving direction had no flags: NO_CHANGE kept it.
    assert changed["grantedQos"]["receiving"] == made["grantedQos"]["receiving"]
    dropped = _json(cli("drop", name, "--json").stdout)
    assert dropped["state"] == "STATE_DISCONNECTED"


def test_text_output(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    made = cli("make", "sip:text@example.com", "--send-type", "controlled-load", "--send-rate", "1000").stdout
    name = made.split()[0]
    assert name.startswith("calls/") and "connected" in made
    assert "controlled-load rate=1,000B/s" in made
    assert name in cli("list").stdout
    assert "providers/reference" in cli("providers").stdout
    assert "providers/reference/links/default" in cli("links").stdout
    cli("drop", name)


def test_refusal_prints_counter_offer_and_exits_nonzero(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    server,
    free_sending,  # type: ignore[no-untyped-def]
) -> None:
    with Client(server.target) as client:
        too_much = str(free_sending(client) + 100_000)
    text = cli(
        "make",
        "sip:big@example.com",
        "--send-type",
        "controlled-load",
        "--send-rate",
        too_much,
        check=False,
    )
    assert text.returncode == EXIT_RESOURCE_EXHAUSTED
    assert "QOS_UNAVAILABLE" in text.stderr and "counter-offer:" in text.stderr
    as_json = cli(
        "make",
        "sip:big@example.com",
        "--json",
        "--send-type",
        "controlled-load",
        "--send-rate",
        too_much,
        check=False,
    )
    assert as_json.returncode == EXIT_RESOURCE_EXHAUSTED
    error = _json(as_json.stderr)["error"]
    assert error["code"] == "RESOURCE_EXHAUSTED" and error["reason"] == "QOS_UNAVAILABLE"
    # The counter-offer, fed back in, is admitted.
    made = _json(cli("make", "sip:big@example.com", "--json", "--qos", json.dumps(error["counterOffer"])).stdout)
    assert made["state"] == "STATE_CONNECTED"
    cli("drop", made["name"])


def test_invalid_request_and_not_found_and_not_owner(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    invalid = cli(
        "make",
        "sip:bad@example.com",
        "--json",
        "--send-type",
        "controlled-load",
        "--send-rate",
        "1000",
        "--send-peak",
        "10",
        check=False,
    )
    assert invalid.returncode == EXIT_INVALID_ARGUMENT
    error = _json(invalid.stderr)["error"]
    assert error["reason"] == "INVALID_REQUEST" and error["fieldViolations"]
    missing = cli("get", "calls/does-not-exist", check=False)
    assert missing.returncode == EXIT_NOT_FOUND and "CALL_NOT_FOUND" in missing.stderr
    name = _json(cli("make", "sip:mine@example.com", "--json").stdout)["name"]
    denied = cli("drop", name, principal="mallory", check=False)
    assert denied.returncode == EXIT_PERMISSION_DENIED and "NOT_OWNER" in denied.stderr
    cli("drop", name)


def test_usage_errors_exit_2(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    assert cli("make", "sip:x@example.com", "--send-rate", "5", check=False).returncode == 2
    assert cli("frobnicate", check=False).returncode == 2


def test_watch_replays_after_cursor_as_json_lines(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    first = _json(cli("make", "sip:w1@example.com", "--json").stdout)
    second = _json(cli("make", "sip:w2@example.com", "--json").stdout)
    events = _lines(cli("watch", "--json", "--after", "0", "--call", second["name"], "--count", "1").stdout)
    assert len(events) == 1 and events[0]["call"] == second["name"]
    cursor = int(events[0]["sequence"]) - 1
    replay = _lines(cli("watch", "--json", "--after", str(cursor), "--count", "1").stdout)
    assert replay[0]["sequence"] == events[0]["sequence"]
    cli("drop", first["name"])
    cli("drop", second["name"])


def test_watch_follows_new_events(server) -> None:  # type: ignore[no-untyped-def]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "callqos.cli", "watch", "--json", "--type", "qos-granted"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(CALLQOS_TARGET=server.target),
    )
    try:
        time.sleep(1.5)  # let it connect: a watch without --after starts with new events
        with Client(server.target) as client:
            call = client.make_call("sip:followed@example.com")
            assert watcher.stdout is not None
            line = watcher.stdout.readline()
            assert json.loads(line)["call"] == call.name
            client.drop(call.name)
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(10)


def test_serve_comes_from_callqos_server() -> None:
    # The subcommand is callqos-server's `callqos.cli` entry point, listed without importing it.
    result = subprocess.run(
        [sys.executable, "-m", "callqos.cli", "--help"], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert result.returncode == 0, result.stderr
    assert "(from callqos-server " in " ".join(result.stdout.split())


def test_serve_subcommand(tmp_path: Path) -> None:
    """`callqos serve` is the server: same flags and configuration as `python -m callqos.server`."""
    from callqos.server import testing  # the workspace installs the server

    with testing.ServerProcess(tmp_path, program=[sys.executable, "-m", "callqos.cli", "serve"]) as serve:
        with Client(serve.target) as client:
            assert client.default_provider().name == "providers/reference"
        assert serve.stop() == 0  # SIGTERM: a clean, graceful exit


def test_set_capacity_lists_the_calls_it_changed(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "callqos.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL="erin"),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    link = "providers/reference/links/default"
    run("make", "sip:a@example.com", "--call-id", "kept", "--send-type", "controlled-load", "--send-rate", "500000")
    run("make", "sip:b@example.com", "--call-id", "shed", "--send-type", "controlled-load", "--send-rate", "500000")
    text = run("set-capacity", link, "600000")
    assert link in text and "600,000" in text
    (shed_row,) = [line for line in text.splitlines() if line.startswith("calls/shed")]
    assert "disconnected" in shed_row.lower()
    answer = _json(run("--json", "set-capacity", link, "1250000"))
    assert answer["link"]["capacityBytesPerSecond"] == "1250000" and "changes" not in answer
