"""Fixed histories of the model-based checker against the suite's own LedgerProvider, a correct provider:
any violation found here is the checker's. A link's capacity can be raised above the advertised
max_reservable_bytes_per_second with UpdateLink; grants and counter-offers after that are judged by
the capacity the link has now, not the one advertised when the run began (a counter-offer of the new
capacity was once reported as a PROV-2 violation)."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Iterator

import pytest

from callqos.conformance.broken import LEDGER
from callqos.conformance.connection import open_channel
from callqos.conformance.harness import CheckContext, Session
from callqos.conformance.model_based.execute import Run, Violation, reset
from callqos.conformance.model_based.ops import Make, Op, Renegotiate, SetCapacity
from callqos.conformance.model_based.world import discover as world_of
from callqos.conformance.params import derive
from callqos.conformance.rules import QosSpec, best_effort, cl
from callqos.conformance.runner import discover
from callqos.conformance.target import SpawnedServer
from callqos.conformance.verify import Limits
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

NEEDED = call_pb2.ServiceLevel.SERVICE_LEVEL_NEEDED
ADVERTISED = 1_000_000  # LedgerProvider's capacity and max_reservable_bytes_per_second by default


@pytest.fixture(scope="module")
def ledger() -> Iterator[str]:
    with SpawnedServer(LEDGER) as server:
        yield server.target


async def execute(target: str, history: list[Op]) -> tuple[Violation | None, list[str]]:
    """Run `history` as MODEL-001 runs each of its histories (--target mode: no restarts), from an idle target."""
    channel = open_channel(target, None)
    try:
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        info = await discover(stub, None, 1.0)
        params = derive(info.capabilities, {}, "")
        session = Session(
            channel,
            stub,
            info.name,
            info.capabilities,
            params,
            run_token=secrets.token_hex(3),
            rng=random.Random(1),
            target=target,
            limits=Limits.of(info.capabilities, params.capacity),
        )
        ctx = CheckContext(session, "MODEL-001")
        world = await world_of(ctx)
        assert world.capacity == ADVERTISED and world.set_capacity
        assert await reset(ctx, world) == ""
        run = Run(ctx, world, f"q{session.run_token}")
        violation = await run.execute(history)
        assert await reset(ctx, world) == ""
        return violation, run.log
    finally:
        await channel.close()


def recv(rate: int) -> QosSpec:
    return QosSpec(sending=best_effort(), receiving=cl(rate))


def test_a_capacity_raised_above_the_advertised_maximum_bounds_counter_offers_and_grants(ledger: str) -> None:
    raised = ADVERTISED + 1
    history: list[Op] = [
        Make(0, NEEDED, QosSpec(sending=best_effort(), receiving=best_effort())),
        SetCapacity(raised),
        # One byte more than the raised link holds: refused, with the raised capacity as the counter-offer.
        Renegotiate(0, recv(raised + 1), NEEDED),
        # The raised capacity, in the other direction: granted, although it is above the advertised maximum.
        Make(1, NEEDED, QosSpec(sending=cl(raised), receiving=best_effort())),
    ]
    violation, log = asyncio.run(execute(ledger, history))
    assert violation is None, (str(violation), log)
    assert any(f"counter-offer send BEST_EFFORT / recv CONTROLLED_LOAD r={raised}" in line for line in log), log
    assert any(line.startswith("step 3:") and "retried the counter-offer: granted" in line for line in log), log
    granted = f"connected, granted send CONTROLLED_LOAD r={raised}"
    assert any(line.startswith("step 4:") and granted in line for line in log), log


def test_a_lowered_capacity_bounds_counter_offers(ledger: str) -> None:
    lowered = ADVERTISED // 4
    history: list[Op] = [
        SetCapacity(lowered),
        Make(0, NEEDED, recv(lowered + 1)),  # refused; offered the lowered capacity, which is granted
        Make(1, NEEDED, recv(1)),  # nothing is free: refused, offered best effort
    ]
    violation, log = asyncio.run(execute(ledger, history))
    assert violation is None, (str(violation), log)
    assert any(f"counter-offer send BEST_EFFORT / recv CONTROLLED_LOAD r={lowered}" in line for line in log), log
