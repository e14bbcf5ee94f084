"""Containing provider code: whatever a provider does, one call fails, never the server.

A provider is third-party code running in the server's process, on its event loop. The provider
host (`hosting`) runs each provider call through `Containment.run`, which guarantees:

- **Every exception stays a failure of that call.** `SystemExit`, `KeyboardInterrupt`,
  `GeneratorExit` and a `CancelledError` the provider raises on its own are caught like any
  `Exception` and reported as `ProviderRaised` (the host answers PROVIDER_UNAVAILABLE): none ends
  the process or leaves its caller waiting. A method that is not even a coroutine is caught too.
- **Every call ends in bounded time.** The call runs in a task of its own, under its budget. Past
  it, the task is cancelled; a provider that ignores the cancellation is *abandoned* after
  `cancel_grace` seconds more: the host fails the call (PROVIDER_UNAVAILABLE, cause "wedged"), the
  call's locks and request key are freed, and the task is left to end whenever it does. A wedged
  provider can no longer hold a call id for ever, nor keep SIGTERM from stopping the server
  (`app.serve` also has a hard deadline, `shutdown_timeout_seconds`).
- **Blocking is measured.** Each step of a provider's coroutine on the event loop is timed; a step
  that holds the loop longer than `warn_after` is logged as a warning naming the provider and the
  operation, and `LoopLag` measures how late the loop runs (the `callqos.event_loop.lag` metric)
  and names the provider that blocked it.
- **A provider that blocks can run off the loop.** With `threaded = true` in its settings, a
  provider runs on an event loop of its own, in a daemon thread (`ProviderThread`): blocking there
  delays only its own calls, still under their deadlines. Its `ProviderHost` is a proxy that hands
  changes back to the server's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from callqos.server.providers.base import (
    BookedLink,
    BookedReservation,
    IncomingOffer,
    LedgerBooks,
    ProviderChange,
    ProviderHost,
    SharedLedger,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# A provider call: a zero-argument function that starts it (so that a synchronous raise, or a
# method that blocks before returning, happens inside the containment), or an awaitable already
# made.
Work = Callable[[], Awaitable[T]] | Awaitable[T]


class ProviderRaised(Exception):
    """A provider raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt,
    GeneratorExit, its own CancelledError), or its method returned no awaitable."""

    def __init__(self, original: BaseException | None, what: str) -> None:
        super().__init__(what)
        self.original = original


class Wedged(Exception):
    """A provider call passed its deadline and then ignored its cancellation; it was abandoned."""


@dataclass
class Step:
    """The longest single step of provider code on the event loop since it was last read."""

    label: str = ""
    seconds: float = 0.0


class StepClock:
    """Times every step provider code takes on the event loop (see `_Stepped`)."""

    def __init__(self, warn_after: float) -> None:
        self.warn_after = warn_after
        self.worst = Step()

    def stepped(self, label: str, seconds: float) -> None:
        if seconds > self.worst.seconds:
            self.worst = Step(label, seconds)
        if seconds >= self.warn_after:
            log.warning(
                "provider code blocked the event loop",
                extra={"provider_call": label, "blocked_seconds": round(seconds, 3)},
            )

    def take_worst(self) -> Step:
        worst, self.worst = self.worst, Step()
        return worst


class _Stepped:
    """`await _Stepped(coroutine, ...)` runs the coroutine step by step like `await coroutine`
    would, timing each step (the code between two suspensions) with the clock."""

    __slots__ = ("_clock", "_coroutine", "_label")

    def __init__(self, coroutine: Awaitable[Any], label: str, clock: StepClock) -> None:
        self._coroutine, self._label, self._clock = coroutine, label, clock

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._coroutine.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            started = time.perf_counter()
            try:
                yielded = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as done:
                self._clock.stepped(self._label, time.perf_counter() - started)
                return done.value
            except BaseException:
                self._clock.stepped(self._label, time.perf_counter() - started)
                raise
            self._clock.stepped(self._label, time.perf_counter() - started)
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                inner.close()
                raise
            except BaseException as thrown:  # a cancellation, passed on to the provider
                value, error = None, thrown


class _Resumed:
    """A coroutine that has run its first step (and is waiting on `waiting`, what that step
    yielded), driven on to the end by the task that awaits `run()`."""

    __slots__ = ("_coroutine", "_waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coroutine, self._waiting = coroutine, waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded = self._waiting
        while True:
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                self._coroutine.close()
                raise
            except BaseException as thrown:  # a cancellation, passed on to the provider
                value, error = None, thrown
            try:
                yielded = self._coroutine.send(value) if error is None else self._coroutine.throw(error)
            except StopIteration as done:
                return done.value

    async def run(self) -> Any:
        return await self


def _start(work: Work[T]) -> Awaitable[T]:
    awaitable = work() if callable(work) else work
    if not inspect.isawaitable(awaitable):
        raise ProviderRaised(None, f"returned {type(awaitable).__name__}, not an awaitable (is the method async?)")
    return awaitable


async def _guarded(work: Work[T], label: str, clock: StepClock | None) -> T:
    """The provider call, with every BaseException it raises turned into an Exception (inside
    its task, so that a SystemExit never reaches the event loop)."""
    try:
        awaitable = _start(work)
        if clock is not None:
            return await _Stepped(awaitable, label, clock)  # type: ignore[no-any-return]
        return await awaitable
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # cancelled by us (deadline, shutdown): a cancellation
        raise ProviderRaised(asyncio.CancelledError(), "raised CancelledError") from None
    except Exception:
        raise
    except BaseException as escaped:  # SystemExit, KeyboardInterrupt, GeneratorExit
        raise ProviderRaised(escaped, f"raised {type(escaped).__name__}") from escaped


class ProviderThread:
    """An event loop in a daemon thread of its own, for a provider configured `threaded = true`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"callqos-provider-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, work: Work[T], label: str) -> T:
        """Run `work` on this thread's loop (contained there too) and await its outcome here."""
        future = asyncio.run_coroutine_threadsafe(_guarded(work, label, None), self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _on_loop(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """`work` run on `loop` (the server's), awaited from whichever loop calls."""
    if asyncio.get_running_loop() is loop:
        return await work
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))


