"""Delta debugging of a failing history: the smallest history that still breaks the same rule.

Why not Hypothesis's stateful testing, which generates and shrinks too: its machines are synchronous
(the suite is asyncio gRPC on one event loop, and a grpc.aio channel cannot move between loops), it has
no time budget (certification runs for `--budget SECONDS`), its replays of a failure depend on the
installed Hypothesis version (a reproduction printed here must replay from the seed alone, anywhere),
and each of its examples starts from a fresh state — against a real server every replay costs a reset
or a restart, so shrinking must count its replays. This shrinker makes a bounded number of replays
against the target, each from a reset, idle target:

1. cut the history after the failing step;
2. remove chunks of steps (halves, quarters, … single steps), keeping every removal that still fails
   with the same clause; steps on a call whose make was removed are removed with it;
3. flatten bursts into sequential steps, and drop their operations one by one;
4. simplify what is left: each direction to BEST_EFFORT, then optional fields removed one by one, the
   service level to NEEDED.

A candidate is kept only if it fails with the same clause as the original (so shrinking cannot slip to
another fault). Nondeterministic failures (a race in a burst) may not replay: the original is then
reported as found.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Iterator

from callqos.conformance.model_based.execute import Violation
from callqos.conformance.model_based.ops import Burst, Drop, Make, Op, Renegotiate, calls_of
from callqos.conformance.rules import ST, FlowSpec, ServiceLevel

Replay = Callable[[list[Op]], Awaitable[Violation | None]]
OPTIONAL = (
    "peak_bandwidth_bytes_per_second",
    "token_bucket_size_bytes",
    "latency_microseconds",
    "max_sdu_size_bytes",
    "minimum_policed_size_bytes",
)


def consistent(history: list[Op]) -> list[Op]:
    """Remove operations on calls no earlier step makes (their make was removed)."""
    made: set[int] = set()
    out: list[Op] = []
    for op in history:
        if isinstance(op, Make):
            made.add(op.call)
            out.append(op)
        elif isinstance(op, Renegotiate | Drop):
            if op.call in made:
                out.append(op)
        elif isinstance(op, Burst):
            kept: list[Make | Renegotiate | Drop] = []
            for each in op.ops:
                if isinstance(each, Make):
                    made.add(each.call)
                    kept.append(each)
                elif each.call in made:
                    kept.append(each)
            if kept:
                out.append(Burst(kept))
        else:
            out.append(op)
    return out


def chunks(history: list[Op]) -> Iterator[list[Op]]:
    """Candidates with a chunk removed: halves first, then smaller chunks down to single steps."""
    size = max(len(history) // 2, 1)
    while True:
        for start in range(0, len(history), size):
            yield history[:start] + history[start + size :]
        if size == 1:
            return
        size //= 2


def flattened(history: list[Op]) -> Iterator[list[Op]]:
    for index, op in enumerate(history):
        if isinstance(op, Burst):
            yield history[:index] + list(op.ops) + history[index + 1 :]
            for drop in range(len(op.ops)):
                rest = op.ops[:drop] + op.ops[drop + 1 :]
                if rest:
                    yield [*history[:index], Burst(rest), *history[index + 1 :]]


def simpler_specs(spec: FlowSpec) -> Iterator[FlowSpec]:
    if spec.service_type not in (ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_NO_CHANGE):
        yield FlowSpec(service_type=ST.SERVICE_TYPE_BEST_EFFORT)
    for name in OPTIONAL:
        if spec.HasField(name):
            simpler = FlowSpec()
            simpler.CopyFrom(spec)
            simpler.ClearField(name)
            if name == "max_sdu_size_bytes":
                simpler.ClearField("minimum_policed_size_bytes")
            yield simpler
    if spec.peak_bandwidth_unbounded:
        simpler = FlowSpec()
        simpler.CopyFrom(spec)
        simpler.peak_bandwidth_unbounded = False
        yield simpler


def simplified(history: list[Op]) -> Iterator[list[Op]]:
    for index, op in enumerate(history):
        if not isinstance(op, Make | Renegotiate):
            continue
        if op.level not in (0, ServiceLevel.SERVICE_LEVEL_NEEDED):
            candidate = copy.deepcopy(op)
            candidate.level = ServiceLevel.SERVICE_LEVEL_NEEDED
            yield [*history[:index], candidate, *history[index + 1 :]]
        for direction in ("sending", "receiving"):
            for spec in simpler_specs(getattr(op.qos, direction)):
                candidate = copy.deepcopy(op)
                getattr(candidate.qos, direction).CopyFrom(spec)
                yield [*history[:index], candidate, *history[index + 1 :]]


async def shrink(
    replay: Replay, history: list[Op], violation: Violation, seconds: float
) -> tuple[list[Op], Violation, int]:
    """The smallest failing history found within `seconds`, its violation, and how many replays it took."""
    deadline = time.monotonic() + seconds
    replays = 0
    best, found = history, violation

    async def fails(candidate: list[Op]) -> Violation | None:
        nonlocal replays
        replays += 1
        got = await replay(candidate)
        return got if got is not None and got.clause == violation.clause else None

    cut = consistent(history[: violation.step + 1]) if violation.step < len(history) else history
    if cut != history and time.monotonic() < deadline:
        got = await fails(cut)
        if got is not None:
            best, found = cut, got
    for candidates in (chunks, flattened, simplified):
        progress = True
        while progress and time.monotonic() < deadline:
            progress = False
            for candidate in candidates(best):
                if time.monotonic() >= deadline:
                    break
                candidate = consistent(candidate)
                if not candidate or candidate == best:
                    continue
                got = await fails(candidate)
                if got is not None:
                    best, found, progress = candidate, got, True
                    break
    return best, found, replays


def renumbered(history: list[Op]) -> list[Op]:
    """The calls renamed m0, m1, … in the order the history makes them (for the reproduction)."""
    order: dict[int, int] = {}
    for op in history:
        for call in sorted(calls_of(op)):
            order.setdefault(call, len(order))
    out = copy.deepcopy(history)
    for op in out:
        for each in op.ops if isinstance(op, Burst) else [op]:
            if isinstance(each, Make | Renegotiate | Drop):
                each.call = order[each.call]
    return out


def size(history: list[Op]) -> int:
    return sum(len(op.ops) if isinstance(op, Burst) else 1 for op in history)
