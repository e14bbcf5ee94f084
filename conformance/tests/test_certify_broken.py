"""The self-test: every deliberately broken implementation is found nonconformant (partial, for a SHOULD
fault) by the checks that name its fault, the first failure of its report is one of them, and together
they break every rule a target must keep."""

from __future__ import annotations

import asyncio
import importlib
import inspect

import pytest

from callqos.conformance.broken import FAULTS, LEDGER, Fault, P
from callqos.conformance.broken import proxy as broken_proxy
from callqos.conformance.broken.selftest import certify, certify_all, certify_fleet, judge
from callqos.conformance.checks import all_checks
from callqos.conformance.model import RunOptions
from callqos.conformance.rulemap import rule_map
from callqos.conformance.runner import run_async
from callqos.conformance.spec import clauses
from callqos.conformance.target import SpawnedServer
from callqos.server.providers import Provider

# Rules no broken implementation shipped here can break: they are kept by the hosting server the suite
# starts itself for the checks that verify them (a restart, a side server with a tiny retention or watcher
# limit, the suite's own probe providers), which neither a provider plugin nor a proxy in front of a server
# can replace. Their checks are exercised on every --provider run of the suite's own tests.
SERVER_ONLY = {
    "PROV-12": "the host's promises to its plugins (HOST-001, on a side server with the suite's probes)",
    "EVENT-5": "the host's answer to a provider that raises (HOST-001)",
    "WATCH-3": "resuming across a restart of the server the suite owns (RESTART-003)",
    "WATCH-7": "retention pruning on a side server (EVT-013)",
    "WATCH-9": "the shutdown of the server the suite owns (RESTART-003)",
    "WATCH-10": "the watcher limit of a side server (EVT-013)",
    "WATCH-11": "the per-principal watcher limit of a side server (EVT-013)",
    "OFFER-4": "offers across a restart of the server the suite owns (RESTART-004)",
    "API-8": "a mutation finishing after its caller gave up happens inside the server (CORE-CANCEL-001)",
    "FLOW-9": "accepting a receiver's defaulted token rate: a proxy can refuse it, but then CORE-VAL-028 sees the "
    "refusal exactly as it sees any other (see the skips-* proxies for the opposite fault)",
}

# Rules whose broken implementation is not in FAULTS, because it is a provider kit's and not a provider
# plugin's or a proxy's, with the test that certifies it.
KIT_FAULTS = {
    "REMOTE-2": "a Restore keeping what the host no longer lists: broken/kit.py, certified with --provider-command "
    "(PROTO-003) by test_remote_parity.py",
    "REMOTE-3": "a change forgotten once sent: broken/kit.py, certified with --provider-command (PROTO-004) by "
    "test_remote_parity.py",
    "REMOTE-4": "a Release losing to the Admit written before it, a repeat decided again: broken/kit.py, certified "
    "with --provider-command (PROTO-001, PROTO-002) by test_remote_parity.py",
}


def test_at_least_thirty_distinct_broken_providers_each_a_plain_provider_class() -> None:
    providers = [fault for fault in FAULTS if fault.kind == "provider"]
    assert len(providers) >= 30
    assert len({fault.subject for fault in providers}) == len(providers)
    for fault in providers:
        module, name = fault.subject.split(":")
        cls = getattr(importlib.import_module(module), name)
        assert inspect.isclass(cls) and issubclass(cls, Provider), fault.subject
        assert cls.__doc__, f"{name}: say what the author got wrong"


def test_every_fault_names_real_checks_and_clauses_and_each_proxy_fault_exists() -> None:
    ids = {check.id for check in all_checks()}
    by_id = {check.id: check for check in all_checks()}
    assert len({fault.name for fault in FAULTS}) == len(FAULTS)
    for fault in FAULTS:
        assert fault.caught_by and set(fault.caught_by) <= ids, fault.name
        assert set(fault.clauses) <= set(clauses()), fault.name
        cited = {clause for check in fault.caught_by for clause in by_id[check].clauses}
        assert cited & set(fault.clauses), f"{fault.name}: no catching check cites the rules it breaks"
    assert {f.subject for f in FAULTS if f.kind == "proxy"} == set(broken_proxy.FAULTS) - {"none"}


