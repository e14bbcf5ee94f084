"""The decorator that turns a coroutine into a registered Check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from callqos.conformance.model import Check, Level

REGISTRY: list[Check] = []
MUST, SHOULD = Level.MUST, Level.SHOULD


def check(
    id: str,
    title: str,
    level: Level,
    profile: str,
    reference: str,
    *,
    needs: tuple[str, ...] = (),
    timeout: float = 10.0,
    preflight: bool = False,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    def register(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        REGISTRY.append(
            Check(id, title, level, profile, reference, fn, needs, timeout, preflight, (fn.__doc__ or "").strip())
        )
        return fn

    return register
