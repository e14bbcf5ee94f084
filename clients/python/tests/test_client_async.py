"""The AsyncClient against the real server: the same contract, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from callqos.client import (
    AsyncClient,
    Client,
    NotOwnerError,
    QosUnavailableError,
    controlled_load,
)
from callqos.v1 import call_pb2, event_pb2


async def test_async_make_renegotiate_list_drop(server) -> None:  # type: ignore[no-untyped-def]
    async with AsyncClient(server.target, principal="carol") as client:
        call = await client.make_call("sip:async@example.com", sending=controlled_load(5_000))
        assert call.owner == "carol" and call.state == call_pb2.Call.STATE_CONNECTED
        assert (await client.get_call(call.name)) == call
        changed = await client.renegotiate(call.name, sending=controlled_load(6_000), etag=call.etag)
        assert changed.granted_qos.sending.token_rate_bytes_per_second == 6_000
        names = [c.name async for c in client.list_calls(state="connected", page_size=1)]
        assert call.name in names and len(names) == len(set(names))
        providers = [p.name async for p in client.list_providers()]
        assert "providers/reference" in providers
        links = [link.name async for link in client.list_links()]
        assert "providers/reference/links/default" in links
        dropped = await client.drop(call.name)
        assert dropped.state == call_pb2.Call.STATE_DISCONNECTED


async def test_async_typed_errors(server, free_sending: Callable[[Client], int]) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target) as sync_client:
        free = free_sending(sync_client)
    async with (
        AsyncClient(server.target, principal="carol") as client,
        AsyncClient(server.target, principal="dave") as other,
    ):
        with pytest.raises(QosUnavailableError) as refused:
            await client.make_call("sip:big@example.com", sending=controlled_load(free + 100_000))
        offer = refused.value.counter_offer
        assert offer is not None
        call = await client.make_call("sip:big@example.com", qos=offer)
        try:
            with pytest.raises(NotOwnerError):
                await other.drop(call.name)
        finally:
            await client.drop(call.name)


async def test_async_watch_sees_new_events(server) -> None:  # type: ignore[no-untyped-def]
    async with AsyncClient(server.target, principal="carol") as client:
        stream = client.watch(types=["qos-granted"])

        async def first_event() -> event_pb2.QosEvent:
            async for event in stream:
                return event
            raise AssertionError("stream ended")

        waiter = asyncio.create_task(first_event())
        # Give the watch time to open: it starts with events committed after it does.
        await asyncio.sleep(0.3)
        call = await client.make_call("sip:watched@example.com")
        event = await asyncio.wait_for(waiter, 10)
        assert event.call == call.name and event.type == event_pb2.QOS_EVENT_TYPE_QOS_GRANTED
        assert stream.last_sequence == event.sequence
        await stream.aclose()
        await client.drop(call.name)


def test_async_client_can_be_built_outside_a_loop(server) -> None:  # type: ignore[no-untyped-def]
    client = AsyncClient(server.target)

    async def use() -> str:
        async with client:
            return (await client.get_provider("reference")).name

    assert asyncio.run(use()) == "providers/reference"
