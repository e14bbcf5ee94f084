"""MODEL: random operation histories judged by an oracle derived from the contract (model_based/)."""

from __future__ import annotations

import time

from callqos.conformance.checks.registry import MUST, check
from callqos.conformance.exceptions import CheckFailed, CheckSkipped
from callqos.conformance.harness import CheckContext
from callqos.conformance.model_based import generate
from callqos.conformance.model_based.budget import STEPS, Budget
from callqos.conformance.model_based.execute import Run, Violation, reset
from callqos.conformance.model_based.ops import Op, describe
from callqos.conformance.model_based.repro import script
from callqos.conformance.model_based.shrink import renumbered, shrink, size
from callqos.conformance.model_based.world import World, discover

CLAUSES = (
    *("PROV-1", "PROV-2", "PROV-3", "PROV-4", "PROV-6", "PROV-11", "PROV-16"),
    *("GRANT-1", "GRANT-3", "GRANT-5", "LEVEL-1", "LEVEL-2", "LEVEL-3", "ADMIT-1", "ADMIT-2", "ADMIT-5"),
    *("SETQOS-1", "SETQOS-2", "SETQOS-3", "SETQOS-4", "SETQOS-7", "CALL-1", "CALL-2"),
    *("LINK-2", "LINK-3", "LINK-4", "EVENT-4", "DELAY-4"),
)


def header(ctx: CheckContext) -> str:
    server = ctx.session.server
    lines = [
        "#!/bin/sh",
        "# A reproduction written by callqos-conformance (MODEL-001).",
        "export CALLQOS_PRINCIPAL=repro",
    ]
    if server is None:
        return "\n".join(
            [*lines, f"export CALLQOS_TARGET=${{CALLQOS_TARGET:-{ctx.session.target or '127.0.0.1:50051'}}}"]
        )
    return "\n".join(
        [
            *lines,
            "# The provider, hosted by a server with SQLite storage (so a restart keeps the calls):",
            "cat > repro.toml <<'TOML'",
            server.toml().rstrip(),
            "TOML",
            "export CALLQOS_TARGET=${CALLQOS_TARGET:-127.0.0.1:50071}",
            "serve() { callqos serve --config repro.toml --data-dir ./repro-data --listen $CALLQOS_TARGET "
            ">>repro-server.log 2>&1 & SERVER=$!; until callqos providers >/dev/null 2>&1; do sleep 0.2; done; }",
            'restart_server() { kill "$SERVER"; wait "$SERVER"; serve; }',
            "rm -rf ./repro-data; serve; trap 'kill $SERVER' EXIT",
        ]
    )


@check(
    "MODEL-001",
    "Random histories of makes, renegotiations, drops, capacity changes, restarts and concurrent bursts keep every "
    "admission and accounting rule",
    MUST,
    "model",
    spec=CLAUSES,
    source="the provider contract (providers/base.py), TAPI/Winsock 2 QoS, RFC 2211/2212, as stated in SPEC.md",
    needs=("qos_supported",),
    timeout=10,
    last=True,
    budgeted=True,
)
async def histories(ctx: CheckContext) -> None:
    """Histories of 30 steps generated from the run's seed run until --budget (default 20 s) or --histories is spent.
    After every step: each grant satisfies its request at NEEDED, fits what was free and gives IF_AVAILABLE all of a
    request that fits; each refusal is justified (it did not fit), reserves nothing in either direction, names the
    call and its counter-offer is granted on an immediate retry; NO_CHANGE directions are kept byte for byte; a drop
    frees exactly the call's reservation; a capacity change sheds only when the calls no longer fit, degrading or
    dropping; a restart brings every call and the capacity back; a burst never over-admits; ListLinks reports exactly
    what the connected calls hold. The first failing history is shrunk and reported with a reproduction."""
    world = await discover(ctx)
    problem = await reset(ctx, world)
    if problem:
        raise CheckSkipped(f"the link is not the suite's alone ({problem}): histories would judge others' calls")
    budget = Budget.of(ctx.session)
    started = time.monotonic()
    index = steps = 0
    token = ctx.session.run_token
    while (index < budget.histories) if budget.histories else (time.monotonic() - started < budget.seconds):
        history = generate.history(ctx.session.seed, index, world, STEPS)
        run = Run(ctx, world, f"q{token}-h{index}")
        violation = await run.execute(history)
        if violation is not None:
            ctx.session.histories_run = index + 1
            await report(ctx, world, budget, index, history, violation)
        problem = await reset(ctx, world)
        if problem:
            raise CheckFailed(f"after history {index} (every call dropped, each drop judged): {problem}")
        index += 1
        steps += size(history)
        ctx.session.histories_run = index
    ctx.detail = f"{index} histories, {steps} operations, seed {ctx.session.seed}, in {time.monotonic() - started:.1f}s"


async def report(
    ctx: CheckContext, world: World, budget: Budget, index: int, history: list[Op], violation: Violation
) -> None:
    """Shrink the failing history, replay the smallest once more for its observations, and fail with it."""
    replays = 0

    async def replay(candidate: list[Op]) -> Violation | None:
        nonlocal replays
        replays += 1
        problem = await reset(ctx, world)
        if problem:
            raise CheckFailed(
                f"[{violation.clause}] {violation.message} (history {index}, step {violation.step + 1}: "
                f"{violation.op}); not shrunk: the target could not be reset between replays ({problem})"
            )
        return await Run(ctx, world, f"q{ctx.session.run_token}-s{replays}").execute(candidate)

    smallest, _found, _ = await shrink(replay, history, violation, budget.shrink_seconds)
    smallest = renumbered(smallest)
    await reset(ctx, world)
    final: Run | None = Run(ctx, world, f"q{ctx.session.run_token}-final")
    assert final is not None
    shown = await final.execute(smallest)
    if shown is None or shown.clause != violation.clause:
        smallest, shown, final = history, violation, None  # it did not replay (a race): report what was found
    failing = shown.step + 1 if shown.step < len(smallest) else "teardown"
    steps = "\n".join(f"  {n + 1}. {describe(op)}" for n, op in enumerate(smallest))
    observed = final.log if final is not None else []
    ctx.reproduction = script(
        smallest,
        world,
        header=header(ctx),
        observed=observed,
        failure=str(shown),
        offers=final.offers if final is not None else {},
    )
    await reset(ctx, world)
    raise CheckFailed(
        f"{shown} — at step {failing} of a history of {size(smallest)} operations "
        f"(shrunk from {size(history)} in {replays} replays; seed {ctx.session.seed}, history {index}; run again with "
        f"--seed {ctx.session.seed} --histories {index + 1}):\n{steps}"
    )
