"""Run the suite against each broken implementation and report whether the checks that name its fault
failed, and whether the first failure listed is one of them. Used by conformance/tests and by
`python -m callqos.conformance.broken`.

Two ways, for two questions:

- `certify` (the report's first failure): each fault in a server of its own (`--provider`, or the proxy
  in front of one), on every profile up to the last one of the checks that catch it. Failures are listed
  by profile, so no check of a later profile can come before the ones that name the fault: the first
  failure is the one of the full suite, at a fraction of its time. The model-based histories (listed
  last) are left out: the targeted checks name every shipped fault.
- `Fleet` (is each caught at all, quickly): every broken provider hosted side by side in one server, every
  proxy fault on its own port of one proxy process in front of one server hosting a provider per fault,
  each certified with `--target --target-provider` on the preflight and the checks that must catch it.
  Faults whose checks need the suite to own the server (restarts) get a server of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from callqos.conformance.broken import FAULTS, LEDGER, Fault
from callqos.conformance.checks import all_checks
from callqos.conformance.model import OWNS_SERVER, PROFILES
from callqos.conformance.runner import Report, RunOptions, run_async
from callqos.conformance.target import SpawnedServer, TargetError
from callqos.server.testing import ServerError, ServerProcess


@contextlib.asynccontextmanager
async def proxy(fault: str, upstream: str) -> AsyncIterator[str]:
    """A broken-target proxy subprocess in front of `upstream`; yields its HOST:PORT."""
    program = [sys.executable, "-m", "callqos.conformance.broken.proxy", "--fault", fault, "--upstream", upstream]
    # The proxy forwards the callqos API alone (no grpc.health.v1): its port file says it is up.
    process = ServerProcess(program=program, health_check=False)
    try:
        await asyncio.to_thread(process.start)
    except ServerError as error:
        await asyncio.to_thread(process.close)
        raise TargetError(f"proxy {fault} did not start: {error}") from error
    try:
        yield process.target
    finally:
        await asyncio.to_thread(process.close)


def profiles_for(fault: Fault) -> tuple[str, ...]:
    """Every profile up to the last one of the checks that must catch the fault (the model excepted)."""
    by_id = {check.id: check for check in all_checks()}
    last = max(PROFILES.index(by_id[check].profile) for check in fault.caught_by)
    return tuple(profile for profile in PROFILES[: last + 1] if profile != "model")


async def certify(
    fault: Fault, *, seed: int = 7, output_dir: Path | None = None, full: bool = False, targeted: bool = False
) -> Report:
    """Certify one broken implementation: on every profile up to the one that catches it (first failure
    as on the full suite), on the `full` suite, or `targeted`: only the preflight and the checks that
    must catch it."""
    only = ("CORE-RESP-001", *fault.caught_by) if targeted else fault.only
    options = RunOptions(
        profiles=() if full or targeted else profiles_for(fault),
        checks=only,
        seed=seed,
        output_dir=output_dir,
        histories=2 if full else 0,
    )
    if fault.kind == "provider":
        options.provider = fault.subject
        return await run_async(options)
    server = SpawnedServer(fault.upstream)
    await asyncio.to_thread(server.start)
    try:
        async with proxy(fault.subject, server.target) as address:
            options.target = address
            return await run_async(options)
    finally:
        await asyncio.to_thread(server.stop)


class Fleet:
    """The shared servers of `certify_fleet`: started together, stopped together."""

    def __init__(self, faults: tuple[Fault, ...]) -> None:
        by_id = {check.id: check for check in all_checks()}
        self.own = tuple(f for f in faults if any(OWNS_SERVER in by_id[c].needs for c in f.caught_by))
        shared = [f for f in faults if f not in self.own]
        self.providers = [f for f in shared if f.kind == "provider"]
        self.proxies = [f for f in shared if f.kind == "proxy"]
        self.provider_server = SpawnedServer(
            LEDGER, extra_providers={f.name: {"plugin": f.subject} for f in self.providers}, log_name="fleet.log"
        )
        self.upstream = SpawnedServer(
            LEDGER,
            extra_providers={upstream_id(f): {"plugin": f.upstream} for f in self.proxies},
            log_name="upstream.log",
        )
        self.proxy: ServerProcess | None = None
        self.ports: dict[str, int] = {}

    async def __aenter__(self) -> Fleet:
        await asyncio.gather(asyncio.to_thread(self.provider_server.start), asyncio.to_thread(self.upstream.start))
        if self.proxies:
            ports_file = Path(tempfile.mkdtemp(prefix="callqos-proxies-")) / "ports.json"
            program = [sys.executable, "-m", "callqos.conformance.broken.proxy", "--upstream", self.upstream.target]
            for fault in self.proxies:
                program += ["--fault", fault.subject]
            self.proxy = ServerProcess(ports_file.parent, program=[*program, "--ports-file", str(ports_file)],
                                       health_check=False)  # fmt: skip
            await asyncio.to_thread(self.proxy.start)
            self.ports = json.loads(ports_file.read_text())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proxy is not None:
            await asyncio.to_thread(self.proxy.close)
            shutil.rmtree(self.proxy.directory, ignore_errors=True)
        await asyncio.gather(asyncio.to_thread(self.provider_server.stop), asyncio.to_thread(self.upstream.stop))

    def options(self, fault: Fault, seed: int) -> RunOptions:
        """Target mode against the fault's own provider (and proxy port), on the checks that must catch it."""
        checks = ("CORE-RESP-001", *fault.caught_by)
        if fault.kind == "provider":
            return RunOptions(
                target=self.provider_server.target, target_provider=f"providers/{fault.name}", checks=checks, seed=seed
            )
        return RunOptions(
            target=f"127.0.0.1:{self.ports[fault.subject]}",
            target_provider=f"providers/{upstream_id(fault)}",
            checks=checks,
            seed=seed,
        )