class HostOnLoop:
    """The `ProviderHost` a threaded provider gets: each change it reports and each call it
    offers is handled on the server's loop, and its shared ledger (if any) runs there too."""

    def __init__(self, host: ProviderHost, loop: asyncio.AbstractEventLoop) -> None:
        self._host, self._loop = host, loop
        self.ledger: SharedLedger | None = None if host.ledger is None else LedgerOnLoop(host.ledger, loop)

    async def report_change(self, change: ProviderChange) -> None:
        await _on_loop(self._loop, self._host.report_change(change))

    async def offer_call(self, offer: IncomingOffer) -> str | None:
        return await _on_loop(self._loop, self._host.offer_call(offer))


class _RolledBack(Exception):
    """Ends a transaction held for a threaded provider whose block raised."""


class LedgerOnLoop(SharedLedger):
    """A shared ledger for a threaded provider. Its database connections belong to the server's
    loop, so each transaction is held open by a task there (`_hold`), and every step the
    provider takes in it is handed over and awaited; the provider's block ending commits it,
    its raising rolls it back."""

    def __init__(self, ledger: SharedLedger, loop: asyncio.AbstractEventLoop) -> None:
        self._ledger, self._loop = ledger, loop

    async def add_links(self, provider: str, links: Sequence[BookedLink]) -> None:
        await _on_loop(self._loop, self._ledger.add_links(provider, links))

    @contextlib.asynccontextmanager
    async def books(self, provider: str) -> AsyncIterator[LedgerBooks]:
        opened: concurrent.futures.Future[LedgerBooks] = concurrent.futures.Future()
        outcome: concurrent.futures.Future[bool] = concurrent.futures.Future()  # True: commit
        held = asyncio.run_coroutine_threadsafe(self._hold(provider, opened, outcome), self._loop)
        try:
            books = await asyncio.wrap_future(opened)
        except BaseException:
            held.cancel()
            raise
        try:
            yield _BooksOnLoop(books, self._loop)
        except BaseException:
            outcome.set_result(False)
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(held)
            raise
        outcome.set_result(True)
        await asyncio.wrap_future(held)  # committed, or the commit's failure raised here

    async def _hold(
        self,
        provider: str,
        opened: concurrent.futures.Future[LedgerBooks],
        outcome: concurrent.futures.Future[bool],
    ) -> None:
        try:
            async with self._ledger.books(provider) as books:
                opened.set_result(books)
                if not await asyncio.wrap_future(outcome):
                    raise _RolledBack
        except _RolledBack:
            pass
        except BaseException as error:
            if not opened.done():
                opened.set_exception(error)
            raise


