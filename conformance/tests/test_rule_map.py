"""Rule coverage as data: every rule a target must keep — each rule of the provider contract and each MUST
of the API — maps to at least one check, and `callqos-conformance rules` prints the map."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from callqos.conformance.rulemap import SERVER_TESTED, rule_map, unmapped
from callqos.conformance.spec import clauses

ROOT = Path(__file__).resolve().parents[2]


def test_every_provider_rule_and_every_must_has_a_check() -> None:
    assert unmapped() == [], f"rules with no check (add one, or a check citing them): {unmapped()}"


def test_the_only_unchecked_clauses_are_shoulds_withdrawn_or_the_servers_own_with_a_reason() -> None:
    unchecked = [row for row in rule_map() if not row.checks]
    wrong = [
        row.clause.id
        for row in unchecked
        if not row.clause.not_checked or not (row.clause.level == "SHOULD" or row.clause.withdrawn or row.server_tests)
    ]
    assert not wrong, wrong


def test_the_servers_own_rules_name_tests_that_exist() -> None:
    # The exceptions to "every MUST has a check" are a closed list: each a MUST nothing in the suite checks,
    # whose SPEC.md reason names the server tests that verify it instead, and those files exist.
    for clause_id, files in SERVER_TESTED.items():
        clause = clauses()[clause_id]
        assert clause.level == "MUST" and clause.not_checked, clause_id
        assert not next(row.checks for row in rule_map() if row.clause.id == clause_id), f"{clause_id} has a check now"
        for name in files:
            assert (ROOT / name).is_file(), f"{clause_id}: {name} does not exist"
            assert Path(name).name in clause.not_checked, f"{clause_id}: SPEC.md does not name {name}"


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
