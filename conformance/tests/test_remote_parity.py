"""A provider in another process is certified exactly as in process.

Every shipped broken provider, served over callqos.provider.v1 by the Python kit
(`callqos-provider serve module:Class`) and hosted by `--provider-command`, gets the same verdict
and the same failing checks as when the suite hosts it in process with `--provider`; the shipped
good providers are conformant both ways; and `--provider-endpoint` certifies a provider someone
else runs."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from callqos.conformance.broken import FAULTS, Fault
from callqos.conformance.broken.selftest import certify, failed_ids
from callqos.conformance.cli import main
from callqos.conformance.model import Outcome, Report
from callqos.conformance.runner import RunOptions, run_async, run_conformance
from callqos.server.testing import ServerProcess

SERVE = (sys.executable, "-m", "callqos.server.remote.serve", "serve")
PROVIDER_FAULTS = [fault for fault in FAULTS if fault.kind == "provider"]
# Every shipped broken provider takes about 4 minutes both ways, too long for `make test`: it runs every
# fourth (a fixed spread over the list), `make parity` (CALLQOS_PARITY=all) runs them all.
PARITY_FAULTS = PROVIDER_FAULTS if os.environ.get("CALLQOS_PARITY") == "all" else PROVIDER_FAULTS[::4]


async def out_of_process(fault: Fault, *, seed: int = 7) -> Report:
    """The targeted run `certify(..., targeted=True)` makes for `fault` (the preflight and the checks
    that must catch it), with the provider served by the kit instead."""
    return await run_async(
        RunOptions(provider_command=(*SERVE, fault.subject), checks=("CORE-RESP-001", *fault.caught_by), seed=seed)
    )


async def compare(fault: Fault) -> str:
    """What differs between `fault` in process and out of process ("" when nothing does)."""
    in_process, remote = await asyncio.gather(certify(fault, targeted=True), out_of_process(fault))
    if remote.harness_error or in_process.harness_error:
        return f"{fault.name}: {remote.harness_error or in_process.harness_error}"
    if (remote.verdict, in_process.verdict) != (fault.verdict, fault.verdict):
        return f"{fault.name}: verdict {remote.verdict} out of process, {in_process.verdict} in process"
    if sorted(failed_ids(remote)) != sorted(failed_ids(in_process)):
        return f"{fault.name}: out of process failed {failed_ids(remote)}, in process {failed_ids(in_process)}"
    return ""


def test_every_broken_provider_is_compared() -> None:
    assert len(PROVIDER_FAULTS) >= 9
    assert set(PARITY_FAULTS) <= set(PROVIDER_FAULTS)


@pytest.mark.slow
@pytest.mark.parametrize("fault", PARITY_FAULTS, ids=[fault.name for fault in PARITY_FAULTS])
def test_a_broken_provider_fails_the_same_checks_out_of_process(fault: Fault) -> None:
    assert asyncio.run(compare(fault)) == ""


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["reference", "no-qos"])
def test_the_shipped_providers_are_conformant_out_of_process(plugin: str) -> None:
    report = run_conformance(RunOptions(provider_command=(*SERVE, plugin), seed=7, histories=10))
    # No failure is allowed: the shipped providers are conformant out of process as in process.
    assert not report.failures, [(r.check.id, r.reason[:200]) for r in report.failures]
    assert not report.harness_error, report.harness_error
    assert report.provider_info is not None and report.provider_info.name == "providers/remote"


@pytest.mark.slow
def test_a_provider_someone_else_runs_is_certified_by_endpoint() -> None:
    # The kit takes the flags a test server takes (--listen 127.0.0.1:0 --port-file F).
    with ServerProcess(program=[*SERVE, "reference"]) as provider:
        report = run_conformance(RunOptions(provider_endpoint=provider.target, checks=("CORE-ADM",), seed=7))
    assert not report.failures, [(r.check.id, r.reason) for r in report.failures]
    assert report.results and not report.harness_error


def test_the_command_line_takes_a_provider_command(capsys: pytest.CaptureFixture[str]) -> None:
    command = " ".join([*SERVE, "reference"])
    assert main(["--provider-command", command, "--check", "CORE-RESP-001"]) == 0
    assert "VERDICT: conformant" in capsys.readouterr().out
    with pytest.raises(SystemExit) as both:
        main(["--provider-command", command, "--target", "127.0.0.1:1"])
    assert both.value.code == 2


KITS = (sys.executable, "-m", "callqos.conformance.broken.kit")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "caught_by", "said"),
    [
        ("release-loses-to-admit", "PROTO-001", "still reserved"),
        ("forgets-answers", "PROTO-002", "a repeated Admit (same call and request id) was answered failure"),
        ("restore-keeps-everything", "PROTO-003", "after a Restore listing"),
        ("forgets-unacknowledged", "PROTO-004", "a change not acknowledged was not replayed"),
    ],
)
def test_a_broken_kit_is_caught_on_an_instance_of_its_own(fault: str, caught_by: str, said: str) -> None:
    """The PROTO checks speak the provider protocol to an instance of the --provider-command provider
    they launch themselves: each broken kit (broken/kit.py) fails the check that names its fault,
    and only that one."""
    report = run_conformance(
        RunOptions(provider_command=(*KITS, fault), checks=("CORE-RESP-001", "CORE-IDLE-001", "PROTO"), seed=7)
    )
    assert failed_ids(report) == [caught_by], [(r.check.id, r.reason[:200]) for r in report.failures]
    assert said in report.failures[0].reason


@pytest.mark.slow
def test_the_python_kit_passes_the_protocol_checks_and_a_provider_in_process_skips_them() -> None:
    good = run_conformance(RunOptions(provider_command=(*SERVE, "reference"), checks=("PROTO",), seed=7))
    assert sorted((r.check.id, r.outcome) for r in good.results) == [
        ("PROTO-001", Outcome.PASSED),
        ("PROTO-002", Outcome.PASSED),
        ("PROTO-003", Outcome.PASSED),
        ("PROTO-004", Outcome.PASSED),
    ], good.results
    in_process = run_conformance(RunOptions(provider="reference", checks=("PROTO",), seed=7))
    assert {r.outcome for r in in_process.results} == {Outcome.SKIPPED}
    assert all(r.reason.startswith("mode:") for r in in_process.results)


# The Python kit serving the reference provider without the Decide stream: a host (and the PROTO
# checks) then send each decision as an RPC.
RPC_ONLY = (
    sys.executable,
    "-c",
    "import asyncio, functools, os\n"
    "from callqos.server.remote.kit import ProviderServicer\n"
    "from callqos.server.remote.serve import listen_address, serve\n"
    "servicer = functools.partial(ProviderServicer, decide_stream=False)\n"
    "asyncio.run(serve('reference', {}, listen_address(os.environ), launched=True, servicer=servicer))\n",
)


@pytest.mark.slow
def test_a_provider_without_the_decide_stream_gets_its_repeats_checked_by_rpc() -> None:
    report = run_conformance(RunOptions(provider_command=RPC_ONLY, checks=("PROTO",), seed=7))
    outcomes = {r.check.id: (r.outcome, r.reason) for r in report.results}
    assert outcomes["PROTO-002"][0] == outcomes["PROTO-003"][0] == Outcome.PASSED, outcomes
    assert outcomes["PROTO-001"][0] == Outcome.SKIPPED and "Decide stream" in outcomes["PROTO-001"][1], outcomes
