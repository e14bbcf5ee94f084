"""The rule map: every clause of SPEC.md with its level, why that level, and the checks that verify it
(from the checks' own citations), as `callqos-conformance rules` prints it."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from callqos.conformance.checks import all_checks
from callqos.conformance.spec import Clause, clauses

# The hosting server's own rules, whatever provider it hosts, that a client of a target cannot
# exercise: they need a server configured with credentials, tenants, quotas or limits, a client that
# stops reading, an overload, a provider that misbehaves on purpose or one that takes calls from its
# network, calls whose leases run out (to a provider a lease is only a release), or several server
# processes on one database. They are MUSTs all the same, so each maps to the server tests that
# verify it instead of a check; SPEC.md says so under "Not checked by the suite", and
# test_rule_map.py holds this list closed (a clause joins it only by a change here, and every file
# named must exist).
SERVER_TESTED: dict[str, tuple[str, ...]] = {
    "PROV-14": ("server/tests/test_incoming_network.py",),
    "PROV-15": ("server/tests/test_provider_containment.py",),
    "WATCH-12": ("server/tests/test_watch_limits.py",),
    "API-9": ("server/tests/test_overload.py",),
    "SEC-1": ("server/tests/test_security_authn.py",),
    "SEC-2": ("server/tests/test_security_authn.py",),
    "SEC-3": ("server/tests/test_security_authz.py",),
    "SEC-4": ("server/tests/test_security_tenants.py", "server/tests/test_security_lines.py"),
    "SEC-5": ("server/tests/test_security_quotas.py",),
    "SEC-6": ("server/tests/test_security_authz.py", "server/tests/test_security_tenants.py"),
    "REMOTE-1": ("server/tests/test_remote_provider.py", "server/tests/test_remote_process.py"),
    "REMOTE-5": ("server/tests/test_remote_provider.py",),
    "REMOTE-6": ("server/tests/test_remote_provider.py",),
    "REMOTE-7": ("server/tests/test_remote_process.py",),
    "REMOTE-8": ("server/tests/test_incoming_network.py", "server/tests/test_remote_incoming.py"),
    "API-10": ("server/tests/test_ledger_durability.py",),
    "CALL-5": ("server/tests/test_ledger_faults.py", "server/tests/test_ledger_durability.py"),
    "CALL-6": ("server/tests/test_ledger_faults.py",),
    "CALL-7": ("server/tests/test_ledger_durability.py", "server/tests/test_remote_process.py"),
    "EVENT-8": ("server/tests/test_ledger_faults.py",),
    "LINK-5": ("server/tests/test_ledger_durability.py", "server/tests/test_remote_ledger.py"),
    "LINK-6": ("server/tests/test_watch_events.py", "server/tests/test_ledger_state_machine.py"),
    "PROV-19": ("server/tests/test_ledger_faults.py", "server/tests/test_remote_ledger.py"),
    "PROV-20": ("server/tests/test_ledger_arithmetic.py", "server/tests/test_ledger_state_machine.py"),
    "PROV-21": ("server/tests/test_ledger_arithmetic.py",),
    "LEASE-1": ("server/tests/test_leases.py",),
    "LEASE-2": ("server/tests/test_leases.py",),
    "LEASE-3": ("server/tests/test_leases.py", "server/tests/test_lease_model.py", "server/tests/test_replicas.py"),
    "LEASE-4": ("server/tests/test_leases.py", "server/tests/test_lease_model.py"),
    "LEASE-5": ("server/tests/test_leases.py", "server/tests/test_lease_model.py"),
    "LEASE-6": (
        "server/tests/test_lease_durability.py",
        "server/tests/test_store_migration.py",
        "server/tests/test_store_contract.py",
    ),
    "REPL-1": ("server/tests/test_replicas.py", "server/tests/test_postgres_store.py"),
    "REPL-2": ("server/tests/test_replicas.py", "server/tests/test_postgres_store.py"),
    "REPL-3": ("server/tests/test_replicas.py",),
    "REPL-4": ("server/tests/test_replicas.py",),
    "REPL-5": ("server/tests/test_replicas.py",),
}


@dataclass(frozen=True)
class Row:
    clause: Clause
    checks: tuple[str, ...]

    @property
    def must_be_checked(self) -> bool:
        """Every rule of the provider contract and every MUST of the API maps to at least one check —
        except a withdrawn clause, and the hosting server's own rules, which map to its tests."""
        if self.clause.withdrawn or self.clause.id in SERVER_TESTED:
            return False
        return self.clause.provider_contract or self.clause.level == "MUST"

    @property
    def server_tests(self) -> tuple[str, ...]:
        return SERVER_TESTED.get(self.clause.id, ())


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
        elif row.server_tests:
            out.append(wrap("server's tests", ", ".join(row.server_tests)))
        else:
            out.append(wrap("not checked", clause.not_checked or "(no check, no reason: a gap)"))
    counted = [row for row in rows if row.must_be_checked]
    out.append(
        f"\n{len(rows)} clauses; {sum(bool(row.checks) for row in counted)} of the {len(counted)} that must be "
        "checked (the provider contract and every MUST) are; "
        f"{sum(bool(row.server_tests) for row in rows)} rules of the hosting server itself are its tests'."
    )
    return "\n".join(out)
