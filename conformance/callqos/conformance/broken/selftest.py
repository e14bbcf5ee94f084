"""Run the suite against each broken implementation and report whether the check that names
its fault failed. Used by conformance/tests and by `python -m callqos.conformance.broken`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from callqos.conformance.broken import FAULTS, Fault
from callqos.conformance.runner import Report, RunOptions, run_conformance
from callqos.conformance.target import SpawnedServer, TargetError


@contextlib.contextmanager
def proxy(fault: str, upstream: str) -> Iterator[str]:
    """A broken-target proxy subprocess in front of `upstream`; yields its HOST:PORT."""
    with tempfile.TemporaryDirectory(prefix="callqos-proxy-") as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "callqos.conformance.broken.proxy",
                "--fault",
                fault,
                "--upstream",
                upstream,
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "proxy.log", "wb"),  # noqa: SIM115 -- the child holds it
            env={**os.environ},
        )
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text().strip().isdigit()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise TargetError(f"proxy {fault} did not start: {(Path(tmp) / 'proxy.log').read_text()[-1000:]}")
                time.sleep(0.05)
            yield f"127.0.0.1:{int(port_file.read_text())}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
