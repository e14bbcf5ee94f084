"""Lines and incoming calls through the Python clients (sync and async) and the CLI, against the real
server: open a line, receive offered calls as a stream (resuming across a restart), answer as
offered or with less, reject, close."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from callqos.client import (
    AddressInUseError,
    AsyncClient,
    CallNotOfferingError,
    Client,
    InvalidRequestError,
    NotOwnerError,
    QosUnavailableError,
    ResumePolicy,
    controlled_load,
)
from callqos.v1 import call_pb2, line_pb2

State = call_pb2.Call.State
Disconnect = call_pb2.DisconnectReason
EXIT_RESOURCE_EXHAUSTED = 10 + 8


def address() -> str:
    return f"sip:{uuid.uuid4().hex[:12]}@example.test"


def test_open_a_line_answer_as_offered_and_with_less(server) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, principal="bob") as bob, Client(server.target, principal="carol") as carol:
        line = bob.open_line(address(), no_answer_timeout=20)
        assert line.owner == "bob" and line.state == line_pb2.Line.State.STATE_OPEN
        assert line.no_answer_timeout.ToNanoseconds() == 20_000_000_000
        with pytest.raises(AddressInUseError):
            carol.open_line(line.address)

        ringing = carol.make_call(line.address, sending=controlled_load(40_000), level="if-available")
        assert ringing.state == State.STATE_RINGBACK
        offered = bob.get_call(ringing.peer)
        assert offered.state == State.STATE_OFFERING and offered.caller_id == "carol"
        assert offered.requested_qos.receiving.token_rate_bytes_per_second == 40_000
        # Bob receives less than carol sends; his own sending direction stays as offered.
        answered = bob.answer(offered.name, receiving=controlled_load(25_000))
        assert answered.state == State.STATE_CONNECTED
        got = carol.get_call(ringing.name)
        assert got.granted_qos.sending.token_rate_bytes_per_second == 25_000
        assert got.requested_qos.sending.token_rate_bytes_per_second == 40_000
        with pytest.raises(CallNotOfferingError):
            bob.answer(offered.name)
        bob.drop(offered.name)
        assert carol.get_call(ringing.name).disconnect_reason == Disconnect.DISCONNECT_REASON_PEER_DROPPED

        needed = carol.make_call(line.address, sending=controlled_load(40_000))
        with pytest.raises(QosUnavailableError) as refused:
            bob.answer(needed.peer, receiving=controlled_load(25_000))
        assert refused.value.counter_offer is not None
        assert refused.value.counter_offer.receiving.token_rate_bytes_per_second == 40_000
        with pytest.raises(InvalidRequestError) as more:
            bob.answer(
                carol.make_call(line.address, sending=controlled_load(1000)).peer, receiving=controlled_load(2000)
            )
        assert [v.field for v in more.value.field_violations] == ["qos.receiving"]
        closed = bob.close_line(line.name)
        assert closed.state == line_pb2.Line.State.STATE_CLOSED
        assert [each.name for each in bob.list_lines(address=line.address)] == [line.name]


def test_reject_and_only_the_owner_answers(server) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, principal="bob") as bob, Client(server.target, principal="carol") as carol:
        line = bob.open_line(address())
        ringing = carol.make_call(line.address)
        with pytest.raises(NotOwnerError):
            carol.answer(ringing.peer)
        with pytest.raises(NotOwnerError):
            carol.close_line(line.name)
        rejected = bob.reject(ringing.peer)
        assert rejected.disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
        assert bob.reject(ringing.peer) == rejected
        assert carol.get_call(ringing.name).disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
        bob.close_line(line.name)


def test_offers_start_with_the_calls_already_ringing_then_follow(server) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, principal="bob") as bob, Client(server.target, principal="carol") as carol:
        line = bob.open_line(address())
        early = carol.make_call(line.address)
        seen: list[call_pb2.Call] = []
        with bob.offers(line.name) as offers:
            seen.append(next(offers))
            later = carol.make_call(line.address)
            seen.append(next(offers))
            assert offers.last_sequence is not None
        assert [call.name for call in seen] == [early.peer, later.peer]
        assert all(call.state == State.STATE_OFFERING for call in seen)
        bob.close_line(line.name)


def test_offers_skip_calls_no_longer_ringing_and_resume_from_a_cursor(server) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, principal="bob") as bob, Client(server.target, principal="carol") as carol:
        line = bob.open_line(address())
        with bob.offers(line.name) as offers:
            first = carol.make_call(line.address)
            assert next(offers).name == first.peer
            cursor = offers.last_sequence
        gone = carol.make_call(line.address)
        bob.reject(gone.peer)
        ringing = carol.make_call(line.address)
        with bob.offers(line.name, after_sequence=cursor) as resumed:
            # After the cursor: the rejected offer is skipped, the ringing one is yielded.
            assert next(resumed).name == ringing.peer
        bob.close_line(line.name)


def test_offers_follow_a_line_across_a_server_restart(server_factory) -> None:  # type: ignore[no-untyped-def]
    proc = server_factory(storage="sqlite")
    with Client(proc.target, principal="bob") as bob, Client(proc.target, principal="carol") as carol:
        line = bob.open_line(address(), no_answer_timeout=60)
        got: list[str] = []
        errors: list[BaseException] = []
        stream = bob.offers(line.name, resume=ResumePolicy(initial_backoff=0.05, max_backoff=0.2, give_up_after=30))

        def follow() -> None:
            try:
                for call in stream:
                    got.append(call.name)
                    if len(got) == 2:
                        return
            except BaseException as error:  # reported below
                errors.append(error)

        before = carol.make_call(line.address)
        thread = threading.Thread(target=follow)
        thread.start()
        proc.restart(kill=True)
        after = carol.make_call(line.address)
        thread.join(30)
        stream.close()
        assert not errors and got == [before.peer, after.peer]


def test_async_client_opens_answers_and_follows_offers(server) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with (
            AsyncClient(server.target, principal="bob") as bob,
            AsyncClient(server.target, principal="carol") as carol,
        ):
            line = await bob.open_line(address())
            assert (await bob.get_line(line.name)) == line
            early = await carol.make_call(line.address, sending=controlled_load(10_000))
            async with bob.offers(line.name) as offers:
                offered = await offers.__anext__()
                assert offered.name == early.peer
                answered = await bob.answer(offered.name)
                assert answered.state == State.STATE_CONNECTED
                later = await carol.make_call(line.address)
                assert (await offers.__anext__()).name == later.peer
            rejected = await bob.reject(later.peer)
            assert rejected.disconnect_reason == Disconnect.DISCONNECT_REASON_REJECTED
            assert [each.name async for each in bob.list_lines(address=line.address)] == [line.name]
            assert (await bob.close_line(line.name)).state == line_pb2.Line.State.STATE_CLOSED

    asyncio.run(scenario())


# -- CLI -------------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLQOS_")}
    env.update(extra)
    return env


@pytest.fixture
def cli(server) -> Callable[..., subprocess.CompletedProcess[str]]:  # type: ignore[no-untyped-def]
    def run(*args: str, principal: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "callqos.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(CALLQOS_TARGET=server.target, CALLQOS_PRINCIPAL=principal),
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_cli_line_offers_answer_reject(cli: Callable[..., Any]) -> None:
    dave = f"dave-{uuid.uuid4().hex[:6]}"  # a principal of its own: its one open line is the default
    where = address()
    opened = cli("--json", "line", "open", where, "--no-answer-timeout", "25", principal=dave)
    line = line_pb2.Line()
    json_format.Parse(opened.stdout, line)
    assert line.owner == dave and line.address == where
    cli(
        "make",
        where,
        "--call-id",
        f"c{uuid.uuid4().hex[:8]}",
        "--send-type",
        "controlled-load",
        "--send-rate",
        "30000",
        principal="erin",
    )
    offers = cli("offers", "--count", "1", principal=dave)
    assert "offering" in offers.stdout and "from erin" in offers.stdout
    refused = cli("answer", "--recv-type", "controlled-load", "--recv-rate", "1000", principal=dave, check=False)
    assert refused.returncode == EXIT_RESOURCE_EXHAUSTED and "QOS_UNAVAILABLE" in refused.stderr
    cli("make", where, "--send-type", "controlled-load", "--send-rate", "30000", principal="erin")
    answered = cli("answer", principal=dave)  # no flags: as offered
    assert "connected" in answered.stdout
    cli("make", where, principal="erin")
    rejected = cli("reject", "--line", line.name, principal=dave)
    assert "disconnected (rejected)" in rejected.stdout
    none_left = cli("answer", principal=dave, check=False)
    assert none_left.returncode == 2 and "no call is ringing" in none_left.stderr
    listed = cli("line", "list", "--owner", dave, principal=dave)
    assert line.name in listed.stdout and "open" in listed.stdout
    watched = cli("watch", "--line", line.name, "--after", "0", "--count", "2", principal="anyone")
    assert "CALL_OFFERED" in watched.stdout
    closed = cli("line", "close", line.name, principal=dave)
    assert "closed" in closed.stdout
    nobody = cli("offers", "--count", "1", principal=dave, check=False)
    assert nobody.returncode == 2 and "name the line with --line" in nobody.stderr
