"""Running the suite: connect (or spawn), read capabilities, derive parameters, run every
selected check under its deadline with cleanup — each from a verified idle target (idle.py), with
what the hosting server logged meanwhile attached to it (serverlog.py) — classify outcomes, and
hand the result to the reporters."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from typing import Any

import grpc

from callqos.conformance.checks import all_checks
from callqos.conformance.connection import Connection, open_channel
from callqos.conformance.exceptions import CheckFailed, CheckSkipped, TargetTimeout
from callqos.conformance.harness import CheckContext, RpcFailed, Session
from callqos.conformance.idle import IDLE_CHECK, Snapshot, leak_reason, snapshot, verify
from callqos.conformance.model import OWNS_SERVER, Check, CheckResult, Outcome, Report, RunOptions
from callqos.conformance.params import ParameterError, derive, load_file
from callqos.conformance.reports import write_all
from callqos.conformance.serverlog import MAX_FINDINGS, LogWatch
from callqos.conformance.target import SpawnedServer, TargetError
from callqos.conformance.verdict import CAPABILITY_SKIP, MODE_SKIP, overall, profile_verdicts
from callqos.conformance.verify import Limits
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import provider_pb2

# RunOptions and Report are defined with the rest of the suite's data (model.py); they are also
# this module's public names, as the arguments and the result of run_conformance.
__all__ = ["Report", "RunOptions", "order", "run_async", "run_check", "run_conformance", "select"]


def select(checks: list[Check], options: RunOptions) -> list[Check]:
    chosen = [
        c
        for c in checks
        if (not options.profiles or c.profile in options.profiles)
        and (not options.checks or any(c.id == x or c.id.startswith(x) for x in options.checks))
    ]
    return chosen


def order(checks: list[Check], seed: int) -> list[Check]:
    """Preflight checks first, in a fixed order; the rest shuffled by the seed (hidden ordering
    dependencies surface, and a seed reproduces an order); the `last` ones (the model-based
    histories, the longest) at the end. Sentinel checks are not run as such."""
    first = [c for c in checks if c.preflight and not c.sentinel]
    rest = [c for c in checks if not c.preflight and not c.last and not c.sentinel]
    random.Random(seed).shuffle(rest)
    return first + rest + [c for c in checks if c.last and not c.sentinel]


def unmet(check: Check, caps: provider_pb2.ProviderCapabilities, owns_server: bool = False) -> str:
    for need in check.needs:
        if need == OWNS_SERVER:
            if not owns_server:
                return (
                    f"{MODE_SKIP}: needs a server the suite starts itself (--provider): it restarts it, reads its "
                    "log or starts one with other settings; --target did not certify this"
                )
            continue
        negative = need.startswith("!")
        name = need.lstrip("!")
        value = bool(getattr(caps, name))
        if negative and value:
            return f"{CAPABILITY_SKIP}: {name} is advertised (this is the negative probe for providers without it)"
        if not negative and not value:
            return f"{CAPABILITY_SKIP}: {name} is not advertised"
    return ""


def deadline(check: Check, session: Session) -> float:
    """Seconds a check may take: its own deadline times --timeout-scale; for the budgeted
    model-based histories, their budget and shrinking time on top."""
    limit = check.timeout_seconds * session.scale
    if check.budgeted:
        from callqos.conformance.model_based.budget import Budget

        limit += Budget.of(session).total_seconds
    return limit


async def run_check(session: Session, check: Check) -> CheckResult:
    reason = unmet(check, session.caps, session.restartable)
    if reason:
        return CheckResult(check, Outcome.SKIPPED, reason)
    ctx = CheckContext(session, check.id)
    started = time.monotonic()
    limit = deadline(check, session)
    try:
        await asyncio.wait_for(check.run(ctx), limit)
        outcome, reason = Outcome.PASSED, ""
    except CheckFailed as exc:
        outcome, reason = Outcome.FAILED, str(exc)
    except CheckSkipped as exc:
        outcome, reason = Outcome.SKIPPED, str(exc)
    except TargetTimeout as exc:
        outcome, reason = Outcome.TIMEOUT, str(exc)
    except TimeoutError:
        outcome, reason = (
            Outcome.TIMEOUT,
            f"the check did not finish within {limit:g}s (timeout scale {session.scale:g})",
        )
    except RpcFailed as exc:
        # An RPC the check needed failed with a status the contract does not allow there.
        outcome, reason = Outcome.FAILED, f"unexpected status: {exc.failure}"
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            outcome, reason = Outcome.ERROR, f"transport failure, target unreachable: {exc.details()}"
        else:
            outcome, reason = Outcome.FAILED, f"unexpected status {exc.code().name}: {exc.details()}"
    except Exception as exc:  # the harness broke: an error, not the target's failure
        outcome, reason = Outcome.ERROR, f"harness error: {type(exc).__name__}: {exc}"
    cleanup_errors = await ctx.cleanup()
    if cleanup_errors and outcome == Outcome.PASSED:
        outcome, reason = Outcome.FAILED, "cleanup failed: " + "; ".join(cleanup_errors)
    result = CheckResult(check, outcome, reason, time.monotonic() - started, cleanup_errors)
    result.reproduction = ctx.reproduction
    result.detail = ctx.detail
    return result


def attach_findings(result: CheckResult, findings: list[str]) -> None:
    """What the hosting server logged during the check is the check's finding: a provider that
    raised (answered PROVIDER_UNAVAILABLE, maybe where the check could not see it, as in a release
    or a shed) or a server that failed. A passing check fails with it (PROV-16)."""
    if not findings:
        return
    result.findings = findings[:MAX_FINDINGS]
    text = "; ".join(result.findings) + (
        f" (and {len(findings) - MAX_FINDINGS} more)" if len(findings) > MAX_FINDINGS else ""
    )
    if result.outcome in (Outcome.PASSED, Outcome.XPASS):
        result.outcome = Outcome.FAILED if result.outcome == Outcome.PASSED else Outcome.XFAIL
        result.reason = f"[PROV-16] the hosting server logged a failure during this check: {text}"
    elif result.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XFAIL):
        result.reason += f"; the hosting server logged: {text}"


class Hygiene:
    """The idle verification between checks (idle.py), and the one CORE-IDLE-001 result."""

    def __init__(self, session: Session, sentinel: Check | None) -> None:
        self.session = session
        self.sentinel = sentinel
        self.baseline: Snapshot | None = None
        self.failure = ""  # the first leak, reported once
        self.after_check: Check | None = None  # the check after which it was seen
        self.broken = ""  # set when the target could not be made idle again: later checks do not run

    async def start(self) -> None:
        """The baseline, before any check: the links must report what the connected calls hold."""
        ctx = CheckContext(self.session, IDLE_CHECK)
        if not self.session.caps.link_admin:
            return
        try:
            self.baseline = await snapshot(ctx)
        except (RpcFailed, grpc.aio.AioRpcError, TargetTimeout, CheckFailed):
            return  # the checks themselves will say what is wrong with ListLinks
        try:
            problem = await ctx.accounting()
        except (RpcFailed, grpc.aio.AioRpcError, TargetTimeout, CheckFailed):
            return  # the checks that rely on ListCalls will say what is wrong with it
        if problem:
            self.failure = f"before the first check: {problem}"

    async def after(self, check: Check) -> list[str]:
        """Verify the target is idle after `check`; return what the suite tidied of its own."""
        ctx = CheckContext(self.session, IDLE_CHECK)
        try:
            verdict = await verify(ctx, self.baseline)
        except (RpcFailed, grpc.aio.AioRpcError, TargetTimeout, CheckFailed) as exc:
            # The target failed the very reads the verification makes: that is the finding, once; a server
            # the suite owns is restarted, anything else cannot be trusted to run further checks.
            if not self.failure:
                self.failure, self.after_check = (
                    f"after {check.id}, the target could not be verified idle: {exc}",
                    check,
                )
            if not self.session.restartable:
                self.broken = f"the target could not be verified idle after {check.id} ({IDLE_CHECK})"
                return []
            await self.recover(ctx)
            return []
        if verdict.leak:
            if not self.failure:
                self.failure, self.after_check = leak_reason(check.id, verdict.leak), check
            await self.recover(ctx)
        return verdict.tidied

    async def recover(self, ctx: CheckContext) -> None:
        """Make the target idle again: restart a server the suite owns. Otherwise (or if that does not
        help) take what it holds now as the baseline: the checks that need the whole capacity free are
        then not run (needs_capacity), the others still are."""
        if self.session.restartable:
            try:
                await self.session.restart()
                now = await snapshot(ctx)
                if self.baseline is None or now is None or not self.baseline.differences(now):
                    return
            except (TargetError, OSError, TimeoutError, grpc.aio.AioRpcError) as exc:
                self.broken = f"the target did not come back from a restart: {exc}"
                return
        self.session.leaked = f"the target holds capacity for no call ({IDLE_CHECK}), which the suite could not free"
        try:
            self.baseline = await snapshot(ctx)
        except (RpcFailed, grpc.aio.AioRpcError, TargetTimeout, CheckFailed) as exc:
            self.broken = f"the target could not be read after a leak: {exc}"

    def result(self) -> CheckResult | None:
        if self.sentinel is None:
            return None
        if self.failure:
            result = CheckResult(self.sentinel, Outcome.FAILED, self.failure)
            result.attached_to = self.after_check
            return result
        return CheckResult(self.sentinel, Outcome.PASSED)


def apply_known_failing(result: CheckResult, known: set[str]) -> CheckResult:
    if result.check.id not in known or result.outcome in (Outcome.XFAIL, Outcome.XPASS):
        return result
    if result.outcome in (Outcome.FAILED, Outcome.TIMEOUT):
        result.outcome = Outcome.XFAIL
    elif result.outcome == Outcome.PASSED:
        result.outcome, result.reason = Outcome.XPASS, "listed in --known-failing but passed: remove it from the list"
    return result


async def discover(
    stub: svc_grpc.CallQosServiceStub, wanted: str | None, scale: float, connection: Connection | None = None
) -> provider_pb2.Provider:
    auth = connection.bearer() if connection else ()
    listed = await stub.ListProviders(svc.ListProvidersRequest(), timeout=10 * scale, metadata=auth)
    if wanted:
        named: provider_pb2.Provider = await stub.GetProvider(
            svc.GetProviderRequest(name=wanted), timeout=10 * scale, metadata=auth
        )
        return named
    defaults = [p for p in listed.providers if p.default] or list(listed.providers)
    if not defaults:
        raise TargetError("the target hosts no provider")
    chosen: provider_pb2.Provider = defaults[0]
    return chosen


def hosted_provider(options: RunOptions) -> tuple[str, dict[str, Any]]:
    """The plugin and settings table the spawned server hosts for `options`: the --provider plugin
    with its settings, or a `remote` provider (whose settings table --provider-settings extends:
    `env`, `tls`, timeouts) launching --provider-command or dialling --provider-endpoint."""
    if options.provider_command:
        program, *arguments = options.provider_command
        if "/" in program:  # relative to where the suite runs, not to the spawned server's directory
            program = os.path.abspath(program)  # not resolve(): a venv's python is a symlink
        return "remote", {**options.provider_settings, "command": [program, *arguments]}
    if options.provider_endpoint:
        return "remote", {**options.provider_settings, "endpoint": options.provider_endpoint}
    if not options.provider:
        raise TargetError("no provider to host")
    return options.provider, options.provider_settings


async def run_async(options: RunOptions) -> Report:
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    started = time.time()
    clock = time.monotonic()
    spawned: SpawnedServer | None = None
    target, provider_name, info, parameters = options.target or "", options.target_provider or "", None, None
    results: list[CheckResult] = []
    harness_error = ""
    channel: grpc.aio.Channel | None = None
    session: Session | None = None
    try:
        table = load_file(options.parameters_file)
        if options.provider or options.provider_command or options.provider_endpoint:
            plugin, settings = hosted_provider(options)
            spawned = SpawnedServer(
                plugin, settings, options.provider_timeout * options.timeout_scale, options.output_dir
            )
            await asyncio.to_thread(spawned.start)
            target, provider_name = spawned.target, spawned.provider_name
        if not target:
            raise TargetError("give --target HOST:PORT, --provider NAME, --provider-command or --provider-endpoint")
        connection = options.connection if options.target else None
        channel = open_channel(target, connection)
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        info = await discover(stub, provider_name or None, options.timeout_scale, connection)
        provider_name = info.name
        parameters = derive(info.capabilities, table, str(options.parameters_file or ""))
        session = Session(
            channel,
            stub,
            provider_name,
            info.capabilities,
            parameters,
            run_token=secrets.token_hex(3),
            rng=random.Random(seed),
            scale=options.timeout_scale,
            connection=connection,
            server=spawned,
            target=target,
            budget_seconds=options.budget_seconds,
            histories=options.histories,
            limits=Limits.of(info.capabilities, parameters.capacity),
            seed=seed,
        )
        known = set(options.known_failing)
        selected = select(all_checks(), options)
        sentinel = next((c for c in all_checks() if c.id == IDLE_CHECK), None)
        hygiene = Hygiene(session, sentinel)
        log = LogWatch(spawned.log_path) if spawned is not None else None
        unresponsive = ""
        await hygiene.start()
        for check in order(selected, seed):
            if unresponsive or hygiene.broken:
                results.append(CheckResult(check, Outcome.ERROR, f"not run: {unresponsive or hygiene.broken}"))
                continue
            if log is not None:
                log.mark()
            result = apply_known_failing(await run_check(session, check), known)
            results.append(result)
            if check.preflight and result.outcome in (Outcome.TIMEOUT, Outcome.XFAIL) and "did not" in result.reason:
                # A hung target would make every later check wait out its deadline too.
                unresponsive = f"the target did not answer {check.id} in time"
                continue
            if result.outcome != Outcome.SKIPPED:
                result.cleanup_errors += await hygiene.after(check)
            if log is not None:
                attach_findings(result, [str(finding) for finding in log.read()])
                apply_known_failing(result, known)
        idle = hygiene.result()
        if idle is not None and idle.outcome == Outcome.PASSED and (unresponsive or hygiene.broken):
            idle = CheckResult(idle.check, Outcome.ERROR, f"not run: {unresponsive or hygiene.broken}")
        if idle is not None and (idle.outcome != Outcome.PASSED or sentinel in selected):
            results.append(apply_known_failing(idle, known))
    except (TargetError, ParameterError, grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
        harness_error = f"{type(exc).__name__}: {exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc}"
    finally:
        if channel is not None:
            await channel.close()
        if spawned is not None:
            await asyncio.to_thread(spawned.stop)
    verdicts = profile_verdicts(results)
    verdict = "error" if harness_error else overall(verdicts)
    return Report(
        options,
        target,
        provider_name,
        info,
        parameters,
        seed,
        results,
        started,
        time.monotonic() - clock,
        verdicts,
        verdict,
        harness_error,
        histories=session.histories_run if session is not None else 0,
    )


def run_conformance(options: RunOptions) -> Report:
    """Run the suite (blocking) and write the reports when options.output_dir is set."""
    report = asyncio.run(run_async(options))
    if options.output_dir is not None:
        write_all(report, options.output_dir)
    return report
