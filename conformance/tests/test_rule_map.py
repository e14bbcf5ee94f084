"""Rule coverage as data: every rule a target must keep — each rule of the provider contract and each MUST
of the API — maps to at least one check, and `callqos-conformance rules` prints the map."""

from __future__ import annotations

import subprocess
import sys

from callqos.conformance.rulemap import rule_map, unmapped
from callqos.conformance.spec import clauses


def test_every_provider_rule_and_every_must_has_a_check() -> None:
    assert unmapped() == [], f"rules with no check (add one, or a check citing them): {unmapped()}"


def test_the_only_unchecked_clauses_are_shoulds_with_a_reason() -> None:
    unchecked = [row.clause for row in rule_map() if not row.checks]
    assert all(clause.level == "SHOULD" and clause.not_checked for clause in unchecked), [c.id for c in unchecked]


def test_a_guaranteed_grant_that_ignores_latency_is_a_must_failure() -> None:
    # The example of a level decided from the source: latency is part of what NEEDED requires.
    assert clauses()["DELAY-4"].level == "MUST"
    assert "CORE-ADM-014" in next(row.checks for row in rule_map() if row.clause.id == "DELAY-4")


def test_cli_rules_prints_each_clause_with_its_level_reason_and_checks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callqos.conformance", "rules"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "PROV-4     MUST   Release frees everything the call holds" in done.stdout
    assert "why MUST: capacity a release does not free" in done.stdout
    assert "checked by: CORE-DROP-001, CORE-DROP-002" in done.stdout
    assert f"{len(clauses())} clauses" in done.stdout
