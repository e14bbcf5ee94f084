"""Running the suite: connect (or spawn), read capabilities, derive parameters, run every
selected check under its deadline with cleanup, classify outcomes, and hand the result to the
reporters."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from callqos.conformance import params as params_module
from callqos.conformance.checks import all_checks
from callqos.conformance.harness import CheckContext, Session
from callqos.conformance.harness import Outcome as RpcOutcome
from callqos.conformance.model import Check, CheckFailed, CheckResult, CheckSkipped, Outcome, TargetTimeout
from callqos.conformance.target import SpawnedServer, TargetError
from callqos.conformance.verdict import CAPABILITY_SKIP, overall, profile_verdicts
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc
from callqos.v1 import provider_pb2


@dataclass
class RunOptions:
    target: str | None = None  # HOST:PORT of a running server
    provider: str | None = None  # entry-point name or module:Class to host in a spawned server
    target_provider: str | None = None  # providers/{id} to certify on --target (default: the server's default)
    provider_settings: dict[str, Any] = field(default_factory=dict)  # settings table for --provider
    parameters_file: Path | None = None
    profiles: tuple[str, ...] = ()  # empty: all
    checks: tuple[str, ...] = ()  # check ids or prefixes; empty: all
    known_failing: tuple[str, ...] = ()
    seed: int | None = None
    timeout_scale: float = 1.0
    output_dir: Path | None = None
    # Server-side provider deadline for --provider: short, so a hung provider is answered quickly.
    provider_timeout: float = 2.0


@dataclass
class Report:
    options: RunOptions
    target: str
    provider: str
    provider_info: provider_pb2.Provider | None
    parameters: params_module.Parameters | None
    seed: int
    results: list[CheckResult]
    started: float
    duration_seconds: float
    verdicts: dict[str, dict[str, object]]
    verdict: str
    harness_error: str = ""

    @property
    def unexpected(self) -> list[CheckResult]:
        """Results that fail the run: failures not known, unexpected passes, harness errors."""
        return [r for r in self.results if r.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XPASS, Outcome.ERROR)]

    @property
    def exit_code(self) -> int:
        if self.harness_error:
            return 2
        return 1 if self.unexpected else 0


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
    dependencies surface, and a seed reproduces an order)."""
    first = [c for c in checks if c.preflight]
    rest = [c for c in checks if not c.preflight]
    random.Random(seed).shuffle(rest)
    return first + rest


def unmet(check: Check, caps: provider_pb2.ProviderCapabilities) -> str:
    for need in check.needs:
        negative = need.startswith("!")
        name = need.lstrip("!")
        value = bool(getattr(caps, name))
        if negative and value:
            return f"{CAPABILITY_SKIP}: {name} is advertised (this is the negative probe for providers without it)"
        if not negative and not value:
            return f"{CAPABILITY_SKIP}: {name} is not advertised"
    return ""


async def run_check(session: Session, check: Check) -> CheckResult:
    reason = unmet(check, session.caps)
    if reason:
        return CheckResult(check, Outcome.SKIPPED, reason)
    ctx = CheckContext(session, check.id)
    started = time.monotonic()
    limit = check.timeout_seconds * session.scale
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
    except RpcOutcome as exc:
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
    return CheckResult(check, outcome, reason, time.monotonic() - started, cleanup_errors)


def apply_known_failing(result: CheckResult, known: set[str]) -> CheckResult:
    if result.check.id not in known:
        return result
    if result.outcome in (Outcome.FAILED, Outcome.TIMEOUT):
        result.outcome = Outcome.XFAIL
    elif result.outcome == Outcome.PASSED:
        result.outcome, result.reason = Outcome.XPASS, "listed in --known-failing but passed: remove it from the list"
    return result


async def discover(stub: svc_grpc.CallQosServiceStub, wanted: str | None, scale: float) -> provider_pb2.Provider:
    listed = await stub.ListProviders(svc.ListProvidersRequest(), timeout=10 * scale)
    if wanted:
        return await stub.GetProvider(svc.GetProviderRequest(name=wanted), timeout=10 * scale)
    defaults = [p for p in listed.providers if p.default] or list(listed.providers)
    if not defaults:
        raise TargetError("the target hosts no provider")
    return defaults[0]


async def run_async(options: RunOptions) -> Report:
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    started = time.time()
    clock = time.monotonic()
    spawned: SpawnedServer | None = None
    target, provider_name, info, parameters = options.target or "", options.target_provider or "", None, None
    results: list[CheckResult] = []
    harness_error = ""
    channel: grpc.aio.Channel | None = None
    try:
        table = params_module.load_file(options.parameters_file)
        if options.provider:
            log_dir = options.output_dir
            spawned = SpawnedServer(
                options.provider, options.provider_settings, options.provider_timeout * options.timeout_scale, log_dir
            )
            await asyncio.to_thread(spawned.start)
            target, provider_name = spawned.target, spawned.provider_name
        if not target:
            raise TargetError("give --target HOST:PORT or --provider NAME")
        channel = grpc.aio.insecure_channel(target)
        stub = svc_grpc.CallQosServiceStub(channel)
        info = await discover(stub, provider_name or None, options.timeout_scale)
        provider_name = info.name
        parameters = params_module.derive(info.capabilities, table, str(options.parameters_file or ""))
        session = Session(
            channel,
            stub,
            provider_name,
            info.capabilities,
            parameters,
            run_token=secrets.token_hex(3),
            rng=random.Random(seed),
            scale=options.timeout_scale,
        )
        known = set(options.known_failing)
        unresponsive = ""
        for check in order(select(all_checks(), options), seed):
            if unresponsive:
                results.append(CheckResult(check, Outcome.ERROR, f"not run: {unresponsive}"))
                continue
            result = apply_known_failing(await run_check(session, check), known)
            results.append(result)
            if check.preflight and result.outcome in (Outcome.TIMEOUT, Outcome.XFAIL) and "did not" in result.reason:
                # A hung target would make every later check wait out its deadline too.
                unresponsive = f"the target did not answer {check.id} in time"
    except (TargetError, params_module.ParameterError, grpc.aio.AioRpcError, OSError) as exc:
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
    )


def run_conformance(options: RunOptions) -> Report:
    """Run the suite (blocking) and write the reports when options.output_dir is set."""
    report = asyncio.run(run_async(options))
    if options.output_dir is not None:
        from callqos.conformance.reports import write_all

        write_all(report, options.output_dir)
    return report
