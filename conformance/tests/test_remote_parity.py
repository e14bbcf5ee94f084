"""A provider in another process is certified exactly as in process.

Every shipped broken provider, served over callqos.provider.v1 by the Python kit
(`callqos-provider serve module:Class`) and hosted by `--provider-command`, gets the same verdict
and the same failing checks as when the suite hosts it in process with `--provider`; the shipped
good providers are conformant both ways; and `--provider-endpoint` certifies a provider someone
else runs."""

from __future__ import annotations

import sys

import pytest

from callqos.conformance.broken import FAULTS, Fault
from callqos.conformance.broken.selftest import certify, failed_ids
from callqos.conformance.cli import main
from callqos.conformance.runner import RunOptions, run_conformance
from callqos.server.testing import ServerProcess

SERVE = (sys.executable, "-m", "callqos.server.remote.serve", "serve")
PROVIDER_FAULTS = [fault for fault in FAULTS if fault.kind == "provider"]


def out_of_process(fault: Fault, *, seed: int = 7) -> RunOptions:
    """The run `certify` makes for `fault`, with the provider served by the kit instead."""
    return RunOptions(
        provider_command=(*SERVE, fault.subject),
        profiles=() if fault.exact else fault.profiles,
        checks=() if fault.exact else fault.only,
        seed=seed,
    )


def test_every_broken_provider_is_compared() -> None:
    assert len(PROVIDER_FAULTS) >= 9


@pytest.mark.slow
@pytest.mark.parametrize("fault", PROVIDER_FAULTS, ids=[fault.name for fault in PROVIDER_FAULTS])
def test_a_broken_provider_fails_the_same_checks_out_of_process(fault: Fault) -> None:
    in_process = certify(fault, full=fault.exact)
    remote = run_conformance(out_of_process(fault))
    assert not remote.harness_error, remote.harness_error
    assert (remote.verdict, in_process.verdict) == ("nonconformant", "nonconformant")
    assert sorted(failed_ids(remote)) == sorted(failed_ids(in_process)), [
        (r.check.id, r.reason) for r in remote.results if r.outcome.is_failure
    ]


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["reference", "no-qos"])
def test_the_shipped_providers_are_conformant_out_of_process(plugin: str) -> None:
    report = run_conformance(RunOptions(provider_command=(*SERVE, plugin), seed=7))
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]
    assert report.provider_info is not None and report.provider_info.name == "providers/remote"


@pytest.mark.slow
def test_a_provider_someone_else_runs_is_certified_by_endpoint() -> None:
    # The kit takes the flags a test server takes (--listen 127.0.0.1:0 --port-file F).
    with ServerProcess(program=[*SERVE, "reference"]) as provider:
        report = run_conformance(RunOptions(provider_endpoint=provider.target, checks=("CORE-ADM",), seed=7))
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]


def test_the_command_line_takes_a_provider_command(capsys: pytest.CaptureFixture[str]) -> None:
    command = " ".join([*SERVE, "reference"])
    assert main(["--provider-command", command, "--check", "CORE-RESP-001"]) == 0
    assert "VERDICT: conformant" in capsys.readouterr().out
    with pytest.raises(SystemExit) as both:
        main(["--provider-command", command, "--target", "127.0.0.1:1"])
    assert both.value.code == 2
