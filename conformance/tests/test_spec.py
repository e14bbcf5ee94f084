"""conformance/SPEC.md and the suite stay in step, and the repository cites nothing it does not ship.

- Every clause of SPEC.md has a level, says why it has that level, and either names the checks that
  verify it or says why the suite does not check it.
- Every check cites at least one clause, and a clause's "Checked by" list is exactly the set of
  checks citing it (the document cannot claim a check the code does not run, nor miss one).
- A MUST check verifies at least one MUST clause, and a SHOULD check only SHOULD clauses.
- Every clause id written anywhere in the repository exists in SPEC.md.
- No file points at the research notes outside this repository or at their section numbers.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from callqos.conformance import spec
from callqos.conformance.checks import all_checks
from callqos.conformance.model import Check, Level
from callqos.conformance.spec import PREFIXES, Clause
from callqos.conformance.version import SPEC_DOCUMENT, SPEC_VERSION

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / SPEC_DOCUMENT
CLAUSE_ID = re.compile(rf"\b(?:{'|'.join(PREFIXES)})-[0-9]+\b")
# The research notes this project was written from, which it does not ship; built from parts so
# that this file does not itself match what it looks for.
NOTES = (
    "qos-domain",
    "conformance-anchors",
    "provider-protocol-anchors",
    "perf-baseline",
    "style-anchors",
    "security-anchors",
    "architecture-sketch",
    "models-and-replicas",
)
OUTSIDE_NOTES = ("shared" + "/reference", *(name + ".md" for name in NOTES))
SECTION_SIGN = "\u00a7"


def clauses() -> dict[str, Clause]:
    return spec.clauses()


@cache
def checks() -> dict[str, Check]:
    return {check.id: check for check in all_checks()}


def repository_text_files() -> list[Path]:
    """Every file of the working tree git does not ignore, committed or not."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            try:
                path.read_text()
            except UnicodeDecodeError:
                continue  # binary
            files.append(path)
    return files


def test_the_suite_reads_the_document_this_repository_ships() -> None:
    assert spec.document().resolve() == SPEC.resolve()


def test_spec_names_the_version_the_suite_reports() -> None:
    assert f"Specification version: `{SPEC_VERSION}`" in SPEC.read_text()
    assert len(clauses()) > 50


def test_clause_ids_cannot_be_mistaken_for_check_ids() -> None:
    assert {clause_id.split("-")[0] for clause_id in clauses()} == set(PREFIXES)
    check_words = {word for check_id in checks() for word in check_id.split("-")}
    assert not check_words & set(PREFIXES)


@pytest.mark.parametrize("clause_id", sorted(clauses()))
def test_every_clause_has_a_level_a_rule_a_source_and_checks_or_a_reason(clause_id: str) -> None:
    clause = clauses()[clause_id]
    assert clause.level in ("MUST", "SHOULD"), f"{clause_id}: level {clause.level!r}"
    assert clause.why_level, f"{clause_id}: say why it is a {clause.level} ('- Why this level: ...')"
    assert clause.fields.get("Rule") and clause.fields.get("Source"), f"{clause_id} needs a rule and a source"
    checked, reason = "Checked by" in clause.fields, clause.fields.get("Not checked by the suite", "")
    assert checked != bool(reason), f"{clause_id}: give either 'Checked by' or 'Not checked by the suite: <why>'"
    unknown = set(clause.checked_by) - set(checks())
    assert not unknown, f"{clause_id} names checks that do not exist: {sorted(unknown)}"
    if checked:
        assert clause.checked_by, f"{clause_id}: 'Checked by' lists no check"


def test_each_clause_lists_exactly_the_checks_that_cite_it() -> None:
    citing: dict[str, set[str]] = {clause_id: set() for clause_id in clauses()}
    for check in checks().values():
        assert check.clauses, f"{check.id} cites no clause of SPEC.md"
        for clause_id in check.clauses:
            assert clause_id in citing, f"{check.id} cites {clause_id}, which SPEC.md does not define"
            citing[clause_id].add(check.id)
    mismatched = {
        clause_id: {"SPEC.md lists": sorted(clause.checked_by), "checks citing it": sorted(citing[clause_id])}
        for clause_id, clause in clauses().items()
        if set(clause.checked_by) != citing[clause_id]
    }
    assert not mismatched, f"SPEC.md 'Checked by' differs from the checks' clauses: {mismatched}"


def test_a_check_is_must_exactly_when_it_verifies_a_must_clause() -> None:
    wrong = [
        f"{check.id} is {check.level.value} but verifies {[(c, clauses()[c].level) for c in check.clauses]}"
        for check in checks().values()
        if (check.level is Level.MUST) != any(clauses()[c].level == "MUST" for c in check.clauses)
    ]
    assert not wrong, wrong


def test_every_clause_id_cited_in_the_repository_exists() -> None:
    defined = set(clauses())
    unknown = {
        f"{path.relative_to(ROOT)}: {cited}"
        for path in repository_text_files()
        for cited in CLAUSE_ID.findall(path.read_text())
        if cited not in defined
    }
    assert not unknown, f"clause ids cited but not defined in {SPEC_DOCUMENT}: {sorted(unknown)}"


def test_no_file_cites_documents_this_repository_does_not_ship() -> None:
    offending = sorted(
        f"{path.relative_to(ROOT)}: {needle}"
        for path in repository_text_files()
        for needle in (*OUTSIDE_NOTES, SECTION_SIGN)
        if needle in path.read_text()
    )
    assert not offending, f"cite {SPEC_DOCUMENT} clauses instead: {offending}"
