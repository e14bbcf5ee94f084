"""Keeping a leased call alive while the application holds it: :class:`KeepAlive` (a thread, for
:class:`~callqos.client.Client`) and :class:`AsyncKeepAlive` (a task, for
:class:`~callqos.client.AsyncClient`), made by ``client.keep_alive(call)``.

.. code-block:: python

    call = client.make_call("sip:bob@example.com", sending=controlled_load(500_000), lease=30)
    with client.keep_alive(call) as lease:
        while not lease.lost:
            stream_media()   # the call is renewed every 10 s meanwhile
    # the call is dropped here; had its lease been lost, LeaseLostError is raised here

A call made with a lease (``lease=`` seconds, or the server's maximum) ends LEASE_EXPIRED unless
it is extended in time. The helper extends it every third of its lease (so two renewals in a row
may fail, and be retried, before the lease ends), stops when the block ends, and then drops the
call unless told not to (``drop=False`` leaves it to run out its lease). It reports a lost lease —
the server said LEASE_EXPIRED, the call ended otherwise, or no renewal got through before the
lease ended — by ``lost`` / ``error``, by ``on_lost(error)`` (called once, from the helper's
thread or task), by ``check()``, and by raising :class:`LeaseLostError` when the block ends
without an exception of its own. Whether the lease ended is judged conservatively by the local
monotonic clock: from when the last successful renewal was *sent*.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from callqos.v1 import call_pb2

from .errors import CallQosError, DeadlineExceededError, UnavailableError

__all__ = ["AsyncKeepAlive", "KeepAlive", "LeaseLostError"]

# The shortest pause between two renewals, however short the lease.
_MIN_INTERVAL = 0.05


class _Client(Protocol):
    """What :class:`KeepAlive` needs of a :class:`~callqos.client.Client`."""

    timeout: float

    def extend(self, name: str, *, timeout: float | None = None) -> call_pb2.Call: ...

    def drop(self, name: str) -> call_pb2.Call: ...


class _AsyncClient(Protocol):
    """What :class:`AsyncKeepAlive` needs of an :class:`~callqos.client.AsyncClient`."""

    timeout: float

    def extend(self, name: str, *, timeout: float | None = None) -> Awaitable[call_pb2.Call]: ...

    def drop(self, name: str) -> Awaitable[call_pb2.Call]: ...


class LeaseLostError(Exception):
    """A kept-alive call lost its lease: ``cause`` is the error that showed it (a
    :class:`~callqos.client.LeaseExpiredError`, another reason the call ended, or the last
    transient error when no renewal got through in time)."""

    def __init__(self, call: str, message: str, cause: CallQosError | None = None) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.cause = cause


def _transient(error: CallQosError) -> bool:
    """A renewal that failed this way may succeed if tried again before the lease ends."""
    return isinstance(error, UnavailableError | DeadlineExceededError)


class _Lease:
    """What both helpers share: the call, its lease, the pace of renewals, the loss."""

    def __init__(
        self,
        call: call_pb2.Call,
        interval: float | None,
        on_lost: Callable[[LeaseLostError], object] | None,
        drop: bool,
    ) -> None:
        if not call.HasField("lease_duration"):
            raise ValueError(f"{call.name} has no lease to keep alive (make it with lease=...)")
        self.call = call
        self.name = call.name
        self.lease_seconds = call.lease_duration.ToNanoseconds() / 1e9
        self.interval = max(_MIN_INTERVAL, interval if interval is not None else self.lease_seconds / 3)
        # Monotonic time by which the lease has surely ended if no renewal gets through: the
        # server's expire time is its own clock's, so the local one counts from what it knows.
        remaining = call.lease_expire_time.ToNanoseconds() / 1e9 - time.time()
        self.deadline = time.monotonic() + min(max(remaining, 0.0), self.lease_seconds)
        self.renewals = 0
        self.error: LeaseLostError | None = None
        self._on_lost = on_lost
        self._drop = drop  # whether closing drops the call

    @property
    def lost(self) -> bool:
        """Whether the lease was lost (the call has ended, or is about to)."""
        return self.error is not None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost."""
        if self.error is not None:
            raise self.error

    def renewed(self, call: call_pb2.Call, sent_at: float) -> float:
        """A renewal sent at monotonic `sent_at` succeeded; the pause before the next one."""
        self.call = call
        self.renewals += 1
        self.deadline = sent_at + call.lease_duration.ToNanoseconds() / 1e9
        return self.interval

    def failed(self, error: CallQosError) -> float | None:
        """A renewal failed: the pause before trying again, or None when the lease is lost."""
        if not _transient(error):
            self.lose(LeaseLostError(self.name, f"the lease could not be renewed: {error}", error))
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.lose(LeaseLostError(self.name, "no renewal got through before the lease ended", error))
            return None
        return max(_MIN_INTERVAL, min(self.interval, remaining / 4))

    def attempt_timeout(self, default: float) -> float:
        """An attempt is worth making only while the lease may still be renewed."""
        return max(_MIN_INTERVAL, min(default, self.deadline - time.monotonic()))

    def lose(self, error: LeaseLostError) -> None:
        if self.error is None:
            self.error = error
            if self._on_lost is not None:
                self._on_lost(error)

    def ending(self, exc_type: type[BaseException] | None) -> None:
        """At the end of the block: a lost lease is raised unless the block raised already."""
        if self.error is not None and exc_type is None:
            raise self.error