def test_the_broken_set_breaks_every_rule_in_the_map() -> None:
    broken = {clause for fault in FAULTS for clause in fault.clauses}
    must_check = {row.clause.id for row in rule_map() if row.must_be_checked}
    expected = set(SERVER_ONLY) | set(KIT_FAULTS)
    assert must_check - broken == expected, sorted((must_check - broken) ^ expected)


@pytest.mark.slow
def test_every_broken_implementation_is_caught_by_the_checks_that_name_it() -> None:
    """All faults, on shared servers, on the checks that must catch them (about 15 s)."""
    verdicts = asyncio.run(certify_fleet())
    missed = {v.fault.name: v.problems for v in verdicts if not v.caught}
    assert not missed, missed


# One fault per way a report could list the wrong failure first: a leak that appears after a restart
# (listed after RESTART-001, not in core), a MUST and a SHOULD failing together, a foundation explaining
# the failures that follow from it, a refusal that leaks (its check, then the leak), a fault only the
# provider-change profile sees, and an events fault a renegotiation check sees first.
ORDERING = (
    "restore-double-counts",
    "ignores-latency",
    "advertised-maximum-not-honoured",
    "half-reserves-on-refusal",
    "double-release-after-shed",
    "reorders-events",
)


@pytest.mark.slow
def test_the_first_failure_listed_names_the_fault() -> None:
    """Each fault in a server of its own, on every profile up to the one that catches it (so its first
    failure is the full suite's). `python -m callqos.conformance.broken` does this for every fault."""
    faults = tuple(fault for fault in FAULTS if fault.name in ORDERING)
    assert len(faults) == len(ORDERING)
    verdicts = asyncio.run(certify_all(faults))
    wrong = {v.fault.name: v.problems for v in verdicts if not v.caught}
    assert not wrong, wrong


CAPACITY_CHECKS = ("CORE-ADM-001", "CORE-ADM-007", "CORE-ADM-008", "CORE-ADM-016", "CORE-CAP-003")


@pytest.mark.slow
def test_a_leak_is_one_failure_naming_the_check_after_which_it_appeared() -> None:
    """A provider that never releases: each check leaves its calls' capacity behind. Reported once, after
    the first check that leaked; every later check starts from a restarted, idle target, so the capacity
    checks pass instead of failing one after another for want of it."""
    options = RunOptions(provider=P + "LeaksOnRelease", checks=CAPACITY_CHECKS, seed=3)
    report = asyncio.run(run_async(options))
    assert [r.check.id for r in report.failures] == ["CORE-IDLE-001"]
    idle = report.failures[0]
    assert idle.attached_to is not None and idle.reason.startswith(f"after {idle.attached_to.id}:")
    assert "a release did not free everything the call held (PROV-4)" in idle.reason
    assert report.verdict == "nonconformant"


@pytest.mark.slow
def test_under_target_a_leak_skips_only_the_checks_that_need_the_whole_capacity() -> None:
    """Under --target the suite cannot restart the server: after a leak, the checks that need the whole
    capacity say they were not run, and the others still run."""
    with SpawnedServer(P + "LeaksOnRelease") as server:
        options = RunOptions(target=server.target, checks=(*CAPACITY_CHECKS, "CORE-DROP-002"), seed=3)
        report = asyncio.run(run_async(options))
    outcomes = {r.check.id: r for r in report.results}
    assert outcomes["CORE-IDLE-001"].outcome.value == "failed"
    skipped = [r for r in report.results if r.outcome.value == "skipped"]
    assert skipped and all("needs the whole capacity free" in r.reason for r in skipped)
    assert outcomes["CORE-DROP-002"].outcome.value == "failed"  # measured by differences, it still runs


@pytest.mark.slow
def test_the_proxy_without_a_fault_is_conformant() -> None:
    none = Fault("none", "proxy", "none", "forwards everything", (), ("CORE-RESP-001",), upstream=LEDGER)
    report = asyncio.run(certify(none, full=True))
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]
    assert not judge(none, report).caught  # the self-test's judge tells a conformant target from a caught one
