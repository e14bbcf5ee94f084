"""The suite's data: what a check is (an ID, a level, a profile, the SPEC.md clauses it verifies
and the capabilities it needs, plus the coroutine that exercises the target), what running one
produces, and what a run is asked to do and hands to the reporters."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callqos.conformance.connection import Connection
from callqos.conformance.harness import CheckContext
from callqos.conformance.params import Parameters
from callqos.v1 import provider_pb2

# In the order reports list failures: the most specific diagnosis first, the model-based
# histories (which catch what no targeted check names) last. A new profile is one more line.
PROFILES = (
    "core",
    "renegotiation",
    "events",
    "provider-change",
    "concurrency",
    "incoming",
    "restart",
    "host",
    "model",
)


class Level(str, enum.Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"  # the target broke the contract
    TIMEOUT = "timeout"  # the target did not answer in time: a failure of the target
    SKIPPED = "skipped"  # not applicable (capability not advertised, parameter missing)
    ERROR = "error"  # the harness could not run the check: not the target's fault
    XFAIL = "xfail"  # failed, and listed in --known-failing
    XPASS = "xpass"  # passed although listed in --known-failing: fails the run

    @property
    def is_failure(self) -> bool:
        return self in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XFAIL)


# ProviderCapabilities boolean fields a check needs; "!x" means x must be false (negative probes);
# "@owns_server" means the suite must own the target's server (--provider), to restart it, read its
# log or start a side server with other settings.
Needs = tuple[str, ...]
OWNS_SERVER = "@owns_server"


@dataclass(frozen=True)
class Check:
    id: str  # e.g. CORE-VAL-001; stable across releases
    title: str
    level: Level
    profile: str
    # The clause ids of conformance/SPEC.md this check verifies (e.g. "FLOW-5"), and the short
    # source those clauses rest on (TAPI function, FLOWSPEC remark, RFC, proto comment), for
    # reports read without the document at hand.
    clauses: tuple[str, ...]
    source: str
    run: Callable[[CheckContext], Awaitable[None]]
    # A check whose needs are not met is skipped with the reason.
    needs: Needs = ()
    timeout_seconds: float = 10.0
    # Preflight checks run first, in a fixed order; the rest are shuffled by --seed, except the
    # `last` ones (the model-based histories), which run after them.
    preflight: bool = False
    description: str = ""
    last: bool = False
    # Its deadline grows with the run's --budget (the model-based histories).
    budgeted: bool = False
    # Not run as such: the runner records its outcome from what it verifies between checks.
    sentinel: bool = False
    # A check whose rule others take for granted (what is reserved is what ListLinks reports, what fits
    # is admitted, the capabilities are coherent): its failure explains theirs, so it is listed first.
    foundation: bool = False

    @property
    def reference(self) -> str:
        """What reports print: `SPEC.md FLOW-5, FLOW-19 (Winsock2 FLOWSPEC TokenRate)`."""
        return f"SPEC.md {', '.join(self.clauses)} ({self.source})"


@dataclass
class CheckResult:
    check: Check
    outcome: Outcome
    reason: str = ""
    duration_seconds: float = 0.0
    cleanup_errors: list[str] = field(default_factory=list)
    # What the hosting server logged (error or above, tracebacks) while the check ran (--provider).
    findings: list[str] = field(default_factory=list)
    # A runnable reproduction of the failure, when the check produced one (the model-based checker).
    reproduction: str = ""
    # For a result the runner records between checks (CORE-IDLE-001): the check after which it was seen;
    # the failure is listed right after that check's.
    attached_to: Check | None = None
    # What the check did, when it says (the model-based checker: how many histories and steps).
    detail: str = ""


@dataclass
class RunOptions:
    target: str | None = None  # HOST:PORT of a running server
    provider: str | None = None  # entry-point name or module:Class to host in a spawned server
    target_provider: str | None = None  # providers/{id} to certify on --target (default: the server's default)
    provider_settings: dict[str, Any] = field(default_factory=dict)  # settings table for --provider
    # A provider in another process (callqos.provider.v1), hosted in a spawned server as a remote
    # provider: the command the server launches, or the endpoint it dials.
    provider_command: tuple[str, ...] = ()
    provider_endpoint: str = ""
    parameters_file: Path | None = None
    profiles: tuple[str, ...] = ()  # empty: all
    checks: tuple[str, ...] = ()  # check ids or prefixes; empty: all
    known_failing: tuple[str, ...] = ()
    seed: int | None = None
    timeout_scale: float = 1.0
    output_dir: Path | None = None
    # Server-side provider deadline for --provider: short, so a hung provider is answered quickly.
    provider_timeout: float = 2.0
    # How to reach --target: TLS files and bearer tokens (callqos.conformance.connection); None: plaintext.
    connection: Connection | None = None
    # The model-based checker: seconds of random histories (0: the default), or a number of them.
    budget_seconds: float = 0.0
    histories: int = 0


@dataclass
class Report:
    """One run, as the reporters print it."""

    options: RunOptions
    target: str
    provider: str
    provider_info: provider_pb2.Provider | None
    parameters: Parameters | None
    seed: int
    results: list[CheckResult]
    started: float
    duration_seconds: float
    verdicts: dict[str, dict[str, object]]
    verdict: str
    harness_error: str = ""
    # How many model-based histories ran (0: none): the time budget decides it unless --histories
    # does, so a seed alone does not say which histories a run saw; the seed and this count do.
    histories: int = 0

    @property
    def reproduce(self) -> str:
        """The flags that run the same checks in the same order on the same generated values and histories."""
        return f"--seed {self.seed}" + (f" --histories {self.histories}" if self.histories else "")

    @property
    def unexpected(self) -> list[CheckResult]:
        """Results that fail the run: failures not known, unexpected passes, harness errors."""
        return [r for r in self.results if r.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XPASS, Outcome.ERROR)]

    @property
    def failures(self) -> list[CheckResult]:
        """Failed and timed-out checks (known-failing ones included), the one that explains the fault
        first — never in the shuffled run order: MUST before SHOULD; the preflight, then the foundations
        (checks whose rule the others take for granted); then in the order of PROFILES and by id. A
        failure recorded between checks (a leak) is listed right after the check it followed."""

        def key(result: CheckResult) -> tuple[bool, bool, bool, int, str, int]:
            check = result.attached_to or result.check
            return (
                result.check.level is not Level.MUST,
                not check.preflight,
                not check.foundation,
                PROFILES.index(check.profile),
                check.id,
                result.attached_to is not None,
            )

        return sorted((r for r in self.results if r.outcome.is_failure), key=key)

    @property
    def exit_code(self) -> int:
        if self.harness_error:
            return 2
        return 1 if self.unexpected else 0
