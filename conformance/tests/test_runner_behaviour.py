"""Harness behaviour: known-failing lists (an unexpected pass fails the run), a hung provider
reported as a timeout instead of hanging the suite, harness errors kept apart from failures,
seeded ordering, and the verdict rules."""

from __future__ import annotations

import time
from pathlib import Path

from callqos.conformance.checks import all_checks
from callqos.conformance.model import Check, CheckResult, Level, Outcome
from callqos.conformance.runner import RunOptions, order, run_conformance
from callqos.conformance.verdict import profile_verdicts

BROKEN = "callqos.conformance.broken.providers:"


def test_known_failing_turns_a_failure_into_xfail_and_a_pass_into_a_run_failure() -> None:
    report = run_conformance(
        RunOptions(
            provider=BROKEN + "RefusedCounterOffer",
            checks=("CORE-ADM-00",),
            known_failing=("CORE-ADM-003", "CORE-ADM-001"),
            seed=1,
        )
    )
    outcomes = {r.check.id: r.outcome for r in report.results}
    assert outcomes["CORE-ADM-003"] == Outcome.XFAIL
    assert outcomes["CORE-ADM-001"] == Outcome.XPASS
    assert report.exit_code == 1 and [r.check.id for r in report.unexpected] == ["CORE-ADM-001"]
    assert report.verdict == "nonconformant"  # the verdict stays honest


def test_a_hung_provider_is_a_timeout_not_a_hang() -> None:
    # The server's own provider deadline is far away: the suite's per-check deadline must fire.
    started = time.monotonic()
    report = run_conformance(
        RunOptions(provider=BROKEN + "Hangs", provider_timeout=60, timeout_scale=0.2, seed=1, profiles=("core",))
    )
    assert time.monotonic() - started < 30
    first = report.results[0]
    assert first.check.id == "CORE-RESP-001" and first.outcome == Outcome.TIMEOUT
    assert all(r.outcome == Outcome.ERROR and "not run" in r.reason for r in report.results[1:])
    assert report.verdict == "nonconformant"


def test_unreachable_target_is_a_harness_error(tmp_path: Path) -> None:
    report = run_conformance(RunOptions(target="127.0.0.1:1", timeout_scale=0.2, output_dir=tmp_path))
    assert report.harness_error and report.verdict == "error" and report.exit_code == 2
    assert "<error" in (tmp_path / "junit.xml").read_text()


def test_seed_reproduces_the_order_and_preflight_stays_first() -> None:
    checks = all_checks()
    assert [c.id for c in order(checks, 42)] == [c.id for c in order(checks, 42)]
    assert [c.id for c in order(checks, 42)] != [c.id for c in order(checks, 43)]
    assert order(checks, 42)[0].id == "CORE-RESP-001"


async def _noop(ctx: object) -> None:
    return None


def _result(level: Level, outcome: Outcome, reason: str = "") -> CheckResult:
    check = Check(f"X-{level.value}-{outcome.value}", "t", level, "core", ("API-1",), "a source", _noop)
    return CheckResult(check, outcome, reason)


def test_verdict_rules() -> None:
    assert profile_verdicts([_result(Level.MUST, Outcome.PASSED)])["core"]["result"] == "conformant"
    assert (
        profile_verdicts([_result(Level.MUST, Outcome.PASSED), _result(Level.SHOULD, Outcome.FAILED)])["core"]["result"]
        == "partial"
    )
    assert profile_verdicts([_result(Level.MUST, Outcome.TIMEOUT)])["core"]["result"] == "nonconformant"
    assert (
        profile_verdicts([_result(Level.MUST, Outcome.PASSED), _result(Level.MUST, Outcome.ERROR)])["core"]["result"]
        == "partial"
    )
    assert (
        profile_verdicts(
            [
                _result(Level.MUST, Outcome.PASSED),
                _result(Level.MUST, Outcome.SKIPPED, "capability: x is not advertised"),
            ]
        )["core"]["result"]
        == "conformant"
    )
    assert (
        profile_verdicts(
            [
                _result(Level.MUST, Outcome.PASSED),
                _result(Level.MUST, Outcome.SKIPPED, "no infeasible flowspec is known"),
            ]
        )["core"]["result"]
        == "partial"
    )