class KeepAlive(_Lease):
    """Renews a call's lease from a thread of its own while the ``with`` block runs (see the module
    docstring). Made by :meth:`Client.keep_alive <callqos.client.sync.Client.keep_alive>`."""

    def __init__(
        self,
        client: _Client,
        call: call_pb2.Call,
        *,
        interval: float | None = None,
        drop: bool = True,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> None:
        super().__init__(call, interval, on_lost, drop)
        self._client = client
        self._stop = threading.Event()
        self._lost_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"callqos keep-alive {call.name}", daemon=True)

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost (True) or `timeout` passes (False)."""
        return self._lost_event.wait(timeout)

    def lose(self, error: LeaseLostError) -> None:
        super().lose(error)
        self._lost_event.set()

    def _run(self) -> None:
        pause: float | None = self.interval
        while pause is not None and not self._stop.wait(pause):
            sent_at = time.monotonic()
            try:
                call = self._client.extend(self.name, timeout=self.attempt_timeout(self._client.timeout))
            except CallQosError as error:
                pause = self.failed(error)
            else:
                pause = self.renewed(call, sent_at)

    def close(self) -> None:
        """Stop renewing (and drop the call, unless made with ``drop=False``). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._drop:
            try:
                self.call = self._client.drop(self.name)
            except CallQosError:
                pass  # unreachable now: the call ends with its lease anyway

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        self.ending(exc_type)


class AsyncKeepAlive(_Lease):
    """Renews a call's lease from a task while the ``async with`` block runs (see the module
    docstring). Made by :meth:`AsyncClient.keep_alive <callqos.client.aio.AsyncClient.keep_alive>`."""

    def __init__(
        self,
        client: _AsyncClient,
        call: call_pb2.Call,
        *,
        interval: float | None = None,
        drop: bool = True,
        on_lost: Callable[[LeaseLostError], object] | None = None,
    ) -> None:
        super().__init__(call, interval, on_lost, drop)
        self._client = client
        self._task: asyncio.Task[None] | None = None
        self._lost_event = asyncio.Event()
        self._closed = False

    def start(self) -> AsyncKeepAlive:
        """Start renewing (inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"callqos keep-alive {self.name}")
        return self

    async def wait_lost(self) -> LeaseLostError:
        """Wait until the lease is lost; the error that says why."""
        await self._lost_event.wait()
        assert self.error is not None
        return self.error

    def lose(self, error: LeaseLostError) -> None:
        super().lose(error)
        self._lost_event.set()

    async def _run(self) -> None:
        pause: float | None = self.interval
        while pause is not None:
            await asyncio.sleep(pause)
            sent_at = time.monotonic()
            renewal: Awaitable[call_pb2.Call] = self._client.extend(
                self.name, timeout=self.attempt_timeout(self._client.timeout)
            )
            try:
                call = await renewal
            except CallQosError as error:
                pause = self.failed(error)
            else:
                pause = self.renewed(call, sent_at)

    async def close(self) -> None:
        """Stop renewing (and drop the call, unless made with ``drop=False``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._drop:
            try:
                self.call = await self._client.drop(self.name)
            except CallQosError:
                pass  # unreachable now: the call ends with its lease anyway

    async def __aenter__(self) -> AsyncKeepAlive:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
        self.ending(exc_type)
