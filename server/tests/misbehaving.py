"""Providers that break the contract in every way a provider can, to show the server contains
each: they raise what is not an Exception, answer nonsense, ignore cancellation, block the event
loop. All are the reference provider except for the one method they break. Loaded by a server
subprocess as `misbehaving:<Class>` (with this directory on its PYTHONPATH)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from callqos.server.providers import AdmissionRequest, Grant
from callqos.server.providers.reference import ReferenceProvider


class ExitingAdmit(ReferenceProvider):
    async def admit(self, request: AdmissionRequest) -> Any:
        raise SystemExit(3)


class InterruptingAdmit(ReferenceProvider):
    async def admit(self, request: AdmissionRequest) -> Any:
        raise KeyboardInterrupt


class CancellingAdmit(ReferenceProvider):
    """Raises CancelledError though nobody cancelled it."""

    async def admit(self, request: AdmissionRequest) -> Any:
        raise asyncio.CancelledError


class NoneAdmit(ReferenceProvider):
    async def admit(self, request: AdmissionRequest) -> Any:
        return None


class GarbageAdmit(ReferenceProvider):
    async def admit(self, request: AdmissionRequest) -> Any:
        return "granted"


class GrantOfGarbage(ReferenceProvider):
    async def admit(self, request: AdmissionRequest) -> Any:
        return Grant(qos="everything")  # type: ignore[arg-type]


class SyncAdmit(ReferenceProvider):
    """`admit` is not a coroutine function: it returns a Grant directly."""

    def admit(self, request: AdmissionRequest) -> Any:  # type: ignore[override]
        return Grant(qos=request.qos)


class ExitingAtOnceAdmit(ReferenceProvider):
    """`admit` is a plain method that raises SystemExit as it is called, before any awaitable
    exists: only a provider call started inside the containment catches that."""

    def admit(self, request: AdmissionRequest) -> Any:  # type: ignore[override]
        raise SystemExit(4)


class WedgedAdmit(ReferenceProvider):
    """Never answers, and swallows every cancellation."""

    async def admit(self, request: AdmissionRequest) -> Any:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue


class LateRenegotiate(ReferenceProvider):
    """Its first renegotiation ignores cancellation and grants after `late_seconds`, long after
    the host gave up on it (a provider whose network answers late); the others are the reference
    provider's."""

    late_done = False

    async def renegotiate(self, request: AdmissionRequest) -> Any:
        if not self.late_done:
            self.late_done = True
            until = time.monotonic() + float(self.settings.get("late_seconds", 2.0))
            while time.monotonic() < until:
                try:
                    await asyncio.sleep(until - time.monotonic())
                except asyncio.CancelledError:
                    continue
        return await super().renegotiate(request)


class WedgedStop(ReferenceProvider):
    """Stops never, and swallows every cancellation; a worker thread of its own blocks for ever too."""

    async def stop(self) -> None:
        asyncio.get_running_loop().run_in_executor(None, time.sleep, 3600)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue


class BlockingStop(ReferenceProvider):
    """Blocks the event loop itself in stop(): only a deadline outside the loop can end this."""

    async def stop(self) -> None:
        time.sleep(3600)  # noqa: ASYNC251 -- the misbehaviour under test


class BlockingAdmit(ReferenceProvider):
    """Blocks the event loop (time.sleep) for `block_seconds` in every admit — as a provider that
    calls a blocking library would. With `threaded = true` only its own loop is blocked."""

    async def admit(self, request: AdmissionRequest) -> Any:
        time.sleep(float(self.settings.get("block_seconds", 2.0)))  # noqa: ASYNC251 -- the misbehaviour
        return await super().admit(request)