class _BooksOnLoop:
    """A transaction's books, each step run on the server's loop."""

    def __init__(self, books: LedgerBooks, loop: asyncio.AbstractEventLoop) -> None:
        self._books, self._loop = books, loop

    async def links(self, ids: Sequence[str], *, lock: bool) -> dict[str, BookedLink]:
        return await _on_loop(self._loop, self._books.links(ids, lock=lock))

    async def reservations(self, *, calls: Sequence[str] = (), links: Sequence[str] = ()) -> list[BookedReservation]:
        return await _on_loop(self._loop, self._books.reservations(calls=calls, links=links))

    async def put_link(self, link: BookedLink) -> None:
        await _on_loop(self._loop, self._books.put_link(link))

    async def put_reservation(self, reservation: BookedReservation) -> None:
        await _on_loop(self._loop, self._books.put_reservation(reservation))

    async def delete_reservation(self, call: str) -> None:
        await _on_loop(self._loop, self._books.delete_reservation(call))


class Containment:
    """Runs provider calls contained (see the module). One per provider host."""

    def __init__(self, cancel_grace: float, warn_after: float) -> None:
        self.cancel_grace = cancel_grace
        self.clock = StepClock(warn_after)
        # Calls abandoned after ignoring their cancellation, kept so that they are not garbage
        # collected while running, and so that shutdown can say how many there are.
        self.abandoned: set[asyncio.Task[Any]] = set()

    async def run(
        self,
        work: Work[T],
        *,
        label: str,
        budget: float,
        thread: ProviderThread | None = None,
        late: Callable[[T], None] | None = None,
    ) -> T:
        """`work`'s result. Raises TimeoutError past `budget`, Wedged when it then ignored its
        cancellation for `cancel_grace` (`late(result)` is called if it ever returns after all),
        ProviderRaised for a BaseException or a non-awaitable, and whatever Exception it raised."""
        if thread is not None:
            task: asyncio.Task[T] = asyncio.ensure_future(thread.run(work, label))
        else:
            # The call's first step runs here, at once: a provider that decides without waiting
            # (the reference provider; most in-memory ones) is done then, with no task and no
            # timer. One that waits goes on in a task of its own, under its budget, as any call
            # did. Its steps all run in one Context of their own (a copy of the caller's), so that
            # a context variable it sets, or a span it makes current, is its own in every step.
            started = time.monotonic()
            context = contextvars.copy_context()
            coroutine = _guarded(work, label, self.clock)
            try:
                waiting = context.run(coroutine.send, None)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
            budget = max(0.0, budget - (time.monotonic() - started))
            task = asyncio.get_running_loop().create_task(_Resumed(coroutine, waiting).run(), context=context)
        try:
            done, _ = await asyncio.wait({task}, timeout=budget)
        except asyncio.CancelledError:  # our own caller is cancelled (shutdown): so is the provider
            task.cancel()
            self._abandon_unless_done(task, label, late)
            raise
        if done:
            return task.result()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.cancel_grace)
        if done:
            if not task.cancelled() and task.exception() is None:
                return task.result()  # it finished anyway, at the last moment
            raise TimeoutError(f"{label} took longer than {budget:.3g}s")
        self._abandon_unless_done(task, label, late)
        raise Wedged(f"{label} ignored its cancellation for {self.cancel_grace:g}s and was abandoned")

    def _abandon_unless_done(self, task: asyncio.Task[T], label: str, late: Callable[[T], None] | None) -> None:
        if task.done():
            return
        log.error("abandoned provider call %s: it does not end when cancelled", label)
        self.abandoned.add(task)

        def ended(finished: asyncio.Task[T]) -> None:
            self.abandoned.discard(finished)
            if finished.cancelled() or finished.exception() is not None:
                return
            log.warning("abandoned provider call %s returned after all", label)
            if late is not None:
                late(finished.result())

        task.add_done_callback(ended)


class LoopLag:
    """How late the event loop runs: sleeps `interval` again and again and measures the excess.
    Records each measurement, and warns (naming the provider step that blocked, if one did) when
    it exceeds `warn_after`."""

    def __init__(
        self, clock: StepClock, record: Callable[[float], None], warn_after: float, interval: float = 0.1
    ) -> None:
        self.clock, self.record, self.warn_after, self.interval = clock, record, warn_after, interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - started - self.interval)
            self.record(lag)
            worst = self.clock.take_worst()
            if lag >= self.warn_after:
                blamed = worst.label if worst.seconds >= lag / 2 else "no provider (server code or the machine)"
                log.warning(
                    "event loop lagged",
                    extra={"lag_seconds": round(lag, 3), "running": blamed, "step_seconds": round(worst.seconds, 3)},
                )
