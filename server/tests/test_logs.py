"""What the server logs, as an operator reads it: JSON lines only, one per RPC at debug (in the
RPC's trace), a line for each call a capacity cut sheds, and no gRPC or asyncio internals."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_testkit import qos

from callqos.client import CallNotFoundError, Client
from callqos.server import testing
from callqos.server.logs import AnswerAfterTheCallerLeft
from callqos.v1 import call_pb2

LINK = "providers/reference/links/default"


def entries(server: testing.ServerProcess) -> list[dict[str, Any]]:
    """Every log line of the server, parsed; a line that is not JSON fails the test."""
    found = []
    for line in server.log(tail=1_000_000).splitlines():
        if line.startswith("--- start #"):
            continue  # the ServerProcess's own header
        found.append(json.loads(line))  # raises on a C-core or traceback line
    return found


def test_debug_logs_one_line_per_rpc_and_a_capacity_cut_names_what_it_shed(tmp_path: Path) -> None:
    with testing.ServerProcess(tmp_path, log_level="debug") as server:
        with Client(server.target, principal="ops") as client:
            kept = client.make_call("sip:a@example.test", qos=qos(600_000))
            shed = client.make_call("sip:b@example.test", qos=qos(600_000))
            client.update_link_capacity(LINK, 700_000)
            assert client.get_call(shed.name).state == call_pb2.Call.State.STATE_DISCONNECTED
            client.drop(kept.name)
            with pytest.raises(CallNotFoundError):  # logged too, with its code
                client.get_call("calls/missing")
        with grpc.insecure_channel(server.target) as channel:  # a client that goes away mid-stream
            stream = channel.unary_stream("/callqos.v1.CallQosService/WatchEvents")(b"")
            stream.cancel()
        server.stop()
        lines = entries(server)
    rpcs = [line for line in lines if line["message"] == "rpc"]
    methods = [(line["method"].rpartition("/")[2], line["code"]) for line in rpcs]
    for expected in [("CreateCall", "OK"), ("UpdateLink", "OK"), ("DropCall", "OK"), ("GetCall", "NOT_FOUND")]:
        assert expected in methods, methods
    assert all(line["level"] == "debug" and len(line["trace_id"]) == 32 for line in rpcs)
    (cut,) = [line for line in lines if line["message"] == "provider shed a call"]
    assert cut["call"] == shed.name and cut["provider"] == "providers/reference" and cut["level"] == "warning"
    noisy = [line for line in lines if line["logger"].split(".")[0] in ("grpc", "asyncio")]
    assert not noisy, noisy
    assert {line["logger"].split(".")[0] for line in lines} == {"callqos"}


def test_info_logs_no_line_per_rpc(tmp_path: Path) -> None:
    with testing.ServerProcess(tmp_path) as server:
        with Client(server.target) as client:
            client.drop(client.make_call("sip:c@example.test", qos=qos(1000)).name)
        server.stop()
        assert not [line for line in entries(server) if line["message"] == "rpc"]


def test_an_answer_the_caller_left_before_is_not_logged_as_an_error() -> None:
    """gRPC's ERROR line (with a traceback) for an answer it could not send because the caller's deadline
    had passed (CreateCall with a 1 ms deadline runs to its end) is one of its internals: below the level
    gRPC's lines show at, so not in the log; any other gRPC error still is."""
    gone = AnswerAfterTheCallerLeft()

    def record(message: str) -> logging.LogRecord:
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            return logging.getLogger("grpc._cython.cygrpc").makeRecord(
                "grpc._cython.cygrpc", logging.ERROR, "server.pyx.pxi", 1, message, (), sys.exc_info()
            )

    quiet = logging.getLogger("grpc")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # as logs.configure sets it (QUIET_LIBRARIES)
    left = record("ExecuteBatchError raised in core by servicer method [/callqos.v1.CallQosService/CreateCall]")
    try:
        assert not gone.filter(left)
    finally:
        quiet.setLevel(level)
    assert left.levelno == logging.INFO and left.exc_info is None
    other = record("Unexpected [ValueError] raised by servicer method [/callqos.v1.CallQosService/CreateCall]")
    assert gone.filter(other) and other.levelno == logging.ERROR and other.exc_info is not None
    assert gone.filter(logging.makeLogRecord({"name": "callqos.calls", "msg": "ExecuteBatchError raised in core"}))
