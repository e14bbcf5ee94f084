"""The self-test: every deliberately broken implementation is found nonconformant, and the
check that names its fault is among the failures (for `exact` faults, the only failure)."""

from __future__ import annotations

import pytest

from callqos.conformance.broken import FAULTS, Fault, proxy
from callqos.conformance.broken.selftest import certify, failed_ids
from callqos.conformance.checks import all_checks


def test_at_least_ten_distinct_faults() -> None:
    assert len({f.name for f in FAULTS}) >= 10
    assert {f.kind for f in FAULTS} == {"provider", "proxy"}


def test_every_proxy_fault_is_certified_and_names_real_checks() -> None:
    assert {f.subject for f in FAULTS if f.kind == "proxy"} == set(proxy.FAULTS) - {"none"}
    ids = {c.id for c in all_checks()}
    for fault in FAULTS:
        assert set(fault.caught_by) | set(fault.only) <= ids, fault.name


@pytest.mark.slow
def test_the_proxy_without_a_fault_is_conformant() -> None:
    report = certify(Fault("none", "proxy", "none", "forwards everything", ()), full=True)
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_broken_implementation_fails_with_the_check_naming_its_fault(fault: Fault) -> None:
    report = certify(fault, full=fault.exact)
    failing = failed_ids(report)
    assert report.verdict == "nonconformant", report.verdict
    assert report.exit_code == 1
    for check in fault.caught_by:
        assert check in failing, f"{fault.name}: {check} did not fail; failing: {failing}"
    if fault.exact:
        assert sorted(failing) == sorted(fault.caught_by), f"false failures elsewhere: {failing}"
    assert not report.harness_error