def upstream_id(fault: Fault) -> str:
    """The provider id behind a proxy fault in the shared upstream (one each, so runs do not meet)."""
    return f"up-{fault.name.lower()}"[:63].rstrip("-")


async def certify_fleet(faults: tuple[Fault, ...] = FAULTS, parallel: int = 4, seed: int = 7) -> list[Verdict]:
    """Every fault certified on the checks that must catch it, on shared servers (see the module docstring)."""
    gate = asyncio.Semaphore(parallel)
    async with Fleet(faults) as fleet:

        async def one(fault: Fault) -> Verdict:
            async with gate:
                try:
                    if fault in fleet.own:
                        return judge(fault, await certify(fault, seed=seed, targeted=True))
                    return judge(fault, await run_async(fleet.options(fault, seed)))
                except TargetError as error:
                    return Verdict(fault, None, [f"could not start: {error}"])

        return list(await asyncio.gather(*(one(fault) for fault in faults)))


def failed_ids(report: Report) -> list[str]:
    return [r.check.id for r in report.failures]


@dataclass
class Verdict:
    fault: Fault
    report: Report | None
    problems: list[str] = field(default_factory=list)

    @property
    def caught(self) -> bool:
        return not self.problems


def judge(fault: Fault, report: Report) -> Verdict:
    """Caught: the expected verdict, every check in caught_by failed, and the first failure is one of them."""
    verdict = Verdict(fault, report)
    failing = failed_ids(report)
    if report.harness_error:
        verdict.problems.append(f"harness error: {report.harness_error}")
    if report.verdict != fault.verdict:
        verdict.problems.append(f"verdict {report.verdict}, expected {fault.verdict}")
    missed = [check for check in fault.caught_by if check not in failing and check not in partial_ids(report)]
    if missed:
        verdict.problems.append(f"did not fail: {missed}")
    first = failing[0] if failing else (partial_ids(report) or ["none"])[0]
    if first not in fault.caught_by + fault.also:
        verdict.problems.append(f"first failure {first}, not one of {list(fault.caught_by + fault.also)}")
    return verdict


def partial_ids(report: Report) -> list[str]:
    """SHOULD checks that failed (a SHOULD fault's report fails no MUST)."""
    return [r.check.id for r in report.failures if r.check.level.value == "SHOULD"]


async def certify_all(
    faults: tuple[Fault, ...] = FAULTS, parallel: int = 3, seed: int = 7, targeted: bool = False
) -> list[Verdict]:
    """Every fault certified, `parallel` at a time (each run has its own server)."""
    gate = asyncio.Semaphore(parallel)

    async def one(fault: Fault) -> Verdict:
        async with gate:
            try:
                return judge(fault, await certify(fault, seed=seed, targeted=targeted))
            except TargetError as error:
                return Verdict(fault, None, [f"could not start: {error}"])

    return list(await asyncio.gather(*(one(fault) for fault in faults)))


def main(argv: list[str] | None = None) -> int:
    """`python -m callqos.conformance.broken [--quick]`: the full table (each fault in its own server, its
    first failure judged), or with --quick the fleet (caught at all, on shared servers)."""
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    verdicts = asyncio.run(certify_fleet() if quick else certify_all())
    print(f"{'fault':46} {'caught by':40} {'ok':4} failing checks (first first)")
    for verdict in verdicts:
        failing = " ".join(failed_ids(verdict.report)) if verdict.report else "-"
        print(
            f"{verdict.fault.name:46} {','.join(verdict.fault.caught_by)[:40]:40} "
            f"{'yes' if verdict.caught else 'NO':4} {failing}" + ("" if verdict.caught else f"  ← {verdict.problems}")
        )
    missed = sum(not verdict.caught for verdict in verdicts)
    print(f"{len(verdicts) - missed} of {len(verdicts)} caught and named first")
    return 1 if missed else 0
