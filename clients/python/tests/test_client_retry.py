"""The shared retry policy (clients/service_config.json) as the Python client applies it.

Through a fault-injecting front for the real server (tests/faults.py), so each check counts the
attempts that really went over the wire.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from faults import Fault, FaultFront

from callqos.client import Client, QosUnavailableError, ResumePolicy, UnavailableError, _policy, controlled_load
from callqos.v1 import callqos_service_pb2

SHARED_POLICY = Path(__file__).resolve().parents[2] / "service_config.json"
SERVICE = callqos_service_pb2.DESCRIPTOR.services_by_name["CallQosService"]


def _retry_policy() -> dict[str, Any]:
    (method_config,) = _policy.service_config()["methodConfig"]
    policy: dict[str, Any] = method_config["retryPolicy"]
    return policy


@pytest.fixture
def front(server) -> Iterator[FaultFront]:  # type: ignore[no-untyped-def]
    proxy = FaultFront(server.target)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def via_front(front: FaultFront) -> Iterator[Client]:
    with Client(front.target, principal="alice", timeout=10.0) as c:
        yield c


def test_the_bundled_policy_is_the_shared_file() -> None:
    if not SHARED_POLICY.exists():
        pytest.skip("not in a source checkout")
    assert _policy.policy_file() == json.loads(SHARED_POLICY.read_text())


def test_retry_policy_covers_only_methods_safe_to_repeat() -> None:
    (method_config,) = _policy.service_config()["methodConfig"]
    names = {entry["method"] for entry in method_config["name"]}
    assert all(entry["service"] == SERVICE.full_name for entry in method_config["name"])
    assert names <= {m.name for m in SERVICE.methods}
    # A server stream is resumed by watch() itself, never replayed by the channel.
    assert "WatchEvents" not in names
    # Only UNAVAILABLE: never RESOURCE_EXHAUSTED (a QoS refusal or too many watchers) nor
    # ABORTED (an etag mismatch needs a fresh read, not the same request again).
    assert _retry_policy()["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_the_resume_defaults_are_the_files() -> None:
    part = _policy.policy_file()["watchResume"]
    policy = ResumePolicy()
    assert policy.give_up_after == _policy.seconds(part["giveUpAfter"])
    assert policy.initial_backoff == _policy.seconds(part["initialBackoff"])
    assert policy.max_backoff == _policy.seconds(part["maxBackoff"])
    assert policy.healthy_after == _policy.seconds(part["healthyAfter"])
    assert {code.name for code in policy.resumable_codes} == set(part["resumableStatusCodes"])


def test_a_read_failing_with_unavailable_succeeds_on_a_retry(front: FaultFront, via_front: Client) -> None:
    attempts = int(_retry_policy()["maxAttempts"])
    front.fail("ListProviders", Fault(times=attempts - 1))
    providers = list(via_front.list_providers())
    assert {p.name for p in providers} >= {"providers/reference"}
    assert len(front.attempts["ListProviders"]) == attempts


def test_retries_stop_after_max_attempts(front: FaultFront, via_front: Client) -> None:
    attempts = int(_retry_policy()["maxAttempts"])
    front.fail("GetCall", Fault(times=attempts + 3))
    with pytest.raises(UnavailableError):
        via_front.get_call("calls/anything")
    assert len(front.attempts["GetCall"]) == attempts


def test_a_create_whose_answer_was_lost_is_retried_without_making_a_second_call(
    front: FaultFront, via_front: Client, client: Client
) -> None:
    # The server makes the call, the answer is lost (UNAVAILABLE), the channel retries: the same
    # request_id makes the server return the first outcome instead of making another call.
    front.fail("CreateCall", Fault(after_forwarding=True))
    call = via_front.make_call("sip:retried@example.com", sending=controlled_load(1_000))
    try:
        sent = front.requests("CreateCall", callqos_service_pb2.CreateCallRequest)
        assert len(sent) == 2
        assert sent[0].request_id and sent[0] == sent[1]
        mine = [c for c in client.list_calls() if c.destination == "sip:retried@example.com"]
        assert [c.name for c in mine] == [call.name]
    finally:
        client.drop(call.name)


def test_a_renegotiation_is_retried_with_the_same_request_id(front: FaultFront, via_front: Client) -> None:
    call = via_front.make_call("sip:renegotiated@example.com", sending=controlled_load(1_000))
    try:
        front.fail("RenegotiateCall", Fault(after_forwarding=True))
        changed = via_front.renegotiate(call.name, sending=controlled_load(2_000))
        assert changed.granted_qos.sending.token_rate_bytes_per_second == 2_000
        sent = front.requests("RenegotiateCall", callqos_service_pb2.RenegotiateCallRequest)
        assert len(sent) == 2 and sent[0].request_id and sent[0] == sent[1]
    finally:
        via_front.drop(call.name)


def test_an_extension_whose_answer_was_lost_is_retried_with_the_same_request_id(
    front: FaultFront, via_front: Client
) -> None:
    call = via_front.make_call("sip:extended@example.com", lease=30)
    try:
        front.fail("ExtendCall", Fault(after_forwarding=True))
        renewed = via_front.extend(call.name)
        sent = front.requests("ExtendCall", callqos_service_pb2.ExtendCallRequest)
        assert len(sent) == 2 and sent[0].request_id and sent[0] == sent[1]
        assert via_front.get_call(call.name).lease_expire_time == renewed.lease_expire_time, "extended once"
    finally:
        via_front.drop(call.name)


def test_a_qos_refusal_is_not_retried(
    front: FaultFront, via_front: Client, free_sending: Callable[[Client], int]
) -> None:
    with pytest.raises(QosUnavailableError) as refused:
        via_front.make_call("sip:refused@example.com", sending=controlled_load(free_sending(via_front) + 1))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(front.attempts["CreateCall"]) == 1
