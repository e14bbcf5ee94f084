"""Unit checks of the request builders and the CLI's option handling (no server needed)."""

from __future__ import annotations

import pytest

from callqos.cli.main import build_parser
from callqos.client import _requests, specs
from callqos.v1 import callqos_service_pb2, flowspec_pb2


def _create() -> callqos_service_pb2.CreateCallRequest:
    return _requests.create_call(
        "sip:x",
        qos=None,
        sending=None,
        receiving=None,
        level=None,
        provider=None,
        call_id=None,
        request_id=None,
    )


def test_creates_and_renegotiations_always_carry_a_request_id() -> None:
    # Why CreateCall and RenegotiateCall may be in the retry policy at all (AIP-155).
    create = _create()
    renegotiate = _requests.renegotiate_call(
        "x", qos=None, sending=None, receiving=None, level=None, etag=None, request_id=None
    )
    assert create.request_id and renegotiate.request_id
    assert create.request_id != _create().request_id
    # Directions left out are left out: the server reads them as best effort on create and as
    # NO_CHANGE on renegotiation (SPEC.md FLOW-20), so the client fills nothing in silently.
    assert not create.call.requested_qos.HasField("sending")
    assert not renegotiate.qos.HasField("receiving")
    assert renegotiate.name == "calls/x"


def test_flowspec_helpers_keep_not_specified_distinct_from_zero() -> None:
    spec = specs.flowspec("guaranteed", token_rate=1000, latency_us=0, peak=specs.UNBOUNDED)
    assert spec.HasField("latency_microseconds") and spec.latency_microseconds == 0
    assert not spec.HasField("token_bucket_size_bytes")
    assert spec.peak_bandwidth_unbounded and not spec.HasField("peak_bandwidth_bytes_per_second")
    assert specs.parse_service_type("controlled-load") == flowspec_pb2.SERVICE_TYPE_CONTROLLED_LOAD
    assert specs.parse_service_type("SERVICE_TYPE_NO_TRAFFIC") == flowspec_pb2.SERVICE_TYPE_NO_TRAFFIC
    with pytest.raises(ValueError, match="controlled-load"):
        specs.parse_service_type("controled-load")


def test_cli_common_options_work_before_and_after_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLQOS_TARGET", "127.0.0.1:1111")
    parser = build_parser()
    before = parser.parse_args(["--target", "127.0.0.1:2222", "--json", "list"])
    after = parser.parse_args(["list", "--target", "127.0.0.1:3333", "--json"])
    from_env = parser.parse_args(["list"])
    assert (before.target, before.json) == ("127.0.0.1:2222", True)
    assert (after.target, after.json) == ("127.0.0.1:3333", True)
    assert (from_env.target, from_env.json) == ("127.0.0.1:1111", False)
