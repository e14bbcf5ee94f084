"""The model-based checker's parts without a server: the oracle decides admissibility from the contract
alone; a seed always gives the same history and every generated request is valid; the shrinker finds a
minimal failing history within its replays; a reproduction is made of commands the CLI accepts."""

from __future__ import annotations

import asyncio
import shlex
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from callqos.cli.main import build_parser
from callqos.conformance.harness import CheckContext
from callqos.conformance.model_based import generate
from callqos.conformance.model_based.execute import Run, Violation
from callqos.conformance.model_based.ops import Burst, Drop, Make, Op, Renegotiate, Restart, SetCapacity, calls_of
from callqos.conformance.model_based.oracle import admissible, generous_latency
from callqos.conformance.model_based.repro import script
from callqos.conformance.model_based.shrink import consistent, renumbered, shrink, size
from callqos.conformance.model_based.world import World
from callqos.conformance.rules import ST, Path, QosSpec, best_effort, cl, flow, qos_problems
from callqos.conformance.verify import Limits, grant_problems, refusal_problems
from callqos.v1 import call_pb2

Level = call_pb2.ServiceLevel
CAPACITY = 1_000_000
WORLD = World(
    provider="providers/sut",
    capacity=CAPACITY,
    link="providers/sut/links/default",
    path=Path(1500, 1000, 2000, 1500),
    service_types=frozenset({ST.SERVICE_TYPE_BEST_EFFORT, ST.SERVICE_TYPE_CONTROLLED_LOAD, ST.SERVICE_TYPE_GUARANTEED}),
    renegotiation=True,
    set_capacity=True,
    restartable=True,
    limits=Limits(frozenset({1, 2, 3}), CAPACITY, 1500, 3000, True),
)


def guaranteed(rate: int, latency: int | None = None, peak: int | None = None) -> QosSpec:
    spec = flow(ST.SERVICE_TYPE_GUARANTEED, token_rate_bytes_per_second=rate)
    if peak is None:
        spec.peak_bandwidth_unbounded = True
    else:
        spec.peak_bandwidth_bytes_per_second = peak
    if latency is not None:
        spec.latency_microseconds = latency
    return QosSpec(sending=spec, receiving=best_effort())


