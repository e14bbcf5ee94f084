"""locks.py: KeyedLocks serialises holders of one key, lets other keys run, and forgets a key once
nobody holds or waits for it; to_completion finishes a mutation whose caller went away
(conformance/SPEC.md API-8)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from callqos.server.locks import KeyedLocks, to_completion


def entries(locks: KeyedLocks) -> int:
    """How many keys the table holds: it must not grow with every call ever locked."""
    return len(locks._locks)


async def test_holders_of_one_key_take_turns_in_arrival_order() -> None:
    locks = KeyedLocks()
    inside = 0
    most_inside = 0
    order: list[int] = []

    async def hold(n: int) -> None:
        nonlocal inside, most_inside
        async with locks.hold("calls/a"):
            inside += 1
            most_inside = max(most_inside, inside)
            order.append(n)
            await asyncio.sleep(0)  # give the others every chance to barge in
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(hold(n) for n in range(5)))
    assert most_inside == 1
    assert order == [0, 1, 2, 3, 4]
    assert entries(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold_a() -> None:
        async with locks.hold("calls/a"):
            entered.set()
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await entered.wait()
    async with asyncio.timeout(1):
        async with locks.hold("calls/b"):  # not blocked by calls/a
            assert entries(locks) == 2
    release.set()
    await holder
    assert entries(locks) == 0


async def test_a_waiter_cancelled_in_the_queue_frees_its_entry_and_does_not_block_the_next() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()
    entered = asyncio.Event()
    got: list[str] = []

    async def first() -> None:
        async with locks.hold("k"):
            entered.set()
            await release.wait()

    async def waiter(name: str) -> None:
        async with locks.hold("k"):
            got.append(name)

    holder = asyncio.create_task(first())
    await entered.wait()
    cancelled = asyncio.create_task(waiter("cancelled"))
    after = asyncio.create_task(waiter("after"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    release.set()
    await asyncio.gather(holder, after)
    assert got == ["after"]
    assert entries(locks) == 0


async def test_an_exception_inside_releases_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("boom")
    assert entries(locks) == 0
    async with asyncio.timeout(1), locks.hold("k"):
        pass


async def test_to_completion_returns_the_result_and_raises_the_error() -> None:
    async def ok() -> int:
        return 7

    async def fail() -> int:
        raise ValueError("no")

    assert await to_completion(ok()) == 7
    with pytest.raises(ValueError, match="no"):
        await to_completion(fail())


async def test_to_completion_finishes_the_work_when_its_caller_is_cancelled() -> None:
    proceed = asyncio.Event()
    finished = asyncio.Event()
    steps: list[str] = []

    async def mutation() -> str:
        steps.append("reached the provider")
        await proceed.wait()
        steps.append("committed")
        finished.set()
        return "done"

    caller = asyncio.create_task(to_completion(mutation()))
    await asyncio.sleep(0.01)
    caller.cancel()  # the client went away, or grpc enforced its deadline
    with pytest.raises(asyncio.CancelledError):
        await caller
    proceed.set()
    async with asyncio.timeout(1):
        await finished.wait()
    assert steps == ["reached the provider", "committed"]


async def test_a_failure_nobody_awaits_any_more_is_not_reported_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        proceed = asyncio.Event()

        async def mutation() -> None:
            await proceed.wait()
            raise RuntimeError("the provider failed after the caller left")

        caller = asyncio.create_task(to_completion(mutation()))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        proceed.set()
        for _ in range(5):
            await asyncio.sleep(0)
        del caller
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not [c for c in reported if "never retrieved" in str(c.get("message", ""))]
