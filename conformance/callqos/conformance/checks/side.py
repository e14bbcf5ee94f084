"""A side server: a second server the suite starts itself (--provider), with settings the main one
must not have (a tiny event retention, a watcher limit, the suite's probe providers), hosting the
plugin under test; checks talk to it through a CheckContext of their own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc

from callqos.conformance.exceptions import CheckSkipped
from callqos.conformance.harness import RPC_SECONDS, CheckContext
from callqos.conformance.target import SpawnedServer
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


@contextlib.asynccontextmanager
async def side_server(
    ctx: CheckContext, *, extra_providers: dict[str, dict[str, Any]] | None = None, **settings: Any
) -> AsyncIterator[CheckContext]:
    """A CheckContext on a fresh server hosting the plugin under test with `settings`; the server is
    stopped (and its calls with it) when the block ends."""
    main = ctx.session.server
    if main is None:
        raise CheckSkipped("mode: needs a server the suite starts itself (--provider)")
    server = SpawnedServer(
        main.plugin,
        main.settings,
        main.provider_timeout,
        main.log_dir,
        extra_providers=extra_providers,
        server_settings=settings,
        log_name="side-server.log",
    )
    await asyncio.to_thread(server.start)
    channel = grpc.aio.insecure_channel(server.target)
    try:
        session = dataclasses.replace(
            ctx.session,
            channel=channel,
            stub=svc_grpc.CallQosServiceStub(channel),  # type: ignore[no-untyped-call]  # generated, untyped
            server=server,
        )
        await asyncio.wait_for(channel.channel_ready(), RPC_SECONDS * ctx.session.scale)
        side = CheckContext(session, ctx.check_id)
        try:
            yield side
        finally:
            await side.cleanup()
    finally:
        await channel.close()
        await asyncio.to_thread(server.stop)
