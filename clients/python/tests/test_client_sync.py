"""The blocking Client against the real server: calls, renegotiation, paging, providers."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from callqos.client import (
    Client,
    QosUnavailableError,
    best_effort,
    controlled_load,
    no_traffic,
    qos,
)
from callqos.v1 import call_pb2, flowspec_pb2


def _bytes(spec: flowspec_pb2.QosSpec) -> bytes:
    return spec.SerializeToString(deterministic=True)


def test_providers_and_links(client: Client) -> None:
    providers = {p.name: p for p in client.list_providers()}
    assert {"providers/reference", "providers/no-qos"} <= set(providers)
    assert providers["providers/reference"].default
    assert providers["providers/reference"].capabilities.qos_supported
    assert not providers["providers/no-qos"].capabilities.qos_supported
    assert client.get_provider("no-qos").name == "providers/no-qos"
    assert client.default_provider().name == "providers/reference"
    links = list(client.list_links())
    default = next(link for link in links if link.name == "providers/reference/links/default")
    assert default.mtu_bytes == 1500


def test_make_get_list_drop(client: Client) -> None:
    call = client.make_call(
        "sip:bob@example.com",
        sending=controlled_load(10_000),
        receiving=no_traffic(),
        level="needed",
    )
    assert call.name.startswith("calls/")
    assert call.state == call_pb2.Call.STATE_CONNECTED
    assert call.owner == "alice"
    assert call.features.set_qos
    assert call.granted_qos.sending.token_rate_bytes_per_second == 10_000
    assert client.get_call(call.name) == call
    # Short names work too.
    assert client.get_call(call.name.removeprefix("calls/")).name == call.name
    connected = {c.name for c in client.list_calls(state="connected")}
    assert call.name in connected
    dropped = client.drop(call.name)
    assert dropped.state == call_pb2.Call.STATE_DISCONNECTED
    assert dropped.disconnect_reason == call_pb2.DISCONNECT_REASON_NORMAL
    # Dropping twice is harmless and returns the call unchanged.
    assert client.drop(call.name) == dropped
    assert call.name not in {c.name for c in client.list_calls(state="connected")}
    assert call.name in {c.name for c in client.list_calls(state="disconnected")}


def test_list_calls_iterates_every_page(client: Client) -> None:
    mine = [client.make_call(f"sip:page{i}@example.com", call_id=f"page-{uuid.uuid4().hex[:12]}") for i in range(7)]
    try:
        paged = [c.name for c in client.list_calls(page_size=2)]
        whole = [c.name for c in client.list_calls(page_size=500)]
        assert len(paged) == len(set(paged)), "a call was listed twice across pages"
        assert paged == whole
        assert {c.name for c in mine} <= set(paged)
        # Newest first.
        positions = [paged.index(c.name) for c in mine]
        assert positions == sorted(positions, reverse=True)
        by_provider = {c.name for c in client.list_calls(provider="reference", page_size=3)}
        assert {c.name for c in mine} <= by_provider
        assert not {c.name for c in mine} & {c.name for c in client.list_calls(provider="no-qos")}
    finally:
        for call in mine:
            client.drop(call.name)


def test_renegotiate_up_down_and_no_change(client: Client) -> None:
    call = client.make_call("sip:reneg@example.com", sending=controlled_load(10_000), receiving=controlled_load(5_000))
    try:
        up = client.renegotiate(call.name, sending=controlled_load(20_000))
        assert up.granted_qos.sending.token_rate_bytes_per_second == 20_000
        # The direction left out was NO_CHANGE: kept byte for byte.
        assert _bytes(qos(up.granted_qos.receiving)) == _bytes(qos(call.granted_qos.receiving))
        down = client.renegotiate(call.name, sending=controlled_load(1_000), receiving=best_effort())
        assert down.granted_qos.sending.token_rate_bytes_per_second == 1_000
        assert down.granted_qos.receiving.service_type == flowspec_pb2.SERVICE_TYPE_BEST_EFFORT
    finally:
        client.drop(call.name)


def test_refused_renegotiation_keeps_qos_byte_identical(client: Client, free_sending: Callable[[Client], int]) -> None:
    call = client.make_call("sip:keep@example.com", sending=controlled_load(10_000))
    try:
        before = client.get_call(call.name)
        too_much = free_sending(client) + 10_000 + 100_000
        with pytest.raises(QosUnavailableError) as refused:
            client.renegotiate(call.name, sending=controlled_load(too_much))
        assert refused.value.call == call.name
        after = client.get_call(call.name)
        assert after.state == call_pb2.Call.STATE_CONNECTED
        assert _bytes(after.granted_qos) == _bytes(before.granted_qos)
        offer = refused.value.counter_offer
        assert offer is not None
        retried = client.renegotiate(call.name, qos=offer)
        assert retried.granted_qos.sending.token_rate_bytes_per_second == offer.sending.token_rate_bytes_per_second
    finally:
        client.drop(call.name)


def test_same_request_id_returns_the_same_call(client: Client, free_sending: Callable[[Client], int]) -> None:
    request_id = str(uuid.uuid4())
    free = free_sending(client)
    first = client.make_call("sip:idem@example.com", sending=controlled_load(50_000), request_id=request_id)
    try:
        again = client.make_call("sip:idem@example.com", sending=controlled_load(50_000), request_id=request_id)
        assert again.name == first.name
        assert free_sending(client) == free - 50_000
    finally:
        client.drop(first.name)


def test_if_available_connects_with_what_is_free(client: Client, free_sending: Callable[[Client], int]) -> None:
    free = free_sending(client)
    call = client.make_call("sip:partial@example.com", sending=controlled_load(free + 100_000), level="if-available")
    try:
        assert call.state == call_pb2.Call.STATE_CONNECTED
        assert (
            call.granted_qos.sending.token_rate_bytes_per_second
            < call.requested_qos.sending.token_rate_bytes_per_second
        )
    finally:
        client.drop(call.name)


def test_update_link_capacity(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    with Client(server.target, principal="admin") as admin:
        call = admin.make_call("sip:shrink@example.com", sending=controlled_load(600_000), level="if-available")
        answer = admin.update_link_capacity("providers/reference/links/default", 300_000)
        link = answer.link
        assert link.capacity_bytes_per_second == 300_000
        assert link.sending_reserved_bytes_per_second <= 300_000
        after = admin.get_call(call.name)
        # The provider either degraded the call to fit or dropped it, and the answer says which.
        (change,) = answer.changes
        assert change.call == call.name and change.recorded
        if after.state == call_pb2.Call.STATE_CONNECTED:
            assert after.granted_qos.sending.token_rate_bytes_per_second <= 300_000
            assert change.current_qos == after.granted_qos
        else:
            assert after.disconnect_reason == call_pb2.DISCONNECT_REASON_QOS_UNAVAILABLE
            assert not change.HasField("current_qos")
