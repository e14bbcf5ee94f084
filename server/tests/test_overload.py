"""Overload is refused with statuses clients retry, never by cancelling RPCs.

gRPC's server cancels RPCs beyond its pending-request limit (1000 by default): bursts of more
than about a thousand new RPCs lost 8-24 % to CANCELLED, which no client retries. The server now
sets that limit (`max_pending_rpcs`) to at least max_connections x max_concurrent_streams, so
overload is refused earlier, where a retry is safe: a stream beyond max_concurrent_streams gets
HTTP/2 REFUSED_STREAM and a connection beyond max_connections is closed — UNAVAILABLE to the
client, before the server saw the request, and UNAVAILABLE is what the clients' policy retries
(clients/service_config.json)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from callqos.client import _policy
from callqos.server import testing
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

BURST = 5000
CONNECTIONS = 5
# Enough streams per connection that the burst queues far more RPCs (up to 10,000) than gRPC's
# default pending limit of 1000 would have let through without cancelling some.
SETTINGS = {"max_concurrent_streams": 2000, "max_connections": 10, "storage": "memory"}


def options(retry: bool) -> list[tuple[str, Any]]:
    """The Python client's channel options (its retry policy or none), one connection each."""
    from callqos.client import _channel

    return _channel.channel_options(retry=retry, extra=[("grpc.use_local_subchannel_pool", 1)])


async def burst(target: str, count: int, channel_options: Sequence[tuple[str, Any]]) -> collections.Counter[str]:
    """`count` ListProviders at once over CONNECTIONS connections; outcomes by status code."""
    channels = [grpc.aio.insecure_channel(target, options=channel_options) for _ in range(CONNECTIONS)]
    try:
        stubs = [svc_grpc.CallQosServiceStub(channel) for channel in channels]
        for stub in stubs:  # connected, so that the burst is all RPCs and no handshakes
            await stub.ListProviders(svc.ListProvidersRequest(), timeout=30)
        outcomes: collections.Counter[str] = collections.Counter()

        async def one(index: int) -> None:
            try:
                await stubs[index % CONNECTIONS].ListProviders(svc.ListProvidersRequest(), timeout=60)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                outcomes[error.code().name] += 1

        async with asyncio.timeout(120):
            await asyncio.gather(*(one(index) for index in range(count)))
        return outcomes
    finally:
        for channel in channels:
            await channel.close()


def test_a_burst_of_5000_rpcs_loses_none(tmp_path: Path) -> None:
    """With the clients' retry policy every RPC of the burst succeeds (some after a retry); none
    is CANCELLED. Without retries, whatever the server refused is UNAVAILABLE, and only that."""
    assert "UNAVAILABLE" in {code.name for code in _policy.retryable_codes()}
    with testing.ServerProcess(tmp_path, **SETTINGS) as server:
        started = time.monotonic()
        with_policy = asyncio.run(burst(server.target, BURST, options(retry=True)))
        elapsed = time.monotonic() - started
        assert with_policy == {"OK": BURST}, (with_policy, server.log())
        bare = asyncio.run(burst(server.target, BURST, options(retry=False)))
        assert set(bare) <= {"OK", "UNAVAILABLE"}, bare
        assert sum(bare.values()) == BURST
        print(f"burst of {BURST}: all OK in {elapsed:.1f}s with the policy; without retries {dict(bare)}")


def test_a_connection_beyond_the_limit_is_refused_retryably(tmp_path: Path) -> None:
    """max_connections: the connection that does not fit is closed as it opens; its RPCs fail
    UNAVAILABLE (retryable), and the connections that fit are served."""

    async def run(target: str) -> list[str]:
        channels = [grpc.aio.insecure_channel(target, options=options(retry=False)) for _ in range(3)]
        results = []
        try:
            for channel in channels:
                try:
                    await svc_grpc.CallQosServiceStub(channel).ListProviders(svc.ListProvidersRequest(), timeout=10)
                    results.append("OK")
                except grpc.aio.AioRpcError as error:
                    results.append(error.code().name)
        finally:
            for channel in channels:
                await channel.close()
        return results

    with testing.ServerProcess(tmp_path, max_connections=2, storage="memory") as server:
        assert asyncio.run(run(server.target)) == ["OK", "OK", "UNAVAILABLE"]
