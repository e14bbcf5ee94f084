"""Fixtures: a real callqos server on a free loopback port, and a stub talking real gRPC to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from server_testkit import ServerProcess, free_port

from callqos.server import app
from callqos.server.config import Config
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(listen="127.0.0.1:0", storage="memory", data_dir=tmp_path, shutdown_grace_seconds=1.0)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[app.Running]:
    running = await app.start(config)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def channel(server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> svc_grpc.CallQosServiceStub:
    return svc_grpc.CallQosServiceStub(channel)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, free_port())
    try:
        yield process
    finally:
        process.stop()