def test_admissible_follows_the_accounting_rules() -> None:
    free = (CAPACITY // 2, CAPACITY)
    assert admissible(QosSpec(sending=cl(CAPACITY // 2), receiving=best_effort()), free, WORLD) is True
    assert admissible(QosSpec(sending=cl(CAPACITY // 2 + 1), receiving=best_effort()), free, WORLD) is False
    # GUARANTEED holds its peak: a token rate that fits with a peak that does not is refused.
    assert admissible(guaranteed(CAPACITY // 4, peak=CAPACITY // 2 + 1), free, WORLD) is False
    # A latency below the path's fixed delay must be refused; a generous one admitted; between: either.
    assert admissible(guaranteed(CAPACITY // 4, latency=1500), free, WORLD) is False
    generous = generous_latency(guaranteed(CAPACITY // 4).sending, WORLD)
    assert admissible(guaranteed(CAPACITY // 4, latency=generous), free, WORLD) is True
    assert admissible(guaranteed(CAPACITY // 4, latency=3100), free, WORLD) is None
    # A receiver whose rate the provider chooses may go either way; best effort always fits.
    assert admissible(QosSpec(sending=best_effort(), receiving=cl(None)), (0, 0), WORLD) is None
    assert admissible(QosSpec(sending=best_effort(), receiving=best_effort()), (0, 0), WORLD) is True
    assert (
        admissible(QosSpec(sending=flow(ST.SERVICE_TYPE_NETWORK_CONTROL), receiving=best_effort()), free, WORLD)
        is False
    )


def requests(history: list[Op]) -> list[QosSpec]:
    out: list[QosSpec] = []
    for op in history:
        for each in op.ops if isinstance(op, Burst) else [op]:
            if isinstance(each, Make):
                out.append(each.qos)
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=50))
def test_a_seed_gives_one_history_of_valid_requests(seed: int, index: int) -> None:
    history = generate.history(seed, index, WORLD, 30)
    assert history == generate.history(seed, index, WORLD, 30)
    assert len(history) == 30
    for qos in requests(history):
        assert qos_problems(qos, 1500) == [], qos
    made: set[int] = set()
    for op in history:
        for each in op.ops if isinstance(op, Burst) else [op]:
            if isinstance(each, Make):
                assert each.call not in made
                made.add(each.call)
            elif isinstance(each, Renegotiate | Drop):
                assert each.call in made  # operations only name calls made before them
        if isinstance(op, Burst):
            assert len({call for each in op.ops for call in calls_of(each)}) == len(op.ops)  # distinct calls


def test_histories_cover_every_operation_kind() -> None:
    kinds: set[type] = set()
    for index in range(20):
        for op in generate.history(1, index, WORLD, 30):
            kinds.add(type(op))
            if isinstance(op, Burst):
                kinds.update(type(each) for each in op.ops)
    assert kinds == {Make, Renegotiate, Drop, SetCapacity, Restart, Burst}
    qos = [q for index in range(20) for q in requests(generate.history(1, index, WORLD, 30))]
    assert any(q.sending.service_type == ST.SERVICE_TYPE_GUARANTEED and q.sending.peak_bandwidth_unbounded for q in qos)
    assert any(q.sending.token_rate_bytes_per_second >= 2**63 for q in qos)  # the edges of the valid range


def test_the_shrinker_finds_the_smallest_history_that_breaks_the_same_rule() -> None:
    # A pretend target that breaks LINK-2 whenever a history drops m3 after a capacity change; everything
    # else is noise the shrinker must take away.
    history = generate.history(5, 0, WORLD, 30)
    culprit: list[Op] = [Make(3, Level.SERVICE_LEVEL_NEEDED, QosSpec(sending=cl(10), receiving=best_effort()))]
    culprit += [SetCapacity(5), Drop(3)]
    history = history[:10] + culprit[:1] + history[10:20] + culprit[1:] + history[20:]
    history = [op for op in history if not (isinstance(op, Make) and op.call == 3 and op is not culprit[0])]
    history = consistent(history)
    replays = 0

    async def replay(candidate: list[Op]) -> Violation | None:
        nonlocal replays
        replays += 1
        seen_capacity = False
        for step, op in enumerate(candidate):
            seen_capacity |= isinstance(op, SetCapacity)
            if (
                isinstance(op, Drop)
                and op.call == 3
                and seen_capacity
                and any(isinstance(other, Make) and other.call == 3 for other in candidate[:step])
            ):
                return Violation(step, "LINK-2", "the link holds what m3 held", "drop m3")
        return None

    first = asyncio.run(replay(history))
    assert first is not None
    smallest, found, count = asyncio.run(shrink(replay, history, first, 30.0))
    assert found.clause == "LINK-2"
    assert size(smallest) == 3, smallest
    assert sorted(type(op).__name__ for op in smallest) == ["Drop", "Make", "SetCapacity"]
    make = next(op for op in smallest if isinstance(op, Make))
    assert make.qos.sending.service_type == ST.SERVICE_TYPE_BEST_EFFORT  # simplified too
    assert count == replays - 1 and count < 200  # every replay counted, the first one was ours


def test_a_reproduction_is_made_of_commands_the_cli_accepts() -> None:
    parser = build_parser()
    history: list[Op] = [
        Make(7, Level.SERVICE_LEVEL_IF_AVAILABLE, guaranteed(300, latency=9000, peak=600)),
        Renegotiate(
            7, QosSpec(sending=flow(ST.SERVICE_TYPE_NO_CHANGE), receiving=cl(None)), Level.SERVICE_LEVEL_NEEDED
        ),
        Burst([Make(9, Level.SERVICE_LEVEL_NEEDED, QosSpec(sending=cl(5), receiving=cl(6))), Drop(7)]),
        SetCapacity(1000),
        Restart(),
    ]
    text = script(renumbered(history), WORLD, header="# header", observed=[], failure="[LINK-2] x", offers={})
    commands = [line for line in text.splitlines() if line.startswith(("callqos", "{"))]
    assert "callqos make sip:m0-$R@example.test --call-id m0-$R --level if-available" in text
    assert "--send-type guaranteed --send-rate 300 --send-peak 600 --send-latency 9000" in text
    assert "restart_server" in text
    for line in commands:
        for command in line.strip("{} ;").split(" & "):
            words = shlex.split(command.replace("wait", "").replace("$R", "1").strip())
            if words and words[0] == "callqos":
                parser.parse_args(words[1:])  # exits (SystemExit) on a flag the CLI does not have


def test_grants_and_counter_offers_are_judged_by_the_capacity_the_link_has_now() -> None:
    run = Run(cast(CheckContext, None), WORLD, "q")  # judging alone needs no target

    def clauses(problems: list[str]) -> list[str]:
        return [problem.split("]")[0] + "]" for problem in problems]

    def offered(rate: int) -> list[str]:
        refusal = call_pb2.QosRefusal(call="calls/q", counter_offer=QosSpec(sending=best_effort(), receiving=cl(rate)))
        return clauses(refusal_problems("calls/q", refusal, run.limits))

    def granted(rate: int) -> list[str]:
        qos = QosSpec(sending=cl(rate), receiving=best_effort())
        return clauses(grant_problems(Level.SERVICE_LEVEL_NEEDED, qos, qos, run.limits))

    run.model.capacity = CAPACITY + 1  # UpdateLink raised the link above the advertised maximum
    assert offered(CAPACITY + 1) == granted(CAPACITY + 1) == []
    assert offered(CAPACITY + 2) == ["[PROV-2]"] and granted(CAPACITY + 2) == ["[ADMIT-1]"]
    run.model.capacity = CAPACITY // 2  # and lowered it below
    assert offered(CAPACITY // 2) == granted(CAPACITY // 2) == []
    assert offered(CAPACITY // 2 + 1) == ["[PROV-2]"] and granted(CAPACITY // 2 + 1) == ["[ADMIT-1]"]
