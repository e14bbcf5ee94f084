"""Running the suite: connect (or spawn), read capabilities, derive parameters, run every
selected check under its deadline with cleanup, classify outcomes, and hand the result to the
reporters."""

from __future__ import annotations

import asyncio
import random
import secrets
import time

import grpc

from callqos.conformance.checks import all_checks
from callqos.conformance.connection import Connection, open_channel
from callqos.conformance.exceptions import CheckFailed, CheckSkipped, TargetTimeout
from callqos.conformance.harness import CheckContext, RpcFailed, Session
from callqos.conformance.model import Check, CheckResult, Outcome, Report, RunOptions
from callqos.conformance.params import ParameterError, derive, load_file
from callqos.conformance.reports import write_all
from callqos.conformance.target import SpawnedServer, TargetError, hosted_provider
from callqos.conformance.verdict import CAPABILITY_SKIP, overall, profile_verdicts
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
    return CheckResult(check, outcome, reason, time.monotonic() - started, cleanup_errors)


def apply_known_failing(result: CheckResult, known: set[str]) -> CheckResult:
    if result.check.id not in known:
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
    except (TargetError, ParameterError, grpc.aio.AioRpcError, OSError) as exc:
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
        write_all(report, options.output_dir)
    return report
