"""The rule map: every clause of SPEC.md with its level, why that level, and the checks that verify it
(from the checks' own citations), as `callqos-conformance rules` prints it."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from callqos.conformance.checks import all_checks
from callqos.conformance.spec import Clause, clauses


@dataclass(frozen=True)
class Row:
    clause: Clause
    checks: tuple[str, ...]

    @property
    def must_be_checked(self) -> bool:
        """Every rule of the provider contract and every MUST of the API maps to at least one check."""
        return self.clause.provider_contract or self.clause.level == "MUST"


def rule_map() -> list[Row]:
    citing: dict[str, list[str]] = {clause_id: [] for clause_id in clauses()}
    for check in all_checks():
        for clause_id in check.clauses:
            citing.setdefault(clause_id, []).append(check.id)
    return [Row(clause, tuple(sorted(citing[clause.id]))) for clause in clauses().values()]


def unmapped() -> list[str]:
    """Rules that must be checked and are not (a test fails on any)."""
    return [row.clause.id for row in rule_map() if row.must_be_checked and not row.checks]


def render(rows: list[Row], width: int = 100) -> str:
    out = []
    for row in rows:
        clause = row.clause
        out.append(f"{clause.id:10} {clause.level:6} {clause.title}")

        def wrap(label: str, text: str) -> str:
            return textwrap.fill(text, width, initial_indent=f"{'':17}{label}: ", subsequent_indent=" " * 19)

        out.append(wrap("why " + clause.level, clause.why_level or "(no reason given)"))
        if row.checks:
            out.append(wrap("checked by", ", ".join(row.checks)))
        else:
            out.append(wrap("not checked", clause.not_checked or "(no check, no reason: a gap)"))
    counted = [row for row in rows if row.must_be_checked]
    out.append(
        f"\n{len(rows)} clauses; {sum(bool(row.checks) for row in counted)} of the {len(counted)} that must be "
        "checked (the provider contract and every MUST) are."
    )
    return "\n".join(out)
