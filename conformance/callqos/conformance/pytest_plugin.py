"""Use the suite from pytest: one test per check, so a provider's own test run certifies it.

In the provider's test suite:

    # tests/test_conformance.py
    from callqos.conformance.pytest_plugin import conformance_tests

    test_conformance = conformance_tests(provider="my_package.provider:MyProvider")

pytest then collects `test_conformance[CORE-VAL-001]`, … The suite runs once (on the first of
these tests) and each test reports its check: passed, skipped with the suite's reason (feature
not advertised), xfail (listed in `known_failing`), or failed with the suite's reason. Give
`target="127.0.0.1:PORT"` instead of `provider=` to certify a running server in any language;
`output_dir=` also writes the suite's reports; `budget_seconds=` or `histories=` sizes the
model-based histories (MODEL-001). A failure's reproduction, when there is one, is in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from callqos.conformance.checks import all_checks
from callqos.conformance.model import Outcome, Report, RunOptions
from callqos.conformance.runner import run_conformance, select


def conformance_tests(
    *,
    provider: str | None = None,
    target: str | None = None,
    provider_settings: dict[str, Any] | None = None,
    profiles: Sequence[str] = (),
    checks: Sequence[str] = (),
    known_failing: Sequence[str] = (),
    parameters_file: Path | None = None,
    timeout_scale: float = 1.0,
    seed: int | None = None,
    output_dir: Path | None = None,
    budget_seconds: float = 0.0,
    histories: int = 0,
) -> Callable[[str], None]:
    """A pytest test function parametrized over the selected checks."""
    options = RunOptions(
        target=target,
        provider=provider,
        provider_settings=dict(provider_settings or {}),
        parameters_file=parameters_file,
        profiles=tuple(profiles),
        checks=tuple(checks),
        known_failing=tuple(known_failing),
        seed=seed,
        timeout_scale=timeout_scale,
        output_dir=output_dir,
        budget_seconds=budget_seconds,
        histories=histories,
    )
    ids = [check.id for check in select(all_checks(), options)]
    runs: list[Report] = []  # the one run, made by whichever test comes first

    @pytest.mark.parametrize("check_id", ids)
    def test_conformance(check_id: str) -> None:
        if not runs:
            runs.append(run_conformance(options))
        report = runs[0]
        if report.harness_error:
            pytest.fail(f"the suite could not run: {report.harness_error}", pytrace=False)
        result = next(r for r in report.results if r.check.id == check_id)
        where = f"{result.check.level.value} {result.check.title} [{result.check.reference}]"
        if result.outcome is Outcome.SKIPPED:
            pytest.skip(result.reason)
        if result.outcome is Outcome.XFAIL:
            pytest.xfail(result.reason)
        if result.outcome is not Outcome.PASSED:
            repro = f"\nreproduction:\n{result.reproduction}" if result.reproduction else ""
            pytest.fail(f"{result.outcome.value}: {where}: {result.reason}{repro}", pytrace=False)

    return test_conformance
