"""Harness behaviour: known-failing lists (an unexpected pass fails the run), a hung provider
reported as a timeout instead of hanging the suite, harness errors kept apart from failures,
seeded ordering, and the verdict rules."""

from __future__ import annotations

import time
from pathlib import Path

from callqos.conformance.checks import all_checks
from callqos.conformance.model import Check, CheckResult, Level, Outcome, Report
from callqos.conformance.runner import RunOptions, order, run_conformance
from callqos.conformance.serverlog import parse
from callqos.conformance.verdict import profile_verdicts

BROKEN = "callqos.conformance.broken.providers:"


def test_known_failing_turns_a_failure_into_xfail_and_a_pass_into_a_run_failure() -> None:
    report = run_conformance(
        RunOptions(
            provider=BROKEN + "RefusedCounterOffer",
            checks=("CORE-ADM-00",),
            known_failing=("CORE-ADM-002", "CORE-ADM-003", "CORE-ADM-001"),
            seed=1,
        )
    )
    outcomes = {r.check.id: r.outcome for r in report.results}
    assert outcomes["CORE-ADM-002"] == Outcome.XFAIL  # the suite's own verdict on the counter-offer
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
    assert order(checks, 42)[-1].id == "MODEL-001"  # the longest, after everything else
    assert "CORE-IDLE-001" not in [c.id for c in order(checks, 42)]  # recorded between checks, not run


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


def test_a_provider_that_raises_is_a_finding_of_the_check_during_which_the_server_logged_it() -> None:
    report = run_conformance(RunOptions(provider=BROKEN + "RaisesOnHugeRate", checks=("CORE-ADM-019",), seed=1))
    result = next(r for r in report.results if r.check.id == "CORE-ADM-019")
    assert result.outcome == Outcome.FAILED
    assert result.findings and "provider sut failed in admit" in result.findings[0]
    assert "struct.error" in result.findings[0] or "error" in result.findings[0]
    assert "the hosting server logged" in result.reason


def test_server_log_findings_are_errors_and_tracebacks_only() -> None:
    text = "\n".join(
        [
            "--- start #1: python -m callqos.server",
            '{"time": "t1", "level": "info", "message": "serving"}',
            '{"time": "t2", "level": "error", "message": "provider p failed in admit", '
            '"exception": "Traceback (most recent call last):\\n  File x\\nValueError: Value out of range: 7"}',
            '{"time": "t3", "level": "warning", "message": "slow"}',
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "RuntimeError: outside the log format",
        ]
    )
    found = parse(text + "\n")
    assert [(f.time, f.message, f.exception) for f in found] == [
        ("t2", "provider p failed in admit", "ValueError: Value out of range: 7"),
        ("", "traceback outside the log format", "RuntimeError: outside the log format"),
    ]


def test_failures_are_listed_with_the_one_that_explains_the_fault_first() -> None:
    def result(check_id: str, profile: str, level: Level = Level.MUST, **kw: bool) -> CheckResult:
        return CheckResult(Check(check_id, "t", level, profile, ("API-1",), "s", _noop, **kw), Outcome.FAILED)

    leak = result("CORE-IDLE-001", "core", sentinel=True)
    restart = result("RESTART-001", "restart")
    leak.attached_to = restart.check
    results = [
        result("MODEL-001", "model"),
        result("CORE-ADM-012", "core", Level.SHOULD),
        leak,
        restart,
        result("RENEG-004", "renegotiation"),
        result("CORE-ADM-003", "core"),
        result("CORE-ADM-015", "core", foundation=True),
    ]
    report = Report(RunOptions(), "", "", None, None, 1, results, 0.0, 0.0, {}, "nonconformant")
    assert [r.check.id for r in report.failures] == [
        "CORE-ADM-015",  # a foundation: what the others take for granted
        "CORE-ADM-003",
        "RENEG-004",  # by profile
        "RESTART-001",
        "CORE-IDLE-001",  # a leak, right after the check it followed
        "MODEL-001",  # the model-based histories last
        "CORE-ADM-012",  # SHOULD after every MUST
    ]


def test_checks_that_need_the_server_are_not_applicable_under_target() -> None:
    skipped = _result(Level.MUST, Outcome.SKIPPED, "mode: needs a server the suite starts itself")
    assert profile_verdicts([skipped])["core"]["result"] == "not-applicable"
    assert profile_verdicts([_result(Level.MUST, Outcome.PASSED), skipped])["core"]["result"] == "conformant"
