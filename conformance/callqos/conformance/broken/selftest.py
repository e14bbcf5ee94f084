"""Run the suite against each broken implementation and report whether the check that names
its fault failed. Used by conformance/tests and by `python -m callqos.conformance.broken`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from callqos.conformance.broken import FAULTS, Fault
from callqos.conformance.runner import Report, RunOptions, run_conformance
from callqos.conformance.target import SpawnedServer, TargetError
from callqos.server.testing import ServerError, ServerProcess


@contextlib.contextmanager
def proxy(fault: str, upstream: str) -> Iterator[str]:
    """A broken-target proxy subprocess in front of `upstream`; yields its HOST:PORT."""
    program = [sys.executable, "-m", "callqos.conformance.broken.proxy", "--fault", fault, "--upstream", upstream]
    # The proxy forwards the callqos API alone (no grpc.health.v1): its port file says it is up.
    process = ServerProcess(program=program, health_check=False)
    try:
        process.start()
    except ServerError as error:
        process.close()
        raise TargetError(f"proxy {fault} did not start: {error}") from error
    try:
        yield process.target
    finally:
        process.close()


def certify(fault: Fault, *, full: bool = False, seed: int = 7, output_dir: Path | None = None) -> Report:
    profiles = () if full else fault.profiles
    checks = () if full else fault.only
    if fault.kind == "provider":
        return run_conformance(
            RunOptions(provider=fault.subject, profiles=profiles, checks=checks, seed=seed, output_dir=output_dir)
        )
    with SpawnedServer("reference") as server, proxy(fault.subject, server.target) as address:
        return run_conformance(
            RunOptions(target=address, profiles=profiles, checks=checks, seed=seed, output_dir=output_dir)
        )


def failed_ids(report: Report) -> list[str]:
    return [r.check.id for r in report.results if r.outcome.is_failure]


def main() -> int:
    missed = 0
    print(f"{'fault':45} {'expected':36} caught  failing checks")
    for fault in FAULTS:
        report = certify(fault)
        failing = failed_ids(report)
        caught = all(check in failing for check in fault.caught_by) and report.verdict == "nonconformant"
        missed += not caught
        print(f"{fault.name:45} {','.join(fault.caught_by):36} {'yes' if caught else 'NO':6}  {' '.join(failing)}")
    return 1 if missed else 0
