"""The decorator that turns a coroutine into a registered Check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from callqos.conformance.harness import CheckContext
from callqos.conformance.model import Check, Level

REGISTRY: list[Check] = []
MUST, SHOULD = Level.MUST, Level.SHOULD
CheckRun = Callable[[CheckContext], Awaitable[None]]


def check(
    id: str,
    title: str,
    level: Level,
    profile: str,
    *,
    spec: tuple[str, ...],
    source: str,
    needs: tuple[str, ...] = (),
    timeout: float = 10.0,
    preflight: bool = False,
    last: bool = False,
    budgeted: bool = False,
    sentinel: bool = False,
    foundation: bool = False,
) -> Callable[[CheckRun], CheckRun]:
    """Register the decorated coroutine as check `id`. `spec` names the conformance/SPEC.md
    clauses it verifies; `source` is the short source of those clauses, for reports."""

    def register(fn: CheckRun) -> CheckRun:
        REGISTRY.append(
            Check(
                id,
                title,
                level,
                profile,
                spec,
                source,
                fn,
                needs,
                timeout,
                preflight,
                (fn.__doc__ or "").strip(),
                last=last,
                budgeted=budgeted,
                sentinel=sentinel,
                foundation=foundation,
            )
        )
        return fn

    return register
