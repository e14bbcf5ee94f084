"""conformance/SPEC.md as data: every clause with its id, title, level, the reason for that level,
its rule, its source, and either the checks that verify it or why the suite does not.

The document is the one home of the rules; this module only reads it. `callqos-conformance rules`
prints the map (clause → level, why, checks), and the suite's tests hold it to two promises: every
check cites clauses that exist and are listed back, and every rule a target must keep — each rule of
the provider contract and each MUST of the API — is verified by at least one check.

The wheel carries a copy of SPEC.md next to this module (pyproject.toml force-includes it); a source
checkout reads it from the distribution's directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

HEADING = re.compile(r"^### ((?:[A-Z]+)-[0-9]+) — (.+)$")
FIELD = re.compile(r"^- (Level|Why this level|Rule|Source|Checked by|Not checked by the suite): ?(.*)$")
# Clause prefixes, in the document's order: the parts of the contract.
PREFIXES = (
    *("PROV", "FLOW", "REQ", "GRANT", "DELAY", "LEVEL", "ADMIT"),
    *("CALL", "OWNER", "SETQOS", "EVENT", "WATCH", "LINK", "API"),
    *("LINE", "OFFER", "ANSWER", "PAIR", "SEC", "REMOTE", "LEASE", "REPL"),
)


@dataclass
class Clause:
    id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return self.fields.get("Level", "")

    @property
    def why_level(self) -> str:
        return self.fields.get("Why this level", "")

    @property
    def rule(self) -> str:
        return self.fields.get("Rule", "")

    @property
    def source(self) -> str:
        return self.fields.get("Source", "")

    @property
    def checked_by(self) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.fields.get("Checked by", "").split(",") if item.strip())

    @property
    def not_checked(self) -> str:
        return self.fields.get("Not checked by the suite", "")

    @property
    def part(self) -> str:
        return self.id.split("-")[0]

    @property
    def withdrawn(self) -> bool:
        """A withdrawn clause keeps its id (ids are never reused) and binds no target."""
        return self.title.endswith("(withdrawn)")

    @property
    def provider_contract(self) -> bool:
        """A rule of the provider contract (section 1 of SPEC.md)."""
        return self.part == "PROV"


def document() -> Path:
    """Where SPEC.md is: beside this module in a wheel, in the distribution's directory otherwise."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "SPEC.md", here.parents[1] / "SPEC.md"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("SPEC.md is missing from this installation of callqos-conformance")


def parse(text: str) -> dict[str, Clause]:
    """Clauses by id: a `### ID — title` heading, then `- Field: value` lines whose continuation
    lines are indented. Fenced blocks (the format's example) are not clauses."""
    found: dict[str, Clause] = {}
    current: Clause | None = None
    name = ""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = HEADING.match(line)
        if heading:
            if heading.group(1) in found:
                raise ValueError(f"clause {heading.group(1)} appears twice in SPEC.md")
            current = found[heading.group(1)] = Clause(heading.group(1), heading.group(2))
            name = ""
            continue
        if current is None:
            continue
        if line.startswith("#"):
            current = None
            continue
        match = FIELD.match(line)
        if match:
            name = match.group(1)
            current.fields[name] = match.group(2).strip()
        elif line.startswith("  ") and name:
            current.fields[name] += " " + line.strip()
    return found


@cache
def clauses() -> dict[str, Clause]:
    return parse(document().read_text())
